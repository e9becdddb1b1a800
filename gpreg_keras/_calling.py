"""Keras's multi-input call convention, one rule on every backend.

A penalty calls the critic with the evaluation points (one or several parts) and then
``args=``. A Keras layer or model gets them the way its ``call`` takes them:

- as positional arguments when ``call`` has a positional slot for each (``call(self, image,
  label)``, or ``*args``);
- as one list when ``call`` takes a single input (a Functional model with several inputs, or
  ``call(self, inputs)``): the Keras way;
- with the points as one list, then the rest of ``args`` positionally, when ``call`` has more
  than one slot but fewer than there are parts and arguments (``call(self, inputs, labels)``).

Any other callable gets everything positionally. :func:`gpreg_keras.stateless_critic` follows
the same rule.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import keras

_NOT_INPUTS = ("training", "mask")


@functools.lru_cache(maxsize=256)
def _slots(cls: type) -> float:
    """How many positional inputs ``cls.call`` takes (``inf`` with ``*args``)."""
    try:
        params = list(inspect.signature(cls.call).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):  # builtins or odd wrappers: assume positional
        return float("inf")
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return float("inf")
    return float(sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                     and p.name not in _NOT_INPUTS))


def arrange(model: Any, points: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
    """The positional arguments for ``model`` given the points' parts and ``args``."""
    total = len(points) + len(args)
    if total <= 1 or not isinstance(model, keras.Layer):
        return (*points, *args)
    slots = _slots(type(model))
    if slots >= total:
        return (*points, *args)
    if slots <= 1:
        return ([*points, *args],)
    first = points[0] if len(points) == 1 else list(points)
    return (first, *args)
