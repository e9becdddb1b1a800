"""WGAN-GP as a PyTorch Lightning module: manual optimization, ``self.manual_backward`` and
Lightning's precision plugins.

    python examples/lightning_wgan_gp.py --steps 2000                          # 32-true
    python examples/lightning_wgan_gp.py --steps 2000 --precision bf16-mixed
    python examples/lightning_wgan_gp.py --steps 2000 --precision 16-mixed     # + GradScaler

A GAN alternates two optimizers, so the module turns Lightning's automatic optimization off
and steps them itself: 5 critic steps, then one generator step, per training step. The
penalty is one line in the critic loss; ``scaler=self.trainer.precision_plugin`` hands gpreg
Lightning's GradScaler under ``16-mixed`` (and nothing under the other precisions), so the
penalty's inner backward is scaled like the loss that ``manual_backward`` scales. Lightning
runs ``training_step`` under its autocast, the penalty included.

``Trainer(precision="16-mixed")`` on a CPU falls back to ``bf16-mixed``; without a GPU this
script passes Lightning's ``MixedPrecision("16-mixed", "cpu")`` plugin instead, which does run
float16 with a CPU GradScaler. Its default scale (2**16) overflows the first critic steps;
the scaler skips them and backs off, as for any scaled loss (the script prints how many).
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning as L
import numpy as np
import torch
from _toy import log, ring_of_gaussians, torch_mlp

import gpreg_torch as gp


class WGANGP(L.LightningModule):
    def __init__(self, latent: int = 2, n_critic: int = 5, seed: int = 0,
                 log_every: int = 100) -> None:
        super().__init__()
        self.automatic_optimization = False  # two optimizers, stepped by hand
        self.latent, self.n_critic, self.seed, self.log_every = latent, n_critic, seed, log_every
        self.generator, self.critic = torch_mlp(latent, 2), torch_mlp(2, 1)
        self.losses: dict[str, float] = {}
        self.skipped = 0

    def configure_optimizers(self):
        betas = (0.5, 0.9)  # the WGAN-GP paper's toy experiments
        return (torch.optim.Adam(self.generator.parameters(), lr=1e-3, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=1e-3, betas=betas))

    def on_fit_start(self) -> None:
        self.draws = torch.Generator(self.device).manual_seed(self.seed)  # z and alpha

    def sample(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.latent, generator=self.draws, device=self.device)
        return self.generator(z).float()  # float32 whatever autocast computed it in

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        precision = self.trainer.precision_plugin
        for real in batch:  # n_critic batches of real data
            with torch.no_grad():
                fake = self.sample(real.shape[0])
            wasserstein = self.critic(fake).float().mean() - self.critic(real).float().mean()
            penalty = gp.wgan_gp(self.critic, real, fake, generator=self.draws,
                                 scaler=precision)  # the line
            opt_d.zero_grad()
            self.manual_backward(wasserstein + penalty)  # scaled under 16-mixed
            scale = precision.scaler.get_scale() if getattr(precision, "scaler", None) else 0
            opt_d.step()  # unscales, and skips the step if a gradient overflowed
            if scale and precision.scaler.get_scale() < scale:
                self.skipped += 1
        loss_g = -self.critic(self.sample(real.shape[0])).float().mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.losses = {"wasserstein": -wasserstein.item(), "penalty": penalty.item(),
                       "loss_g": loss_g.item()}
        log(batch_idx + 1, self.losses, self.log_every)


def real_batches(steps: int, n_critic: int, batch: int, seed: int) -> torch.Tensor:
    """One item per training step: ``n_critic`` batches of real points."""
    rng = np.random.default_rng(seed)
    data = np.stack([ring_of_gaussians(n_critic * batch, rng).reshape(n_critic, batch, 2)
                     for _ in range(steps)])
    return torch.from_numpy(data)


def trainer_options(precision: str) -> dict:
    if precision == "16-mixed" and not torch.cuda.is_available():
        from lightning.pytorch.plugins.precision import MixedPrecision

        return {"accelerator": "cpu", "plugins": [MixedPrecision("16-mixed", "cpu")]}
    return {"accelerator": "auto", "precision": precision}


def train(steps: int, precision: str = "32-true", batch: int = 128, n_critic: int = 5,
          seed: int = 0, log_every: int = 100) -> WGANGP:
    L.seed_everything(seed, verbose=False)  # initial weights
    module = WGANGP(n_critic=n_critic, seed=seed, log_every=log_every)
    data = torch.utils.data.DataLoader(real_batches(steps, n_critic, batch, seed),
                                       batch_size=None)
    trainer = L.Trainer(devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        **trainer_options(precision))
    trainer.fit(module, data)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps")
    parser.add_argument("--precision", default="32-true",
                        choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the start-up banner
    # Lightning's own use of torch's pytree API (not this script's) warns under torch 2.13
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    module = train(args.steps, args.precision, seed=args.seed)
    precision = module.trainer.precision_plugin
    scaler = getattr(precision, "scaler", None)
    print(f"lightning {L.__version__}, {type(precision).__name__} {args.precision}, "
          + (f"GradScaler skipped {module.skipped} critic steps" if scaler else "no scaler"))
    print("final: " + ", ".join(f"{k} {v:.4f}" for k, v in module.losses.items()))


if __name__ == "__main__":
    main()
