"""TensorFlow backend: the input gradient from a nested ``tf.GradientTape``.

Works eagerly, inside ``tf.function`` and under XLA (``jit_compile=True``), and inside the
caller's own tape, which records the inner gradient computation: that is the double backprop.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx
from tensorflow.python.autograph.impl import api as ag_api
from tensorflow.python.ops import nn_impl

from gpreg import _call
from gpreg import _validation as v

_lock = threading.Lock()
_depth = 0


def _exact_moments(x: Any, axes: Any, keepdims: bool = False) -> tuple[Any, Any]:
    """Mean and population variance with no ``stop_gradient`` (``tf.nn.moments`` stops the
    gradient through the mean: harmless to first order, wrong to second order).

    float16 and bfloat16 inputs are reduced in float32 and the results cast back, as
    ``tf.nn.moments`` does for float16 (a float16 sum of a few hundred values overflows)."""
    dtype = x.dtype
    low = dtype in (tf.float16, tf.bfloat16)
    if low:
        x = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=axes, keepdims=True)
    if not keepdims:
        mean = tf.squeeze(mean, axis=axes)
        var = tf.squeeze(var, axis=axes)
    if low:
        mean, var = tf.cast(mean, dtype), tf.cast(var, dtype)
    return mean, var


def _exact_tf_moments(x: Any, axes: Any, shift: Any = None, keepdims: bool = False,
                      name: Any = None) -> tuple[Any, Any]:
    """``tf.nn.moments``'s signature over :func:`_exact_moments`."""
    return _exact_moments(tf.convert_to_tensor(x), axes, bool(keepdims))


def _exact_v1_moments(x: Any, axes: Any, shift: Any = None, name: Any = None,
                      keep_dims: Any = None, keepdims: Any = None) -> tuple[Any, Any]:
    """``tf.compat.v1.nn.moments``'s signature (``keep_dims`` before ``keepdims``)."""
    keep = keepdims if keepdims is not None else keep_dims
    return _exact_moments(tf.convert_to_tensor(x), axes, bool(keep))


def _patch_points() -> list[tuple[Any, str, Any]]:
    """(module, attribute, exact replacement) for every moments function gpreg swaps.

    ``nn_impl.moments`` is the function behind ``tf.compat.v1.nn.moments`` and the one that
    ``tf.nn.moments`` looks up when it runs, so swapping it also covers a ``tf.nn.moments``
    bound to another name before the call; an alias of ``tf.compat.v1.nn.moments`` (or of
    Keras's internals) bound before the call is not covered.
    """
    points: list[tuple[Any, str, Any]] = [
        (tf.nn, "moments", _exact_tf_moments),
        (tf.compat.v1.nn, "moments", _exact_v1_moments),
        (nn_impl, "moments", _exact_v1_moments),
    ]
    if getattr(tf.compat.v2.nn, "moments", None) is not None and tf.compat.v2.nn is not tf.nn:
        points.append((tf.compat.v2.nn, "moments", _exact_tf_moments))  # tf-keras uses this
    try:
        from keras.src.backend.tensorflow import nn as knn

        points.append((knn, "_compute_moments", _exact_moments))
    except ImportError:  # pragma: no cover - other Keras layouts
        pass
    return points


_saved: list[tuple[Any, str, Any]] = []


_points_cache: list[list[tuple[Any, str, Any]]] = []


class _ExactMoments:
    """The context of :func:`exact_moments` (a plain object: a penalty enters it at every
    call, and a generator-based context manager and a fresh lookup of the patch points
    through TensorFlow's lazy module wrappers cost several microseconds more)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        with _lock:
            if _depth == 0:
                if not _points_cache:
                    _points_cache.append(_patch_points())
                points = _points_cache[0]
                _saved[:] = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in points]
                for mod, attr, exact in points:
                    setattr(mod, attr, exact)
            _depth += 1

    def __exit__(self, *exc: Any) -> None:
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0:
                for mod, attr, original in _saved:
                    setattr(mod, attr, original)
                _saved.clear()


_EXACT_MOMENTS = _ExactMoments()


def exact_moments() -> _ExactMoments:
    """While active, normalization statistics on TensorFlow are computed exactly.

    Keras 3 (TensorFlow backend), tf-keras and plain TensorFlow code get the statistics of
    LayerNormalization, GroupNormalization and BatchNormalization from ``tf.nn.moments``,
    whose variance treats the mean as a constant. A penalty's parameter gradient is a second
    derivative, and that shortcut makes it wrong for every parameter before the
    normalization. gpreg swaps in exact statistics while it evaluates the critic and restores
    TensorFlow's and Keras's own afterwards (also on error); wrap your own double-backprop
    code in ``gpreg_keras.exact_moments()`` the same way. Under ``tf.function`` the swap acts
    while the function is traced. On the JAX and torch backends it does nothing.

    The swap is process-wide and counted: the lock is held only while the functions are
    swapped or restored, never while the critic runs, so replica threads that meet inside
    the critic (``BatchNormalization(synchronized=True)`` under ``MirroredStrategy``) do not
    wait on each other. The modules and replacements are looked up once; what is swapped out
    (and back in) is whatever those attributes hold at each outermost entry.
    """
    return _EXACT_MOMENTS


# --- the user's critic: AutoGraph as the caller has it, fresh traces of tf.function critics ---

_caller_autograph: contextvars.ContextVar[Any] = contextvars.ContextVar("gpreg_autograph",
                                                                         default=None)


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A public entry point: gpreg's own code stays out of AutoGraph (converting the ~40
    functions behind a penalty made the first trace take 4–11 s), while the caller's
    AutoGraph status is kept for the user's critic (see :func:`user_critic`)."""
    inner = tf.autograph.experimental.do_not_convert(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _caller_autograph.set(tf.__internal__.autograph.control_status_ctx())
        try:
            return inner(*args, **kwargs)
        finally:
            _caller_autograph.reset(token)

    # marked as do_not_convert marks its wrapper (AutoGraph calls it as it is), without
    # do_not_convert's switch to "disabled", which must come after the capture
    return ag_api.autograph_artifact(wrapper)


_fresh: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_frozen_warned: weakref.WeakSet = weakref.WeakSet()


def _twin(fn: Any) -> Any:
    """A ``tf.function`` with ``fn``'s Python function and options whose traces are only
    ever made inside :func:`exact_moments`: which call traced ``fn`` first does not matter."""
    twin = _fresh.get(fn)
    if twin is None:
        twin = tf.function(fn.python_function, input_signature=fn.input_signature,
                           jit_compile=getattr(fn, "_jit_compile", None),
                           reduce_retracing=bool(getattr(fn, "_reduce_retracing", False)),
                           autograph=bool(getattr(fn, "_autograph", True)))
        _fresh[fn] = twin
    return twin


def _frozen_graphs(critic: Any) -> list[Any] | None:
    """The graphs of a critic whose graph is fixed (a concrete function, a restored
    SavedModel function or a ``TFSMLayer``); ``None`` for anything else."""
    try:
        import keras

        if isinstance(critic, keras.layers.TFSMLayer):
            fns = [getattr(critic, a, None) for a in ("call_endpoint_fn",
                                                      "call_training_endpoint_fn")]
            return [g for f in fns if f is not None for g in (_frozen_graphs(f) or [])]
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    if isinstance(critic, tf.types.experimental.ConcreteFunction):
        return [critic.graph]
    call = critic
    if not isinstance(critic, tf.types.experimental.PolymorphicFunction):
        call = type(critic).__dict__.get("__call__")
    if type(call).__name__ == "RestoredFunction":
        return [c.graph for c in getattr(call, "concrete_functions", [])]
    return None


def _has_inexact_moments(graphs: list[Any]) -> bool:
    """Whether a frozen graph holds ``tf.nn.moments``' ``StopGradient`` (any nested function
    of its library included)."""
    for graph in graphs:
        gd = graph.as_graph_def()
        nodes = list(gd.node) + [n for f in gd.library.function for n in f.node_def]
        if any(n.op == "StopGradient" and "moments" in n.name for n in nodes):
            return True
    return False


def user_critic(where: str, critic: Any) -> Any:
    """The user's critic as gpreg calls it on TensorFlow.

    A ``tf.function`` critic runs a twin whose traces are made with exact statistics; a
    frozen graph (restored SavedModel, concrete function) cannot be retraced, and gets a
    warning when it holds ``tf.nn.moments``; under a caller that AutoGraph converts, the
    critic is converted as ``tf.function`` would convert it (tensor ``if``, ``tf.range``
    loops)."""
    graphs = _frozen_graphs(critic)
    if graphs is not None:
        if critic not in _frozen_warned and _has_inexact_moments(graphs):
            _frozen_warned.add(critic)
            warnings.warn(v.frozen_moments_message(where), v.InexactStatisticsWarning,
                          stacklevel=5)
    elif isinstance(critic, tf.types.experimental.PolymorphicFunction) and hasattr(
            critic, "python_function"):
        critic = _twin(critic)
    ctx = _caller_autograph.get()
    if ctx is not None and ctx.status == ag_ctx.Status.ENABLED:
        critic = tf.__internal__.autograph.tf_convert(critic, ctx, convert_by_default=False)
    return critic


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
        # the tape seeds a non-scalar target with ones: the gradient of its sum, without a
        # reduce_sum (and its gradient's ops) in the graph that the outer tape runs again
        total = out if scale is None else (
            tf.cast(tf.reduce_sum(out), tf.float32) * tf.cast(scale, tf.float32))
    grads = tape.gradient(total, list(points))
    if all(g is None for g in grads):
        raise v.independent_critic(where)
    grads = [tf.zeros_like(p) if g is None else g for g, p in zip(grads, points)]
    if not create_graph:
        grads = [tf.stop_gradient(g) for g in grads]
    return tuple(grads), out


# --- data parallelism: statistics over every replica of a tf.distribute strategy ---------

def replica_context() -> Any:
    """The replica context of a multi-replica ``tf.distribute`` strategy, or ``None``."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def replica_std(ctx: Any, x: Any, ddof: int = 0) -> Any:
    """Standard deviation of all elements of ``x`` over every replica (a constant): the
    statistic one device computes on the global batch."""
    x = tf.stop_gradient(x)
    total, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                  [tf.reduce_sum(x), tf.cast(tf.size(x), x.dtype)])
    mean = total / count
    squares = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                             tf.reduce_sum(tf.math.squared_difference(x, mean)))
    return tf.sqrt(squares / (count - ddof))


def replica_max(ctx: Any, per_sample: Any) -> Any:
    """This replica's share of the maximum over every replica's samples.

    Keras's optimizers sum the replicas' gradients (and ``strategy.reduce("SUM")`` their
    losses), so each replica returns the global maximum divided by the number of replicas;
    the replica that holds the maximum (the first one, on a tie) carries its gradient, the
    others none. Summed, that is the one-device value and gradient."""
    local = tf.reduce_max(per_sample)
    replicas = ctx.num_replicas_in_sync
    me = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    # every replica's maximum, gathered by a sum of one-hot rows (an all-reduce: a plain
    # all-gather clashed with the collective keys of a second strategy in the process)
    gathered = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                              tf.one_hot(me, replicas, dtype=local.dtype)
                              * tf.stop_gradient(local))
    owner = tf.equal(tf.argmax(gathered, output_type=tf.int32), me)
    share = tf.reduce_max(gathered) / tf.cast(replicas, local.dtype)
    return share + tf.where(owner, local - tf.stop_gradient(local), tf.zeros_like(local))
