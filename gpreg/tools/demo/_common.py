"""What every backend of ``gpreg demo`` shares: the settings, the losses per penalty, the
result of one training run (NumPy only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpreg._specs import BUILTIN_NAMES

#: ``progress(steps_done, seconds)``, called by a backend after every generator step
ProgressFn = Callable[[int, float], None]

#: the runs ``gpreg demo`` can make: every built-in penalty and "none" (no penalty)
CHOICES: tuple[str, ...] = (*BUILTIN_NAMES, "none")

#: the critic/generator loss used with each penalty (see :func:`loss_kind`)
NS_PENALTIES = ("r1", "r2")


def loss_kind(penalty: str) -> str:
    """``"wgan"`` (critic: E D(fake) − E D(real); generator: −E D(fake)) for the
    interpolate and DRAGAN penalties and for "none"; ``"ns"`` (the non-saturating GAN loss:
    critic softplus(D(fake)) + softplus(−D(real)), generator softplus(−D(fake))) for R1 and R2,
    the loss Mescheder et al. 2018 (arXiv:1801.04406) analyse them with."""
    return "ns" if penalty in NS_PENALTIES else "wgan"


def penalty_term(gp: Any, penalty: str, critic: Any, real: Any, fake: Any,
                 random: dict[str, Any]) -> Any | None:
    """``penalty`` from the adapter module ``gp`` (gpreg_torch or gpreg_keras) at the points it
    is defined on, at its default weight; ``random`` names its random draws (``generator=`` or
    ``seed=``); None for "none"."""
    if penalty == "none":
        return None
    if penalty == "r1":
        return gp.r1(critic, real)
    if penalty == "r2":
        return gp.r2(critic, fake)
    if penalty == "dragan":
        return gp.dragan(critic, real, **random)
    return gp.get_penalty(penalty)(critic, real, fake, **random)


@dataclass(frozen=True)
class Config:
    """Settings of one demo run; the same for every penalty so they compare on equal terms."""

    data: str = "ring"
    steps: int = 800  # generator updates
    n_critic: int = 5  # critic updates per generator update
    batch: int = 128
    latent: int = 2
    width: int = 64  # hidden units of both MLPs (3 hidden layers, ReLU)
    lr: float = 1e-3  # Adam, both networks
    betas: tuple[float, float] = (0.5, 0.9)
    seed: int = 0
    eval_samples: int = 2500  # generated samples for the metrics and the scatter plot
    grid: int = 120  # the critic landscape is drawn on grid × grid points


@dataclass
class Run:
    """What one training run leaves for the table and the gallery."""

    penalty: str
    loss: str
    samples: np.ndarray  # (eval_samples, 2) generated points
    real: np.ndarray  # (eval_samples, 2) data points
    landscape: np.ndarray  # (grid, grid) critic values, rows along y
    interp_norms: np.ndarray  # ‖∇ₓD(x̂)‖ at eval_samples interpolates of real and generated
    wall_s: float
    d_loss: float  # critic loss at the last step (without the penalty)
    extra: dict[str, Any] = field(default_factory=dict)


def eval_arrays(cfg: Config, data: Any) -> dict[str, np.ndarray]:
    """The fixed evaluation inputs (the same for every penalty and backend): latent codes,
    data points, interpolation weights and the landscape grid."""
    rng = np.random.default_rng([cfg.seed, 1])
    z = rng.normal(size=(cfg.eval_samples, cfg.latent)).astype(np.float32)
    real = data.sample(rng, cfg.eval_samples)
    alpha = rng.uniform(size=(cfg.eval_samples, 1)).astype(np.float32)
    ticks = np.linspace(-data.extent, data.extent, cfg.grid, dtype=np.float32)
    gx, gy = np.meshgrid(ticks, ticks, indexing="xy")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return {"z": z, "real": real, "alpha": alpha, "grid": grid}


class Batches:
    """The training stream: real batches and latent codes from one seeded NumPy generator, so
    every penalty and every backend sees the same data in the same order."""

    def __init__(self, cfg: Config, data: Any) -> None:
        self.cfg, self.data = cfg, data
        self.rng = np.random.default_rng([cfg.seed, 0])

    def real(self) -> np.ndarray:
        return self.data.sample(self.rng, self.cfg.batch)

    def z(self) -> np.ndarray:
        return self.rng.normal(size=(self.cfg.batch, self.cfg.latent)).astype(np.float32)


def interpolates(real: np.ndarray, fake: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """x̂ = α·real + (1 − α)·fake, as the interpolate penalties draw them."""
    return (alpha * real + (1 - alpha) * fake).astype(np.float32)


def evaluate(penalty: str, cfg: Config, data: Any, generate: Callable[[np.ndarray], Any],
             score: Callable[[np.ndarray], Any], grad_norms: Callable[[np.ndarray], Any],
             wall_s: float, d_loss: float) -> Run:
    """The evaluation every backend runs after training, on :func:`eval_arrays`:
    ``generate(z)``, ``score(x)`` (the critic) and ``grad_norms(x)`` (‖∇ₓD‖ per sample) take
    float32 NumPy arrays and return arrays NumPy can read."""
    ev = eval_arrays(cfg, data)
    samples = np.asarray(generate(ev["z"]), dtype=np.float32)
    landscape = np.asarray(score(ev["grid"])).reshape(cfg.grid, cfg.grid)
    norms = np.asarray(grad_norms(interpolates(ev["real"], samples, ev["alpha"])))
    return Run(penalty=penalty, loss=loss_kind(penalty), samples=samples, real=ev["real"],
               landscape=landscape, interp_norms=norms, wall_s=wall_s, d_loss=d_loss)
