"""WGAN-GP with Hugging Face Accelerate: ``accelerator.prepare``, ``accelerator.backward`` and
its mixed precision.

    python examples/accelerate_wgan_gp.py --steps 2000                        # float32
    python examples/accelerate_wgan_gp.py --steps 2000 --mixed-precision bf16
    python examples/accelerate_wgan_gp.py --steps 2000 --mixed-precision fp16  # on a GPU
    accelerate launch examples/accelerate_wgan_gp.py ...                       # or so

The loop is the plain PyTorch one with Accelerate's three changes: the networks and
optimizers go through ``accelerator.prepare`` (device placement, the autocast of the prepared
models' forward, DistributedDataParallel when launched on several processes), the loss runs
backward through ``accelerator.backward`` (which scales it under fp16), and the loss is built
under ``accelerator.autocast()``. The penalty takes ``scaler=accelerator``: gpreg uses the
GradScaler that Accelerate holds (``accelerator.scaler``) for the penalty's inner backward,
and nothing when there is none (bf16, float32).

Accelerate runs fp16 only on an accelerator: on a CPU, ``mixed_precision="fp16"`` trains in
float32, with no autocast and no GradScaler (the script says so). For float16 on a CPU see
``torch_amp_wgan_gp.py`` or ``lightning_wgan_gp.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _toy import log, ring_of_gaussians, torch_mlp
from accelerate import Accelerator
from accelerate.utils import set_seed

import gpreg_torch as gp


def train(steps: int, mixed_precision: str = "no", batch: int = 128, n_critic: int = 5,
          latent: int = 2, seed: int = 0, log_every: int = 100) -> tuple[Accelerator, dict]:
    accelerator = Accelerator(mixed_precision=mixed_precision)
    set_seed(seed)  # initial weights
    rng = np.random.default_rng(seed + accelerator.process_index)  # each process's data
    device = accelerator.device
    draws = torch.Generator(device).manual_seed(seed + accelerator.process_index)
    generator, critic = torch_mlp(latent, 2), torch_mlp(2, 1)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    generator, critic, opt_g, opt_d = accelerator.prepare(generator, critic, opt_g, opt_d)
    skipped = 0
    losses: dict[str, float] = {}
    for step in range(steps):
        for _ in range(n_critic):
            real = torch.from_numpy(ring_of_gaussians(batch, rng)).to(device)
            z = torch.randn(batch, latent, generator=draws, device=device)
            with accelerator.autocast():
                with torch.no_grad():
                    fake = generator(z).float()
                wasserstein = critic(fake).mean() - critic(real).mean()
                penalty = gp.wgan_gp(critic, real, fake, generator=draws,
                                     scaler=accelerator)  # the line
            opt_d.zero_grad()
            accelerator.backward(wasserstein + penalty)
            opt_d.step()  # under fp16: unscales, or skips the step if a gradient overflowed
            skipped += int(opt_d.step_was_skipped)
        z = torch.randn(batch, latent, generator=draws, device=device)
        with accelerator.autocast():
            loss_g = -critic(generator(z)).mean()
        opt_g.zero_grad()
        accelerator.backward(loss_g)
        opt_g.step()
        losses = {"wasserstein": -wasserstein.item(), "penalty": penalty.item(),
                  "loss_g": loss_g.item(), "skipped": skipped}
        if accelerator.is_main_process:
            log(step + 1, {k: v for k, v in losses.items() if k != "skipped"}, log_every)
    return accelerator, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    accelerator, losses = train(args.steps, args.mixed_precision, seed=args.seed)
    if not accelerator.is_main_process:
        return
    import accelerate

    scaler = accelerator.scaler
    note = ("" if args.mixed_precision != "fp16" or accelerator.native_amp
            else " (fp16 is off on a CPU: float32, no autocast)")
    print(f"accelerate {accelerate.__version__}, {accelerator.device}, mixed_precision "
          f"{args.mixed_precision}{note}, "
          + (f"GradScaler skipped {losses['skipped']} critic steps" if scaler else "no scaler"))
    print("final: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "skipped"))


if __name__ == "__main__":
    main()
