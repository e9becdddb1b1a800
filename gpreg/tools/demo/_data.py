"""Toy 2-D data sets and the sample-quality metrics of ``gpreg demo`` (NumPy only).

Definitions (the usual protocol for 2-D Gaussian mixtures, with PacGAN's mode rule):

- a generated sample is **high quality** when it lies within 3 σ (Euclidean distance) of the
  centre of its nearest mode, σ being the standard deviation of each mode;
- a mode is **covered** when at least one fifth of the samples that a perfect generator would
  put in it (``n / modes / 5``) are high-quality samples whose nearest mode it is (PacGAN,
  Lin et al. 2018, arXiv:1712.04086, counts a mode of its 5×5 grid as lost below 20 of 2,500
  samples: the same rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DATASETS = ("ring", "grid")


@dataclass(frozen=True)
class Dataset:
    """A mixture of equally weighted isotropic Gaussians in the plane."""

    name: str
    centres: np.ndarray  # (modes, 2)
    std: float
    extent: float  # the plots show [-extent, extent]²

    @property
    def modes(self) -> int:
        return int(self.centres.shape[0])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` points, float32, drawn with ``rng``."""
        k = rng.integers(0, self.modes, size=n)
        return (self.centres[k] + self.std * rng.normal(size=(n, 2))).astype(np.float32)


def dataset(name: str) -> Dataset:
    """``"ring"``: 8 Gaussians on a circle of radius 2, σ = 0.05; ``"grid"``: 5 × 5 Gaussians
    at {-4, -2, 0, 2, 4}², σ = 0.05."""
    if name == "ring":
        angles = 2 * math.pi * np.arange(8) / 8
        centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return Dataset("ring", centres, 0.05, 3.0)
    if name == "grid":
        ticks = np.arange(-4.0, 5.0, 2.0)
        centres = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 2)
        return Dataset("grid", centres, 0.05, 5.5)
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


@dataclass(frozen=True)
class Quality:
    modes_covered: int
    modes: int
    high_quality: float  # share of samples within 3 σ of their nearest mode centre
    per_mode: tuple[int, ...]  # high-quality samples per mode


def quality(samples: np.ndarray, data: Dataset) -> Quality:
    """Modes covered and the share of high-quality samples (see the module docstring).
    Non-finite samples count as low quality."""
    x = np.asarray(samples, dtype=np.float64)
    finite = np.all(np.isfinite(x), axis=1)
    x = np.where(finite[:, None], x, 1e30)
    dist = np.linalg.norm(x[:, None, :] - data.centres[None, :, :], axis=-1)
    nearest = dist.argmin(axis=1)
    good = (dist.min(axis=1) <= 3 * data.std) & finite
    per_mode = np.bincount(nearest[good], minlength=data.modes)
    needed = len(x) / data.modes / 5
    return Quality(int((per_mode >= needed).sum()), data.modes, float(good.mean()),
                   tuple(int(c) for c in per_mode))
