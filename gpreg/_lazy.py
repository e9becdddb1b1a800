"""Lazy regularization (StyleGAN2): the penalty every N-th critic step, N times as strong.

Pure arithmetic, shared by every adapter. Karras et al. (arXiv:1912.04958, Sec. 3.1 and
App. B) evaluate R1 once every 16 minibatches and report no loss of quality; the optimizer
hyperparameters are adjusted so that the regularized run sees the same effective step:
lr · N/(N+1) and β^(N/(N+1)).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass


@dataclass(frozen=True)
class LazyRegularization:
    r"""When to evaluate a penalty and with what gain, and how to adjust Adam.

    With interval :math:`N`, step :math:`t` (counting critic steps from 0) regularizes when
    :math:`t \bmod N = 0`, and the penalty is multiplied by :math:`N` there, so that on
    average the critic sees the penalty at its nominal weight.

    Args:
        interval: :math:`N`, a positive int (StyleGAN2 uses 16; 1 means every step).

    Example:
        >>> from gpreg import LazyRegularization
        >>> lazy = LazyRegularization(16)
        >>> [lazy.active(t) for t in (0, 1, 15, 16)], lazy.gain
        ([True, False, False, True], 16)
        >>> lr, betas = lazy.adam(0.002, (0.0, 0.99))
        >>> round(lr, 6), round(betas[1], 6)
        (0.001882, 0.990585)

    References:
        Karras, Laine, Aittala, Hellsten, Lehtinen, Aila. Analyzing and Improving the Image
        Quality of StyleGAN. CVPR 2020. arXiv:1912.04958.
    """

    interval: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or (
            self.interval < 1
        ):
            raise ValueError(
                f"LazyRegularization: interval must be a positive int; got {self.interval!r}"
            )

    def active(self, step: int) -> bool:
        """Whether critic step ``step`` (from 0) evaluates the penalty.

        Raises:
            TypeError: ``step`` is not an integer (a float, a bool).
            ValueError: ``step`` is negative.
        """
        try:
            index = operator.index(step)  # ints, NumPy and 0-d integer tensors
        except TypeError:
            index = None
        if index is None or isinstance(step, bool):
            raise TypeError(
                f"LazyRegularization.active: step must be a non-negative int (the critic step, "
                f"counted from 0); got {type(step).__name__} {step!r}. Count steps with "
                f"enumerate() or an int counter."
            )
        if index < 0:
            raise ValueError(
                f"LazyRegularization.active: step must be a non-negative int (the critic step, "
                f"counted from 0); got {step!r}."
            )
        return index % self.interval == 0

    @property
    def gain(self) -> int:
        """The factor on the penalty at the steps that evaluate it."""
        return self.interval

    @property
    def ratio(self) -> float:
        """:math:`N / (N + 1)`, the exponent of the optimizer adjustment."""
        return self.interval / (self.interval + 1)

    def adam(self, lr: float, betas: tuple[float, float]) -> tuple[float, tuple[float, float]]:
        """Adam's ``lr`` and ``betas`` for the regularized network: lr·N/(N+1), β^(N/(N+1)).

        Raises:
            ValueError: ``betas`` is not a pair of numbers.
        """
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            got = f"{len(betas)} value(s)" if isinstance(betas, (tuple, list)) else (
                type(betas).__name__)
            raise ValueError(
                f"LazyRegularization.adam: betas must be a pair (beta1, beta2), as Adam takes "
                f"them, e.g. (0.0, 0.99); got {got}: {betas!r}."
            )
        c = self.ratio
        return lr * c, (betas[0] ** c, betas[1] ** c)
