"""A class-conditional WGAN-GP in PyTorch with a projection critic: the labels go in ``args=``.

    python examples/torch_conditional_wgan_gp.py --steps 300

The data are 8 Gaussians on a circle, the class of a point is its Gaussian. The generator
maps (noise, class) to a point; the critic is a projection discriminator (Miyato & Koyama
2018, arXiv:1802.05637): D(x, y) = w·h(x) + <embed(y), h(x)>. The penalty takes the critic
module itself and the labels in ``args=``: they are passed to ``critic(points, labels)``,
never interpolated nor differentiated, and the real sample, its fake partner (generated with
the same label) and their interpolate share a label. No closure is needed, so gpreg sees the
module (DDP, BatchNorm, ``torch.compile``), and ``check_critic`` checks a copy of it.
Hyperparameters as in Gulrajani et al. 2017 (arXiv:1704.00028): 5 critic steps per generator
step, λ = 10, Adam with β = (0.5, 0.9). After 200 of the 300 default generator steps (a few
minutes on a CPU) every generated point lands nearest the centre of its own class
(``on_class`` 1.0).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _toy import labelled_ring, log, mode_accuracy
from torch import nn

import gpreg_torch as gp

CLASSES = 8


class ProjectionCritic(nn.Module):
    """D(x, y) = w·h(x) + b + <embed(y), h(x)>, h an MLP with LayerNorm (the WGAN-GP paper's
    choice: no BatchNorm, which would couple the samples of a batch)."""

    def __init__(self, dim: int = 2, classes: int = CLASSES, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width), nn.LeakyReLU(0.2),
                                  nn.Linear(width, width), nn.LayerNorm(width),
                                  nn.LeakyReLU(0.2))
        self.head = nn.Linear(width, 1)
        self.embed = nn.Embedding(classes, width)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


class Generator(nn.Module):
    """G(z, y): an MLP on the noise and a learned class embedding."""

    def __init__(self, latent: int = 2, classes: int = CLASSES, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(classes, 8)
        self.net = nn.Sequential(nn.Linear(latent + 8, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, 2))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(labels)], dim=1))


def train(steps: int, batch: int = 128, n_critic: int = 5, latent: int = 2, seed: int = 0,
          log_every: int = 100) -> dict[str, float]:
    """Train for ``steps`` generator steps; returns the last losses and the fraction of
    generated points that land nearest the centre of their own class."""
    torch.manual_seed(seed)  # initial weights
    rng = np.random.default_rng(seed)  # the data
    draws = torch.Generator().manual_seed(seed)  # noise, labels and the penalty's alpha
    generator, critic = Generator(latent), ProjectionCritic()
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))

    # once, before training: the penalties differentiate correctly through this critic (on a
    # float64 copy; the critic itself is not run nor changed)
    points, modes = labelled_ring(8, rng)
    real, labels = torch.from_numpy(points), torch.from_numpy(modes)
    with torch.no_grad():
        fake = generator(torch.randn(8, latent, generator=draws), labels)
    report = gp.check_critic(critic, real, fake, args=(labels,), penalties="wgan_gp")
    print(f"check_critic: {'OK' if report.ok else 'FAILED'}")
    assert report.ok, report.summary()

    losses: dict[str, float] = {}
    for step in range(steps):
        for _ in range(n_critic):
            points, modes = labelled_ring(batch, rng)
            real, labels = torch.from_numpy(points), torch.from_numpy(modes)
            with torch.no_grad():  # fakes of the same classes as the real batch
                fake = generator(torch.randn(batch, latent, generator=draws), labels)
            wasserstein = critic(fake, labels).mean() - critic(real, labels).mean()
            penalty = gp.wgan_gp(critic, real, fake, args=(labels,), generator=draws)
            loss_d = wasserstein + penalty
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        labels = torch.randint(0, CLASSES, (batch,), generator=draws)
        fake = generator(torch.randn(batch, latent, generator=draws), labels)
        loss_g = -critic(fake, labels).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses = {"wasserstein": -wasserstein.item(), "penalty": penalty.item(),
                  "loss_g": loss_g.item(),
                  "on_class": mode_accuracy(fake.detach().numpy(), labels.numpy())}
        log(step + 1, losses, log_every)
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="generator steps")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    final = train(args.steps, batch=args.batch, seed=args.seed, log_every=50)
    print("final: " + ", ".join(f"{name} {value:.4f}" for name, value in final.items()))


if __name__ == "__main__":
    main()
