"""Toy data and networks shared by the example scripts (not an example itself).

The scripts import it as ``_toy`` (Python puts a script's own folder first on ``sys.path``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def ring_of_gaussians(n: int, rng: np.random.Generator, radius: float = 2.0,
                      std: float = 0.05) -> np.ndarray:
    """``n`` float32 points from 8 equally weighted Gaussians on a circle of ``radius``."""
    mode = rng.integers(0, 8, size=n)
    angle = 2 * math.pi * mode / 8
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centres + std * rng.normal(size=(n, 2))).astype(np.float32)


def torch_mlp(inputs: int, outputs: int, width: int = 64) -> Any:
    """A PyTorch MLP with two hidden ReLU layers (no normalization: the penalties are per
    sample, so the critic must not mix the samples of a batch)."""
    from torch import nn

    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, outputs))


def log(step: int, losses: dict[str, float], every: int) -> None:
    """Print ``losses`` after every ``every``-th step (counted from 1; 0: never)."""
    if every and step % every == 0:
        print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))


def _centres(radius: float = 2.0) -> np.ndarray:
    angle = 2 * math.pi * np.arange(8) / 8
    return radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def labelled_ring(n: int, rng: np.random.Generator, radius: float = 2.0,
                  std: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 points of the ring of 8 Gaussians and their classes (which Gaussian,
    int64), for class-conditional examples."""
    mode = rng.integers(0, 8, size=n)
    points = _centres(radius)[mode] + std * rng.normal(size=(n, 2))
    return points.astype(np.float32), mode.astype(np.int64)


def mode_accuracy(points: np.ndarray, labels: np.ndarray, radius: float = 2.0) -> float:
    """The fraction of ``points`` nearest the centre of their own class's Gaussian."""
    dist = np.linalg.norm(np.asarray(points)[:, None, :] - _centres(radius)[None], axis=2)
    return float(np.mean(np.argmin(dist, axis=1) == np.asarray(labels)))
