"""The ``gpreg demo`` training loop in PyTorch, through ``gpreg_torch``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gpreg_torch as gp
from gpreg.tools.demo._common import (
    Batches,
    Config,
    ProgressFn,
    Run,
    evaluate,
    loss_kind,
    penalty_term,
)


def versions() -> str:
    return f"torch {torch.__version__}"


@contextmanager
def deterministic() -> Iterator[None]:
    """One thread and deterministic algorithms while the demo trains, restored afterwards.

    One thread: the networks are tiny, so intra-op threads only add synchronisation (and on a
    busy machine their spin-waiting makes a run many times slower); it also makes the float
    reductions independent of the machine's core count."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def mlp(inputs: int, outputs: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, outputs))


def critic_loss(penalty: str, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's adversarial loss and its penalty (0 for "none")."""
    d_real, d_fake = critic(real).squeeze(1), critic(fake).squeeze(1)
    if loss_kind(penalty) == "ns":
        loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
    else:
        loss = d_fake.mean() - d_real.mean()
    reg = penalty_term(gp, penalty, critic, real, fake, {"generator": generator})
    return loss, torch.zeros(()) if reg is None else reg


def generator_loss(penalty: str, scores: torch.Tensor) -> torch.Tensor:
    return F.softplus(-scores).mean() if loss_kind(penalty) == "ns" else -scores.mean()


def train(penalty: str, cfg: Config, data: Any, progress: ProgressFn) -> Run:
    """Train one GAN with ``penalty`` and evaluate it."""
    with deterministic():
        torch.manual_seed(cfg.seed)  # the same initial networks for every penalty
        gen_net, critic = mlp(cfg.latent, 2, cfg.width), mlp(2, 1, cfg.width)
        opt_g = torch.optim.Adam(gen_net.parameters(), cfg.lr, betas=cfg.betas)
        opt_d = torch.optim.Adam(critic.parameters(), cfg.lr, betas=cfg.betas)
        draws = torch.Generator().manual_seed(cfg.seed)  # the penalties' alpha and noise
        batches = Batches(cfg, data)
        d_loss = torch.zeros(())
        t0 = time.perf_counter()
        for step in range(cfg.steps):
            for _ in range(cfg.n_critic):
                real = torch.from_numpy(batches.real())
                with torch.no_grad():
                    fake = gen_net(torch.from_numpy(batches.z()))
                d_loss, reg = critic_loss(penalty, critic, real, fake, draws)
                opt_d.zero_grad(set_to_none=True)
                (d_loss + reg).backward()
                opt_d.step()
            scores = critic(gen_net(torch.from_numpy(batches.z()))).squeeze(1)
            g_loss = generator_loss(penalty, scores)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            progress(step + 1, time.perf_counter() - t0)
        wall = time.perf_counter() - t0
        with torch.no_grad():
            return evaluate(
                penalty, cfg, data,
                generate=lambda z: gen_net(torch.from_numpy(z)).numpy(),
                score=lambda x: critic(torch.from_numpy(x)).squeeze(1).numpy(),
                grad_norms=lambda x: gp.grad_norm(critic, torch.from_numpy(x)).numpy(),
                wall_s=wall, d_loss=float(d_loss.detach()))
