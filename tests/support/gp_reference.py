"""A hand-written float64 gradient penalty in plain PyTorch autograd, independent of gpreg.

Tests of every framework path use it as the reference for critics that the shared fixtures do
not cover (conditional critics, structured outputs): the critic is rebuilt as a float64 torch
function (or is one), the points are formed by hand from explicit ``alpha``/``noise``, the
input gradient comes from ``torch.autograd.grad(create_graph=True)`` and the parameter
gradients from a second ``torch.autograd.grad``. Nothing here imports gpreg.

Import it with ``sys.path.insert(0, <tests>/support)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

SHAPES = {
    "wgan_gp": ("interpolates", "two_sided", 1.0),
    "wgan_lp": ("interpolates", "one_sided", 1.0),
    "zero_gp": ("interpolates", "squared", 1.0),
    "max_gp": ("interpolates", "squared", 1.0),
    "r1": ("real", "squared", 0.5),
    "r2": ("fake", "squared", 0.5),
    "dragan": ("dragan", "two_sided", 1.0),
    "wgan_div": ("interpolates", "power", 1.0),  # k n**p, here with p = 6
}
P = 6.0


def points(name: str, real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor] | None,
           alpha: torch.Tensor | None, noise: Sequence[torch.Tensor] | None,
           c: float = 0.5, ddof: int = 0) -> list[torch.Tensor]:
    """The evaluation points of penalty ``name``, part by part, as leaves."""
    where = SHAPES[name][0]
    out = []
    for i, r in enumerate(real):
        if where == "real":
            p = r
        elif where == "fake":
            p = fake[i]
        else:
            a = alpha.reshape((-1,) + (1,) * (r.dim() - 1))
            if where == "interpolates":
                p = a * r + (1 - a) * fake[i]
            else:
                # population std (ddof 0), or unbiased (ddof 1)
                sigma = torch.sqrt(((r - r.mean()) ** 2).sum() / (r.numel() - ddof))
                p = r + a * c * sigma * noise[i]
        out.append(p.detach().clone().requires_grad_(True))
    return out


def penalty(name: str, scores: Callable[..., torch.Tensor], params: Sequence[torch.Tensor],
            real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor] | None = None, *,
            alpha: torch.Tensor | None = None, noise: Sequence[torch.Tensor] | None = None,
            weight: float = 10.0, target: float = 1.0, reduction: str | None = None,
            ddof: int = 0) -> tuple[float, list[np.ndarray], np.ndarray]:
    """``(value, [d value / d param], per-sample norms)`` of penalty ``name`` on the critic
    ``scores(*points) -> (B, ...)`` with parameters ``params`` (float64 leaves)."""
    _, shape, factor = SHAPES[name]
    pts = points(name, real, fake, alpha, noise, ddof=ddof)
    out = scores(*pts)
    grads = torch.autograd.grad(out.sum(), pts, create_graph=True)
    sq = sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads)
    n = torch.sqrt(sq)
    if shape == "two_sided":
        per = (n - target) ** 2
    elif shape == "one_sided":
        per = torch.clamp(n - target, min=0) ** 2
    elif shape == "power":
        per = sq ** (P / 2)
    else:
        per = sq
    per = factor * weight * per
    reduction = reduction or ("max" if name == "max_gp" else "mean")
    value = {"mean": per.mean, "sum": per.sum, "max": per.max}[reduction]()
    dparams = torch.autograd.grad(value, list(params), allow_unused=True)
    return (float(value.detach()), [np.zeros(tuple(p.shape)) if d is None else d.detach().numpy()
                           for d, p in zip(dparams, params)], n.detach().numpy())


def shape_of_norms(shape: str, norms: np.ndarray, target: float = 1.0) -> np.ndarray:
    """The per-sample penalty shapes in closed form (NumPy): two-sided, one-sided, squared."""
    d = np.asarray(norms, dtype=np.float64) - target
    return {"two_sided": d**2, "one_sided": np.maximum(d, 0) ** 2,
            "squared": np.asarray(norms, dtype=np.float64) ** 2}[shape]


def as64(x: Any) -> torch.Tensor:
    """A float64 torch tensor (from NumPy, torch, or any array with ``__array__``)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))
