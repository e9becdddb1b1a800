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


@contextlib.contextmanager
def exact_moments() -> Iterator[None]:
    """While active, Keras's TensorFlow backend computes normalization statistics exactly.

    Keras 3 (TensorFlow backend) gets the statistics of LayerNormalization,
    GroupNormalization and BatchNormalization from ``tf.nn.moments``, whose variance treats
    the mean as a constant. A penalty's parameter gradient is a second derivative, and that
    shortcut makes it wrong for every parameter before the normalization. gpreg swaps in the
    exact statistics while it evaluates the critic and restores Keras's own afterwards (also
    on error). Under ``tf.function`` the swap acts while the function is traced.
    """
    global _depth
    try:
        from keras.src.backend.tensorflow import nn as knn
    except ImportError:  # pragma: no cover - other Keras layouts
        yield
        return
    with _lock:
        original = knn._compute_moments
        _depth += 1
        knn._compute_moments = _exact_moments
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                knn._compute_moments = original


def input_gradients(
    where: str,
    critic: Callable[..., Any],
    points: tuple[Any, ...],
    create_graph: bool,
    scale: Any = None,
) -> tuple[Any, ...]:
    """∂(Σ critic outputs)/∂points with a nested tape, one tensor per part (of the output
    times ``scale`` when a loss scale is given; the caller unscales)."""
    batch = points[0].shape[0]
    with exact_moments(), tf.GradientTape(watch_accessed_variables=False) as tape:
        for p in points:
            tape.watch(p)
        try:
            out = critic(*points)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise v.critic_failed(where, [tuple(p.shape) for p in points], exc) from exc
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
    return tuple(grads)
