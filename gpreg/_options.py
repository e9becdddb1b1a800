"""The checked options of a penalty call, remembered by their values.

Every call of a penalty checks its weight, target, reduction and global batch size
(:mod:`gpreg._validation`) and resolves its shape. The results depend on nothing but those
values, and a training loop passes the same ones at every step, so a call whose values were
checked before takes the checked results from here (a dictionary lookup instead of a dozen
small checks on the hot path). A value that fails a check is never remembered: it raises the
same error at every call. Values that cannot be a dictionary key (a NumPy 0-d array, a
``shape_params`` dict) are checked at every call.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gpreg import _validation as v
from gpreg._specs import PenaltySpec, Shape, resolve_shape, resolve_spec_shape


class Options(NamedTuple):
    """What the checks made of a call's options."""

    shape: Shape
    weight: float  # the spec's weight factor times the checked weight
    target: float
    reduction: str
    global_batch_size: int | None


_checked: dict[tuple[Any, ...], tuple[Any, Options]] = {}
_LIMIT = 1024  # distinct option sets remembered (a loop uses a handful)


def _remember(key: tuple[Any, ...] | None, owner: Any, options: Options) -> Options:
    if key is not None:
        if len(_checked) >= _LIMIT:
            _checked.clear()
        _checked[key] = (owner, options)
    return options


def _lookup(key: tuple[Any, ...], owner: Any) -> Options | None:
    try:
        hit = _checked.get(key)
    except TypeError:  # an unhashable value: checked at every call
        return None
    # the owner (a spec, a shape) is held by the entry and compared by identity: a spec
    # registered again under the same name is a different owner
    return hit[1] if hit is not None and hit[0] is owner else None


def _hashable(key: tuple[Any, ...]) -> tuple[Any, ...] | None:
    try:
        hash(key)
    except TypeError:
        return None
    return key


_PLAIN = (type(None), bool, int, float, str)


def _plain(*values: Any) -> bool:
    """Whether every value is a Python scalar or string (or ``None``): only such values are
    remembered. A tensor or array hashes by identity and can change in place (a weight
    tensor a schedule updates), so a call with one is checked, and read, at every call."""
    return all(type(x) in _PLAIN for x in values)


def penalty_options(where: str, spec: PenaltySpec, *, weight: Any, target: Any, ratio: bool,
                    reduction: Any, global_batch_size: Any, shape: str | Shape | None = None,
                    shape_params: dict[str, Any] | None = None) -> Options:
    """The options of a call of ``spec``, checked (as the adapters' ``run`` checked them, in
    the same order and with the same messages), or taken from an earlier call with the same
    values. ``weight``, ``target`` and ``reduction`` may be ``None`` for the spec's default."""
    # the types are part of the key: True == 1 and 1 == 1.0, but a bool weight is an error
    key = (where, id(spec), weight, type(weight), target, type(target), bool(ratio), reduction,
           global_batch_size, type(global_batch_size), shape) if shape_params is None and (
        _plain(weight, target, reduction, global_batch_size)) else None
    if key is not None:
        hit = _lookup(key, spec)
        if hit is not None:
            return hit
    shp = resolve_spec_shape(where, spec, shape, shape_params)
    w = v.check_scalar(where, spec.weight_name, spec.default_weight if weight is None else weight)
    t = spec.default_target if target is None else target
    t = v.check_target(where, t, bool(ratio)) if shp.uses_target else float(t)
    red = v.check_reduction(where, spec.default_reduction if reduction is None else reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    options = Options(shp, spec.weight_factor * w, t, red, gbs)
    return _remember(_hashable(key) if key is not None else None, spec, options)


def generic_options(where: str, *, shape: str | Shape, weight: Any, target: Any, ratio: bool,
                    reduction: Any, global_batch_size: Any) -> Options:
    """The options of ``gradient_penalty``, checked (in its order) or remembered."""
    key = (where, weight, type(weight), target, type(target), bool(ratio), reduction,
           global_batch_size, type(global_batch_size), shape) if _plain(
        weight, target, reduction, global_batch_size) else None
    hit = None if key is None else _lookup(key, None)
    if hit is not None:
        return hit
    w = v.check_scalar(where, "weight", weight)
    t = v.check_target(where, target, bool(ratio))
    red = v.check_reduction(where, reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    options = Options(resolve_shape(where, shape), w, t, red, gbs)
    return _remember(None if key is None else _hashable(key), None, options)
