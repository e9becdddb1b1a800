"""Penalty-of-norm formulas, the exact NaN-safe norm and the reductions, written once.

Every function takes ``xp``, an array namespace: ``numpy`` itself, gpreg_torch's ``_ops``
(torch functions under array-API names) or gpreg_keras's ``_ops`` (``keras.ops``). Only
these members are used: ``where``, ``sqrt``, ``sum``, ``mean``, ``max``, ``abs``, ``reshape``,
``zeros_like``, ``ones_like`` (and ``std(x, ddof=...)`` in ``gpreg._points``), plus
``stop_gradient`` where the namespace has one (NumPy has no gradients to stop) and the ``**``
operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Array = Any
Namespace = Any


def safe_norm(sq_sum: Array, xp: Namespace) -> Array:
    r"""Exact Euclidean norm :math:`\sqrt{s}` from a sum of squares, with a finite gradient at 0.

    ``sqrt`` has an infinite derivative at 0, and ``0 * inf`` is NaN, so a plain
    ``sqrt(sum(g**2))`` turns an exactly-zero input gradient into NaN parameter gradients.
    Adding an epsilon (TF-GAN uses 1e-10, compare_gan 1e-4) biases the value instead.
    Here both branches of the outer ``where`` are finite everywhere: the value is exact and
    the derivative is 0 where ``s == 0``. A NaN or Inf sum stays NaN or Inf.
    """
    zero = sq_sum == 0  # NaN and Inf are not zero: they propagate, never silently vanish
    safe = xp.where(zero, xp.ones_like(sq_sum), sq_sum)
    return xp.where(zero, xp.zeros_like(sq_sum), xp.sqrt(safe))


def per_sample_sq_sum(grads: Sequence[Array], xp: Namespace) -> Array:
    """Sum of squares of every non-batch element of every part, per sample: shape (B,)."""
    total = None
    for g in grads:
        ndim = len(g.shape)
        # sum over the non-batch axes (the batch size may be unknown while tracing)
        sq = _square(g, xp)
        # one axis as an int: TensorFlow's eager fast path takes it, a tuple goes the slow way
        s = sq if ndim == 1 else xp.sum(sq, axis=1 if ndim == 2 else tuple(range(1, ndim)))
        total = s if total is None else total + s
    return total


def per_sample_norm(grads: Sequence[Array], xp: Namespace) -> Array:
    r"""Exact per-sample Euclidean norm over every non-batch element of every part: shape (B,).

    A plain sum of squares leaves the float range long before the norm does: in float32,
    entries of 1e-25 square to 0 (norm 0 instead of the exact value) and entries of 1e19
    square to Inf. Here each sample's gradient is first divided by its largest magnitude
    :math:`m_i` (taken as a constant: :math:`n_i = m_i \lVert g_i / m_i \rVert` is the norm
    for any fixed :math:`m_i > 0`, so every derivative of it is the norm's own), which keeps
    the squares near 1. Samples whose :math:`m_i` is 0, Inf or NaN are not scaled: an exactly
    zero gradient keeps :func:`safe_norm`'s finite (zero) derivative, and Inf and NaN stay
    visible in the norm.
    """
    peak = None
    for g in grads:
        ndim = len(g.shape)
        a = xp.abs(g) if ndim == 1 else xp.max(xp.abs(g), axis=tuple(range(1, ndim)))
        # a NaN in a is not kept here, but it reaches the sum of squares below all the same
        peak = a if peak is None else xp.where(a > peak, a, peak)
    stop = getattr(xp, "stop_gradient", None)
    if stop is not None:
        peak = stop(peak)
    one = xp.ones_like(peak)
    scale = xp.where(peak > 0, xp.where(peak < float("inf"), peak, one), one)
    scaled = [g / xp.reshape(scale, (-1,) + (1,) * (len(g.shape) - 1)) for g in grads]
    return scale * safe_norm(per_sample_sq_sum(scaled, xp), xp)


def _square(x: Array, xp: Namespace) -> Array:
    """``x * x``, through the namespace's ``square`` where it has one: the same value (one
    rounding either way) and the same gradient, ``2 x`` times the incoming one, but one op in
    the backward graph instead of two products and their sum (Keras's eager TensorFlow and
    JAX run each op on its own). PyTorch's namespace sets it to ``None``: ``x * x`` is cheaper
    there."""
    square = getattr(xp, "square", None)
    return x * x if square is None else square(x)


def _deviation(norms: Array, target: float, ratio: bool) -> Array:
    return norms / target - 1.0 if ratio else norms - target


def two_sided(norms: Array, *, target: float, ratio: bool, xp: Namespace) -> Array:
    r""":math:`(n - t)^2`, or :math:`(n / t - 1)^2` in the ratio form."""
    return _square(_deviation(norms, target, ratio), xp)


def one_sided(norms: Array, *, target: float, ratio: bool, xp: Namespace) -> Array:
    r""":math:`\max(0, n - t)^2`, or :math:`\max(0, n / t - 1)^2` in the ratio form.

    A NaN norm gives a NaN penalty (it is not "below the target"), as in the other shapes.
    """
    d = _deviation(norms, target, ratio)
    d = xp.where(d < 0, xp.zeros_like(d), d)  # NaN < 0 is false: NaN stays NaN
    return _square(d, xp)


def squared(norms: Array, *, target: float, ratio: bool, xp: Namespace) -> Array:
    r""":math:`n^2` (zero-centred; ``target`` and ``ratio`` are ignored)."""
    return _square(norms, xp)


def squared_of_squares(sq_sums: Array, *, target: float, ratio: bool, xp: Namespace) -> Array:
    r""":func:`squared` from the per-sample sum of squares :math:`s = n^2`: :math:`s` itself.

    With no square root there is no infinite derivative at 0 to guard and no range to keep
    the root exact in: the derivative in the input gradient, :math:`2g`, is exact everywhere
    (0 at a zero gradient), and the value is the floating-point sum of squares (as in a
    hand-written R1), which overflows only where :math:`n^2` itself does. Squares that fall
    below the smallest normal number round to the subnormal grid, so for
    :math:`s < 2 \cdot \text{elements} \cdot \text{tiny}` (7e-35 for 3,072 float32 elements)
    the value can be off by up to ``elements`` times half the smallest subnormal (7e-46 in
    float32); larger values are exact to round-off.
    """
    return sq_sums


def power(norms: Array, *, target: float, ratio: bool, xp: Namespace, p: float) -> Array:
    r""":math:`n^p` (WGAN-div's shape; ``target`` and ``ratio`` are ignored), exact and
    NaN-safe at :math:`n = 0`.

    As a function of the input gradient :math:`g`, :math:`\lVert g \rVert^p` has the derivative
    :math:`p \lVert g \rVert^{p-2} g`, whose size :math:`p\,n^{p-1}` tends to 0 as
    :math:`n \to 0` for every :math:`p > 1`: the penalty's gradient is finite and continuous, and
    exactly 0 at :math:`n = 0`. Its pieces are not: computed as :math:`s^{p/2}` from the sum of
    squares :math:`s` (as public WGAN-div code does), the derivative
    :math:`\tfrac{p}{2} s^{p/2 - 1}` is infinite at :math:`s = 0` for every :math:`p < 2`, and
    autodiff's ``inf * 0`` turns an exactly-zero gradient into NaN. Here the power is taken of
    the norm, and only where it is non-zero (both ``where`` branches are finite), so the value
    is exact and the derivative at :math:`n = 0` is 0. For :math:`p = 1` that 0 is the
    subgradient the norm itself uses. Exponents below 1 are rejected by the callers
    (:func:`gpreg._validation.check_power`): there :math:`p\,n^{p-1}` is unbounded near 0. NaN and
    Inf norms propagate.
    """
    zero = norms == 0  # NaN is not zero: it propagates, as in safe_norm
    safe = xp.where(zero, xp.ones_like(norms), norms)
    return xp.where(zero, xp.zeros_like(norms), safe**p)


def real_fake_mean(at_real: Array, at_fake: Array) -> Array:
    r"""Per-sample penalty at real and fake samples: :math:`(\phi(n_i) + \phi(\tilde n_i)) / 2`.

    The mean of these over the batch is the mean over the mixture of both batches, i.e.
    :math:`\tfrac12 \mathbb{E}_x \phi + \tfrac12 \mathbb{E}_{\tilde x} \phi` (PyTorch-GAN's
    ``wgan_div``: ``k / 2`` on each).
    """
    return 0.5 * (at_real + at_fake)


def reduce(values: Array, reduction: str, xp: Namespace, count: int | None = None) -> Array:
    """Reduce per-sample penalties of shape (B,): ``mean``, ``sum``, ``max`` or ``none``.

    With ``count`` (a global batch size under data parallelism), ``mean`` is the local sum
    divided by ``count``: summed over replicas, that is the mean over the global batch.
    """
    if reduction == "mean":
        return xp.mean(values) if count is None else xp.sum(values) / count
    if reduction == "sum":
        return xp.sum(values)
    if reduction == "max":
        return xp.max(values)
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}")
