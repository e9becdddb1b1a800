"""A plain PyTorch WGAN-GP training loop with gpreg: one line in the critic's loss.

    python examples/torch_wgan_gp.py --steps 2000

The data are 8 Gaussians on a circle; the networks are small MLPs. Hyperparameters follow
Gulrajani et al. 2017 (arXiv:1704.00028): 5 critic steps per generator step, λ = 10, Adam with
β = (0.5, 0.9) (the paper's toy experiments), no batch normalization in the critic.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _toy import log, ring_of_gaussians, torch_mlp

import gpreg_torch as gp


def train(steps: int, batch: int = 128, n_critic: int = 5, latent: int = 2, seed: int = 0,
          log_every: int = 100) -> dict[str, float]:
    """Train for ``steps`` generator steps; returns the last losses."""
    torch.manual_seed(seed)  # initial weights
    rng = np.random.default_rng(seed)  # the data
    draws = torch.Generator().manual_seed(seed)  # latent codes and the penalty's alpha
    generator, critic = torch_mlp(latent, 2), torch_mlp(2, 1)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    losses: dict[str, float] = {}
    for step in range(steps):
        for _ in range(n_critic):
            real = torch.from_numpy(ring_of_gaussians(batch, rng))
            with torch.no_grad():  # the critic step does not train the generator
                fake = generator(torch.randn(batch, latent, generator=draws))
            wasserstein = critic(fake).mean() - critic(real).mean()
            penalty = gp.wgan_gp(critic, real, fake, weight=10.0, generator=draws)  # the line
            loss_d = wasserstein + penalty
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()  # double backprop: the penalty's gradient reaches the weights
            opt_d.step()
        loss_g = -critic(generator(torch.randn(batch, latent, generator=draws))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses = {"wasserstein": -wasserstein.item(), "penalty": penalty.item(),
                  "loss_g": loss_g.item()}
        log(step + 1, losses, log_every)
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    losses = train(args.steps, seed=args.seed)
    print("final: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
