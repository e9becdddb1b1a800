"""Evaluation points, computed from explicit randomness (``alpha``, ``noise``).

Drawing the random numbers is the adapters' job (each framework has its own generator);
turning them into points is done here, once. ``parts`` are tuples of arrays, one per input
of a multi-input critic; every part of sample ``i`` uses the same ``alpha[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Array = Any
Namespace = Any


def _per_sample(alpha: Array, like: Array, xp: Namespace) -> Array:
    """Reshape ``alpha`` (B,) to (B, 1, ..., 1) so it broadcasts against ``like``."""
    return xp.reshape(alpha, (-1,) + (1,) * (len(like.shape) - 1))


def interpolates(
    real: Sequence[Array], fake: Sequence[Array], alpha: Array, xp: Namespace
) -> tuple[Array, ...]:
    r""":math:`\hat x_i = \alpha_i x_i + (1 - \alpha_i) \tilde x_i`, part by part."""
    out = []
    for r, f in zip(real, fake):
        a = _per_sample(alpha, r, xp)
        out.append(a * r + (1.0 - a) * f)
    return tuple(out)


PERTURBATIONS: tuple[str, ...] = ("uniform", "gaussian")


def batch_std(part: Array, ddof: int, xp: Namespace) -> Array:
    r""":math:`\sigma`, the standard deviation of all elements of ``part`` with ``ddof`` degrees of
    freedom removed: ``ddof=0`` is the population value (NumPy's ``x.std()``, the authors' DRAGAN
    code), ``ddof=1`` the unbiased one (``torch.std``'s default, public PyTorch DRAGAN code).
    ``xp.std`` takes ``ddof`` (NumPy's, the adapters' namespaces and their all-replica
    statistics under data parallelism, where the count is that of the global batch).
    """
    return xp.std(part) if ddof == 0 else xp.std(part, ddof=ddof)


def dragan_points(
    real: Sequence[Array],
    alpha: Array | None,
    noise: Sequence[Array],
    c: float,
    xp: Namespace,
    *,
    ddof: int = 0,
    perturbation: str = "uniform",
) -> tuple[Array, ...]:
    r"""DRAGAN's perturbed reals, part by part. ``real`` must already be detached.

    ``perturbation="uniform"`` (the authors' reference code): :math:`\hat x_i = x_i + \alpha_i
    \, c \, \sigma \, u_i`, with :math:`\sigma` the standard deviation of all elements of the
    real batch (per part, ``ddof`` as in :func:`batch_std`, a constant) and :math:`u` the noise
    (:math:`U[0, 1)` when drawn).

    ``perturbation="gaussian"`` (the paper): :math:`\hat x_i = x_i + \delta_i`,
    :math:`\delta \sim N(0, cI)`: ``c`` is the *variance* of each coordinate of the
    perturbation, so :math:`\delta = \sqrt{c}\, u` with :math:`u` standard normal noise;
    ``alpha`` and :math:`\sigma` play no part (pass ``alpha=None``).
    """
    out = []
    if perturbation == "gaussian":
        scale = c**0.5
        for r, u in zip(real, noise):
            out.append(r + scale * u)
        return tuple(out)
    if perturbation != "uniform":
        raise ValueError(f"unknown perturbation {perturbation!r}")
    for r, u in zip(real, noise):
        sigma = batch_std(r, ddof, xp)
        a = _per_sample(alpha, r, xp)
        out.append(r + a * (c * sigma) * u)
    return tuple(out)
