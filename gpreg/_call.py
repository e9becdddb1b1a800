"""How a penalty calls the critic: extra arguments and structured outputs, framework-free.

Every penalty calls ``critic(*points, *args, **kwargs)``: the evaluation points first, then
conditioning that is passed through untouched (labels, StyleGAN's ``c``, Keras's
``training=True``). ``output=`` picks the score out of a structured output (a tuple, a dict,
a dataclass, an object with attributes). The adapters detach the tensors of ``args`` and
``kwargs`` and check the batch of those in ``args``; the rules and the messages live here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

Output = int | str | Callable[[Any], Any] | None


def is_plain(args: Any, kwargs: Any, output: Any) -> bool:
    """No extra arguments and no output selector (the fast path: nothing to check)."""
    return (output is None and type(args) is tuple and not args
            and (kwargs is None or (type(kwargs) is dict and not kwargs)))


def check_call(where: str, args: Any, kwargs: Any, output: Any) -> tuple[tuple[Any, ...],
                                                                           dict[str, Any]]:
    """``args`` as a tuple and ``kwargs`` as a dict, or a ``TypeError`` that shows the fix."""
    if isinstance(args, list):
        args = tuple(args)
    if not isinstance(args, tuple):
        raise TypeError(
            f"{where}: args must be a tuple of extra critic arguments (passed after the "
            f"points: critic(*points, *args)); got {type(args).__name__}. For one argument "
            f"write args=(labels,)."
        )
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, Mapping):
        raise TypeError(
            f"{where}: kwargs must be a dict of keyword arguments for the critic, e.g. "
            f"kwargs={{'training': True}}; got {type(kwargs).__name__}."
        )
    else:
        kwargs = dict(kwargs)
        bad = [k for k in kwargs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: kwargs keys must be strings; got {bad[0]!r}.")
    if output is not None and not (callable(output) or (
            isinstance(output, (int, str)) and not isinstance(output, bool))):
        raise TypeError(
            f"{where}: output must be None, an index (int), a key or attribute name (str), or "
            f"a callable that takes the critic's output and returns the scores; got "
            f"{type(output).__name__}."
        )
    return args, kwargs


def leaves(obj: Any, path: str) -> list[tuple[str, Any]]:
    """``(path, leaf)`` for every leaf of nested tuples, lists and dicts (for the batch check)."""
    if isinstance(obj, (tuple, list)):
        return [x for i, o in enumerate(obj) for x in leaves(o, f"{path}[{i}]")]
    if isinstance(obj, Mapping):
        return [x for k, o in obj.items() for x in leaves(o, f"{path}[{k!r}]")]
    return [(path, obj)]


def map_leaves(fn: Callable[[Any], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every leaf of nested tuples, lists and dicts."""
    if isinstance(obj, (tuple, list)):
        items = [map_leaves(fn, o) for o in obj]
        if hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*items)
        return type(obj)(items) if isinstance(obj, tuple) else items
    if isinstance(obj, Mapping):
        return {k: map_leaves(fn, o) for k, o in obj.items()}
    return fn(obj)


def arg_batch_error(where: str, path: str, shape: tuple[int, ...], batch: int) -> ValueError:
    shown = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    return ValueError(
        f"{where}: {path} has shape {shown}, but the points have batch size {batch}. Tensors "
        f"in args are per-sample conditioning (labels, StyleGAN's c) and need the batch as "
        f"their leading dimension, one row per evaluation point (for interpolates and DRAGAN "
        f"points, the rows of real). Slice or repeat them to {batch} rows; pass something that "
        f"is not per sample through kwargs= instead."
    )


def check_arg_batches(where: str, args: tuple[Any, ...], batch: Any,
                      shape_of: Callable[[Any], tuple[Any, ...] | None]) -> None:
    """Every tensor in ``args`` has ``batch`` rows; ``shape_of`` gives a tensor's static shape
    (``None`` for a non-tensor; ``None`` entries for unknown sizes, which are not checked)."""
    if not isinstance(batch, int):
        return
    for path, leaf in leaves(args, "args"):
        shape = shape_of(leaf)
        if shape is None:
            continue
        if len(shape) == 0 or (shape[0] is not None and int(shape[0]) != batch):
            raise arg_batch_error(where, path, tuple(-1 if s is None else int(s)
                                                     for s in shape), batch)


def describe(out: Any, is_tensor: Callable[[Any], bool]) -> str:
    """A short account of a structured output: its keys, fields or length."""
    name = type(out).__name__
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out)[:8]) + (" ..." if len(out) > 8 else "")
        return f"a {name} with keys {keys}"
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        fields = ", ".join(repr(f.name) for f in dataclasses.fields(out))
        return f"a {name} (dataclass) with fields {fields}"
    if isinstance(out, (tuple, list)):
        kinds = ", ".join("tensor" if is_tensor(o) else type(o).__name__ for o in out[:8])
        fields = getattr(out, "_fields", None)
        if fields:
            return f"a {name} (namedtuple) with fields " + ", ".join(repr(f) for f in fields)
        return f"a {name} of length {len(out)} ({kinds}{' ...' if len(out) > 8 else ''})"
    attrs = [k for k, o in vars(out).items() if is_tensor(o)] if hasattr(out, "__dict__") else []
    if attrs:
        return f"a {name} with tensor attributes " + ", ".join(repr(a) for a in attrs[:8])
    return f"a {name}"


def _example(out: Any) -> str:
    if isinstance(out, Mapping) and out:
        return f"output={next(iter(out))!r}"
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return f"output={dataclasses.fields(out)[0].name!r}"
    return "output=0"


def structured(out: Any, is_tensor: Callable[[Any], bool]) -> bool:
    """Whether ``out`` is a container that ``output=`` could pick the scores from."""
    if is_tensor(out):
        return False
    if isinstance(out, (tuple, list, Mapping)):
        return True
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return True
    return hasattr(out, "__dict__") and any(is_tensor(o) for o in vars(out).values())


def pick_output(where: str, out: Any, output: Output, is_tensor: Callable[[Any], bool]) -> Any:
    """The scores inside the critic's output ``out``, as ``output`` says.

    ``None`` takes ``out`` itself, which must then be a tensor (a structured output gets an
    error that names its keys or length); an int indexes, a str is a key or an attribute, a
    callable is applied. The adapter checks that the result is a tensor led by the batch.
    """
    if output is None:
        if structured(out, is_tensor):
            raise TypeError(
                f"{where}: the critic returned {describe(out, is_tensor)}, not a tensor of "
                f"scores. Say which part is the score with output= (a key or attribute name, "
                f"an index, or a callable), e.g. {_example(out)} or "
                f"output=lambda o: o[...]."
            )
        return out
    if callable(output):
        return output(out)
    if isinstance(output, int):
        if isinstance(out, (tuple, list, Mapping)):
            try:
                return out[output]
            except (IndexError, KeyError):
                pass
    elif isinstance(out, Mapping):
        if output in out:
            return out[output]
    elif hasattr(out, output):
        return getattr(out, output)
    raise ValueError(
        f"{where}: output={output!r} does not select anything in the critic's output, which is "
        f"{describe(out, is_tensor)}. Pass one of its keys, fields or indices, or a callable."
    )


@dataclasses.dataclass(frozen=True)
class Call:
    """The extra arguments of the critic call and the output selector, checked and detached."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    output: Output = None

    def map(self, fn: Callable[[Any], Any]) -> Call:
        """The same call with ``fn`` applied to every leaf of ``args`` and ``kwargs``."""
        return Call(map_leaves(fn, self.args), map_leaves(fn, self.kwargs), self.output)

    @property
    def plain(self) -> bool:
        """``critic(*points)`` with a tensor output: nothing to pass or pick."""
        return not self.args and not self.kwargs and self.output is None


PLAIN = Call()
