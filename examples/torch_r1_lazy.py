"""R1 with lazy regularization (StyleGAN2) in PyTorch: the penalty every N-th critic step.

    python examples/torch_r1_lazy.py --steps 2000

Karras et al. 2020 (StyleGAN2, arXiv:1912.04958, section 3.1) evaluate R1 only on every
N-th critic step (N = 16) and multiply it by N, so its average strength is unchanged while
its double-backprop cost is paid 1/N as often. The regularization step is a separate Adam
step, so the critic's optimizer takes N + 1 steps where an eager schedule takes N; StyleGAN2
compensates with lr·N/(N+1) and β^(N/(N+1)). ``gpreg.LazyRegularization`` holds that
arithmetic: ``.active(step)``, ``.gain`` and ``.adam(lr, betas)``.

The loss is the non-saturating GAN loss with which Mescheder et al. 2018 (arXiv:1801.04406)
analyse R1; γ = 10 here (R1 is (γ/2)·E‖∇D(x_real)‖²).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from _toy import log, ring_of_gaussians, torch_mlp

import gpreg
import gpreg_torch as gp


def train(steps: int, batch: int = 128, gamma: float = 10.0, interval: int = 16,
          latent: int = 2, seed: int = 0, log_every: int = 200) -> dict[str, float]:
    """``steps`` generator steps, each after one critic step; R1 on every ``interval``-th
    critic step. Returns the last losses and how many R1 steps ran."""
    lazy = gpreg.LazyRegularization(interval)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    draws = torch.Generator().manual_seed(seed)
    generator, critic = torch_mlp(latent, 2), torch_mlp(2, 1)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.0, 0.99))
    lr_d, betas_d = lazy.adam(1e-3, (0.0, 0.99))  # the compensation for the extra steps
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr_d, betas=betas_d)
    r1_steps, last_r1 = 0, float("nan")
    losses: dict[str, float] = {}
    for step in range(steps):
        real = torch.from_numpy(ring_of_gaussians(batch, rng))
        with torch.no_grad():
            fake = generator(torch.randn(batch, latent, generator=draws))
        # the main critic step: the adversarial loss only
        loss_d = F.softplus(critic(fake)).mean() + F.softplus(-critic(real)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if lazy.active(step):
            # the lazy step: R1 alone, times the gain N. The critic's last bias gets no
            # gradient from a penalty-only loss (gpreg gives it an exact zero).
            r1 = gp.r1(critic, real, gamma=gamma)
            opt_d.zero_grad(set_to_none=True)
            (lazy.gain * r1).backward()
            opt_d.step()
            r1_steps, last_r1 = r1_steps + 1, r1.item()
        scores = critic(generator(torch.randn(batch, latent, generator=draws)))
        loss_g = F.softplus(-scores).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses = {"loss_d": loss_d.item(), "r1": last_r1, "loss_g": loss_g.item(),
                  "r1_steps": float(r1_steps)}
        log(step + 1, losses, log_every)
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps")
    parser.add_argument("--interval", type=int, default=16, help="N (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    losses = train(args.steps, interval=args.interval, seed=args.seed)
    print(f"final: loss_d {losses['loss_d']:.4f}, last r1 {losses['r1']:.4f}, "
          f"loss_g {losses['loss_g']:.4f}, R1 evaluated on {int(losses['r1_steps'])} of "
          f"{args.steps} critic steps")


if __name__ == "__main__":
    main()
