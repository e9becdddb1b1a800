"""Helper process for tests/torch/test_ddp.py: one rank of a 2-process gloo group."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gpreg_torch as gp


def critic_and_data():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    g = torch.Generator().manual_seed(1)
    real = torch.randn(8, 6, generator=g, dtype=torch.float64)
    fake = torch.randn(8, 6, generator=g, dtype=torch.float64)
    alpha = torch.rand(8, generator=g, dtype=torch.float64)
    return critic, real, fake, alpha


def steps(critic, params, real, fake, alpha):
    """A full WGAN-GP critic step, then a penalty-only (lazy R1) step: the gradients of each."""
    out = []
    loss = critic(fake).mean() - critic(real).mean() + gp.wgan_gp(critic, real, fake, alpha=alpha)
    loss.backward()
    out.append([p.grad.clone() for p in params])
    for p in params:
        p.grad = None
    (16 * gp.r1(critic, real)).backward()
    out.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
    return out


def main(rank: int, world: int, port: str, path: str, wrap: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    critic, real, fake, alpha = critic_and_data()
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    model = DDP(critic)
    if wrap == "closure":  # gpreg cannot see the DDP module: no unused-parameter handling
        def call(x):
            return model(x)
    else:
        call = model
    grads = steps(call, list(critic.parameters()), real[part], fake[part], alpha[part])
    error = ""
    try:  # one more iteration: DDP notices a reduction left unfinished by the previous one
        call(real[part]).mean().backward()
    except RuntimeError as exc:
        error = str(exc)
    if rank == 0:
        torch.save({"grads": grads, "error": error}, path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
