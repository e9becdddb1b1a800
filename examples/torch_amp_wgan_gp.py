"""WGAN-GP under mixed precision in PyTorch: ``torch.autocast``, with a ``GradScaler`` for
float16.

    python examples/torch_amp_wgan_gp.py --steps 2000                    # bfloat16
    python examples/torch_amp_wgan_gp.py --steps 2000 --dtype float16    # float16 + scaler

The critic's forward passes — the one inside the penalty and the penalty's inner input
gradient included — run in the low precision where autocast picks it (matrix products); the
parameters, their gradients and the optimizer stay float32. It runs on CUDA when there is a
GPU, otherwise on the CPU (whose autocast supports both dtypes).

bfloat16 has float32's exponent range: gradients do not underflow, no scaler is needed.
float16 needs one, and the penalty needs it too: its inner gradient ∇ₓD is a float16 backward
pass of its own, which ``scaler.scale(loss)`` never sees. ``scaler=scaler`` makes gpreg take
that gradient of the scaled scores, unscale it out of place and compute the norm in float32.
The first steps usually overflow at the default scale (2**16); the scaler skips them and
backs off, as for any scaled loss — the script prints how many it skipped.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from _toy import log, ring_of_gaussians, torch_mlp

import gpreg_torch as gp


def train(steps: int, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
          batch: int = 128, n_critic: int = 5, latent: int = 2, seed: int = 0,
          log_every: int = 100) -> dict[str, float]:
    """``steps`` generator steps with the forward passes under ``torch.autocast``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    draws = torch.Generator(device).manual_seed(seed)
    generator, critic = torch_mlp(latent, 2).to(device), torch_mlp(2, 1).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    # float16 only; a disabled scaler passes losses and steps through unchanged
    enabled = dtype == torch.float16
    scaler_d = torch.amp.GradScaler(device, enabled=enabled)
    scaler_g = torch.amp.GradScaler(device, enabled=enabled)
    skipped = 0
    losses: dict[str, float] = {}
    for step in range(steps):
        for _ in range(n_critic):
            real = torch.from_numpy(ring_of_gaussians(batch, rng)).to(device)
            z = torch.randn(batch, latent, generator=draws, device=device)
            with torch.autocast(device, dtype=dtype):
                with torch.no_grad():
                    fake = generator(z).float()
                wasserstein = critic(fake).float().mean() - critic(real).float().mean()
                # built under autocast like the rest of the loss; the scaler for float16
                penalty = gp.wgan_gp(critic, real, fake, generator=draws,
                                     scaler=scaler_d if enabled else None)
                loss_d = wasserstein + penalty
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(loss_d).backward()  # backward outside autocast, as recommended
            before = scaler_d.get_scale() if enabled else 1.0
            scaler_d.step(opt_d)  # skipped when a gradient overflowed
            scaler_d.update()
            skipped += int(enabled and scaler_d.get_scale() < before)
        z = torch.randn(batch, latent, generator=draws, device=device)
        with torch.autocast(device, dtype=dtype):
            loss_g = -critic(generator(z)).float().mean()
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(loss_g).backward()
        scaler_g.step(opt_g)
        scaler_g.update()
        losses = {"wasserstein": -wasserstein.item(), "penalty": penalty.item(),
                  "loss_g": loss_g.item(), "skipped": float(skipped)}
        log(step + 1, losses, log_every)
    if not all(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"non-finite loss after the last step: {losses}")
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    losses = train(args.steps, dtype, device, seed=args.seed)
    skipped = int(losses.pop("skipped"))
    scaled = (f", GradScaler skipped {skipped} critic steps (overflow)"
              if dtype == torch.float16 else "")
    print(f"autocast {dtype} on {device}{scaled}")
    print("final: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
