"""The array namespace the core formulas run on in PyTorch: plain ``torch`` functions under
the array-API names the core uses (``gpreg._math``, ``gpreg._points``).

A direct mapping, not ``array_api_compat``'s generic wrappers: the penalty is on the training
hot path, and those wrappers cost more Python time per call than the small ops they wrap.
"""

from __future__ import annotations

from typing import Any

import torch

where = torch.where
sqrt = torch.sqrt
reshape = torch.reshape
zeros_like = torch.zeros_like
ones_like = torch.ones_like
mean = torch.mean
max = torch.amax
abs = torch.abs
# no ``square``: ``gpreg._math._square`` then takes ``x * x``, which is cheaper in PyTorch (set
# to None rather than left out, so that looking it up raises no AttributeError per call)
square = None


def stop_gradient(x: Any) -> Any:
    return x.detach()


def sum(x: Any, axis: Any = None) -> Any:
    return torch.sum(x) if axis is None else torch.sum(x, dim=axis)


def std(x: Any, ddof: int = 0) -> Any:
    """Standard deviation of all elements (population for ``ddof=0``, unbiased for 1)."""
    return torch.std(x, correction=ddof)
