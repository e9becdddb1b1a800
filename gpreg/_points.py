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


def dragan_points(
    real: Sequence[Array], alpha: Array, noise: Sequence[Array], c: float, xp: Namespace
) -> tuple[Array, ...]:
    r"""DRAGAN's perturbed reals, as in its reference code.

    :math:`\hat x_i = x_i + \alpha_i \, c \, \sigma \, u_i`, with :math:`\sigma` the population
    standard deviation of all elements of the real batch (per part) and :math:`u` the noise.
    ``real`` must already be detached: :math:`\sigma` is a constant.
    """
    out = []
    for r, u in zip(real, noise):
        sigma = xp.std(r)
        a = _per_sample(alpha, r, xp)
        out.append(r + a * (c * sigma) * u)
    return tuple(out)
