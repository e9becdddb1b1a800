"""TensorFlow backend: the input gradient from a nested ``tf.GradientTape``.

Works eagerly, inside ``tf.function`` and under XLA (``jit_compile=True``), and inside the
caller's own tape, which records the inner gradient computation: that is the double backprop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

from gpreg import _call
from gpreg import _validation as v

_lock = threading.RLock()
_depth = 0


def _exact_moments(x: Any, axes: Any, keepdims: bool = False) -> tuple[Any, Any]:
    """Mean and population variance with no ``stop_gradient`` (``tf.nn.moments`` stops the
    gradient through the mean: harmless to first order, wrong to second order)."""
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=axes, keepdims=True)
    if not keepdims:
        mean = tf.squeeze(mean, axis=axes)
        var = tf.squeeze(var, axis=axes)
    return mean, var


def _exact_tf_moments(x: Any, axes: Any, shift: Any = None, keepdims: bool = False,
                      name: Any = None) -> tuple[Any, Any]:
    """``tf.nn.moments``'s signature over :func:`_exact_moments`."""
    return _exact_moments(x, axes, keepdims)


def _patch_points() -> list[tuple[Any, str, Any]]:
    """(module, attribute, exact replacement) for every moments function gpreg swaps."""
    points: list[tuple[Any, str, Any]] = [(tf.nn, "moments", _exact_tf_moments)]
    if getattr(tf.compat.v2.nn, "moments", None) is not None and tf.compat.v2.nn is not tf.nn:
        points.append((tf.compat.v2.nn, "moments", _exact_tf_moments))  # tf-keras uses this
    try:
        from keras.src.backend.tensorflow import nn as knn

        points.append((knn, "_compute_moments", _exact_moments))
    except ImportError:  # pragma: no cover - other Keras layouts
        pass
    return points


_saved: list[tuple[Any, str, Any]] = []


@contextlib.contextmanager
def exact_moments() -> Iterator[None]:
    """While active, normalization statistics on TensorFlow are computed exactly.

    Keras 3 (TensorFlow backend), tf-keras and plain TensorFlow code get the statistics of
    LayerNormalization, GroupNormalization and BatchNormalization from ``tf.nn.moments``,
    whose variance treats the mean as a constant. A penalty's parameter gradient is a second
    derivative, and that shortcut makes it wrong for every parameter before the
    normalization. gpreg swaps in exact statistics while it evaluates the critic and restores
    TensorFlow's and Keras's own afterwards (also on error); wrap your own double-backprop
    code in ``gpreg_keras.exact_moments()`` the same way. Under ``tf.function`` the swap acts
    while the function is traced. On the JAX and torch backends it does nothing.
    """
    global _depth
    with _lock:
        if _depth == 0:
            _saved[:] = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in _patch_points()]
            for mod, attr, exact in _patch_points():
                setattr(mod, attr, exact)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                for mod, attr, original in _saved:
                    setattr(mod, attr, original)


def input_gradients(
    where: str,
    critic: Callable[..., Any],
    points: tuple[Any, ...],
    create_graph: bool,
    scale: Any = None,
    output: _call.Output = None,
) -> tuple[tuple[Any, ...], Any]:
    """∂(Σ critic outputs)/∂points with a nested tape, one tensor per part (of the output
    times ``scale`` when a loss scale is given; the caller unscales), and the scores
    (``output`` picks them out of a structured output)."""
    batch = points[0].shape[0]
    with exact_moments(), tf.GradientTape(watch_accessed_variables=False) as tape:
        for p in points:
            tape.watch(p)
        try:
            raw = critic(*points)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise v.critic_failed(where, [tuple(p.shape) for p in points], exc) from exc
        out = raw if output is None and tf.is_tensor(raw) else _call.pick_output(
            where, raw, output, tf.is_tensor)
        if not tf.is_tensor(out):
            raise v.bad_output_type(where, type(out).__name__, "tensor")
        if batch is not None:
            v.check_output_shape(where, tuple(out.shape), int(batch))
        total = tf.reduce_sum(out)
        if scale is not None:
            total = tf.cast(total, tf.float32) * tf.cast(scale, tf.float32)
    grads = tape.gradient(total, list(points))
    if all(g is None for g in grads):
        raise v.independent_critic(where)
    grads = [tf.zeros_like(p) if g is None else g for g, p in zip(grads, points)]
    if not create_graph:
        grads = [tf.stop_gradient(g) for g in grads]
    return tuple(grads), out
