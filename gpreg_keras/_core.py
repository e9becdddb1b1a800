"""Keras 3 adapter body: randomness, points, checks and the penalty, per backend.

The only backend-specific piece is the input gradient (``_tensorflow.py``, ``_jax.py``); on
Keras's torch backend the whole computation is ``gpreg_torch``'s, with the random draws made
here by ``keras.random`` so that ``seed=`` means the same on every backend.
"""

from __future__ import annotations

import contextlib
import operator
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from gpreg import _call, _math, _options, _points
from gpreg import _validation as v
from gpreg._call import PLAIN, Call
from gpreg._specs import (
    PenaltySpec,
    Shape,
    choose_points,
    get_spec,
)
from gpreg_keras import _ops as xp
from gpreg_keras._calling import arrange


def backend() -> str:
    return keras.backend.backend()


def _shape_or_none(x: Any) -> tuple[Any, ...] | None:
    if ops.is_tensor(x) or isinstance(x, np.ndarray):
        return _static(x.shape)
    return None


def _stop(x: Any) -> Any:
    return xp.stop_gradient(x) if ops.is_tensor(x) else x


def _n_parts(x: Any) -> int:
    return len(x) if isinstance(x, (tuple, list)) else 1


def call_options(where: str, args: Any, kwargs: Any, output: Any, data: Any) -> Call:
    """``args``/``kwargs``/``output`` checked against the batch of ``data`` (the real batch or
    the points); tensors in them are stopped (conditioning is never differentiated)."""
    if _call.is_plain(args, kwargs, output):
        return PLAIN
    args, kwargs = _call.check_call(where, args, kwargs, output)
    first = data[0] if isinstance(data, (tuple, list)) and data else data
    batch = _batch(first) if hasattr(first, "shape") and len(first.shape) else None
    _call.check_arg_batches(where, args, batch, _shape_or_none)
    return Call(_call.map_leaves(_stop, args), _call.map_leaves(_stop, kwargs), output)


def critic_fn(where: str, critic: Any, call: Call, n_parts: int) -> Callable[..., Any]:
    """``fn(*points)``: the critic's raw output at the points, with ``call.args`` and
    ``call.kwargs``, by Keras's call convention (``gpreg_keras._calling``)."""
    if not callable(critic):
        raise TypeError(f"{where}: critic must be callable; got {type(critic).__name__}.")
    # (a Keras model is never stateless_critic's function; on torch, a failed attribute
    # lookup on one goes through torch.nn.Module.__getattr__, which costs microseconds)
    layer = isinstance(critic, keras.Layer)
    stateless = None if layer else getattr(critic, "_gpreg_call", None)
    name = backend()
    if stateless is not None:  # gp.stateless_critic(...): it knows the model's convention
        fn = lambda *pts: stateless(pts, call.args, call.kwargs)  # noqa: E731
        fn._gpreg_state = critic._gpreg_state  # type: ignore[attr-defined]  # see _jax.py
        if name == "jax":  # the model (and the flag) decide what the closure computes
            from gpreg_keras._jax import critic_identity

            model, _, _, training = critic._gpreg_stateless
            fn._gpreg_identity = critic_identity(  # type: ignore[attr-defined]
                model, (training, call.args), call.kwargs)
        return fn
    target = critic
    if name == "tensorflow":
        from gpreg_keras._tensorflow import user_critic

        target = user_critic(where, critic)
    if layer:
        if name == "jax":
            from gpreg_keras._jax import keras_model_error

            raise keras_model_error(where)
        if n_parts == 1 and call.plain and name == "tensorflow":
            return target
        # (on torch, a Keras model is a torch module too: wrapped, gpreg_torch does not take
        # it for a torch critic to inspect)
        return lambda *pts: target(*arrange(critic, pts, call.args), **call.kwargs)
    if name == "jax":
        from gpreg_keras._jax import critic_identity

        identity = critic_identity(critic, call.args, call.kwargs)
        fn = lambda *pts: target(*pts, *call.args, **call.kwargs)  # noqa: E731
        fn._gpreg_identity = identity  # type: ignore[attr-defined]  # see _jax.py
        return fn
    if call.plain:
        return target
    return lambda *pts: target(*pts, *call.args, **call.kwargs)


def _static(shape: Any) -> tuple[Any, ...]:
    return tuple(None if s is None else int(s) for s in shape)


def _dtype(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


_UNSUPPORTED = {"RaggedTensor": "ragged tensor", "SparseTensor": "sparse tensor",
                "BCOO": "sparse array (BCOO)", "BCSR": "sparse array (BCSR)"}
_FRAMEWORKS = {"jax": "jax", "jaxlib": "jax", "torch": "torch", "tensorflow": "tensorflow"}


def _check_dense(where: str, role: str, p: Any) -> None:
    kind = _UNSUPPORTED.get(type(p).__name__)
    if kind is not None or getattr(p, "is_sparse", False) is True or (
            getattr(p, "layout", None) is not None and "sparse" in str(p.layout)):
        raise v.unsupported_points(where, role, kind or "sparse tensor")


_eager_type: list[Any] = []


def _concrete_type() -> Any:
    """The class of the backend's concrete arrays: TensorFlow's EagerTensor, JAX's ArrayImpl
    (``None`` on torch, whose inputs gpreg_torch checks by signature)."""
    if not _eager_type:
        name = backend()
        if name == "tensorflow":
            import tensorflow as tf

            _eager_type.append(type(tf.constant(0.0)))
        elif name == "jax":
            import jax.numpy as jnp

            _eager_type.append(type(jnp.zeros(())))
        else:
            _eager_type.append(None)
    return _eager_type[0]


def _signature(p: Any) -> Any:
    """What the checks of a concrete array depend on (its shape and dtype), read without
    Keras's or TensorFlow's Python-level accessors; ``None`` for anything else (NumPy, a
    tracer, a symbolic or sparse tensor, a variable), which is checked at every call."""
    cls = _concrete_type()
    if cls is None or type(p) is not cls:
        return None
    try:
        if backend() == "tensorflow":
            return p._shape_tuple(), p._datatype_enum()
        return p.shape, p.dtype
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - other versions
        return None


# (where, role, signatures) of points whose checks passed; no arrays are held
_checked_parts: set[tuple[Any, ...]] = set()


def _remember(key: tuple[Any, ...]) -> None:
    if len(_checked_parts) >= 1024:
        _checked_parts.clear()
    _checked_parts.add(key)


def parts(where: str, role: str, x: Any) -> tuple[Any, ...]:
    """Normalise ``x`` (tensor, NumPy array or tuple/list of them) to a tuple of stopped
    tensors of the active backend. Concrete arrays of a signature that passed the checks
    are only stopped (the checks depend on nothing else)."""
    items = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    sigs = tuple(map(_signature, items))
    key = (where, role, sigs) if None not in sigs else None
    if key is not None and key in _checked_parts:
        return tuple(map(xp.stop_gradient, items))
    out = []
    for p in items:
        _check_dense(where, role, p)
        if isinstance(p, np.ndarray):
            if p.dtype.kind not in "f":
                v.check_floating(where, role, str(p.dtype), False)
            p = ops.convert_to_tensor(p)
        elif not ops.is_tensor(p):
            root = type(p).__module__.split(".")[0]
            belongs = _FRAMEWORKS.get(root)
            raise v.wrong_backend_tensor(where, role, f"{root}.{type(p).__name__}", backend(),
                                         belongs if belongs != backend() else None)
        dt = _dtype(p)
        v.check_floating(where, role, dt, keras.backend.is_float_dtype(dt))
        out.append(xp.stop_gradient(p))
    shapes = [_static(p.shape) for p in out]
    if all(s and s[0] is not None for s in shapes) or any(len(s) == 0 for s in shapes):
        v.check_parts(where, role, shapes)
    if key is not None:
        _remember(key)
    return tuple(out)


def _batch(x: Any) -> Any:
    b = x.shape[0]
    return int(b) if b is not None else ops.shape(x)[0]


_OWN = ("gpreg", "gpreg_keras", "gpreg_torch", "keras", "tensorflow", "jax", "torch")


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside gpreg and the
    frameworks (the user's call), whatever path led here."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OWN:
        frame, level = frame.f_back, level + 1
    return level


def _is_traced(x: Any) -> bool:
    if backend() != "jax":
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


def _jit_tracing() -> bool:
    """Whether this call is being staged into a compiled function (``jax.jit`` or
    ``tf.function``), where a Python value is frozen into the trace."""
    if backend() == "jax":
        try:  # the trace stack, read directly (0.2 µs; staging a constant costs ~100 µs)
            from jax._src import core as jcore
            from jax._src.interpreters import partial_eval as pe

            trace = jcore.trace_ctx.trace
            while trace is not None:
                if isinstance(trace, pe.DynamicJaxprTrace):
                    return True
                trace = getattr(trace, "parent_trace", None)
            return False
        except (ImportError, AttributeError):  # pragma: no cover - other JAX versions
            import jax
            import jax.numpy as jnp

            return isinstance(jnp.zeros(()), jax.core.Tracer)
    if backend() == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    return False


def _named_axes() -> bool:
    """Whether JAX runs this call per device under named axes (``shard_map``, ``pmap``)."""
    if backend() != "jax":
        return False
    try:
        from jax._src import core as jcore

        return bool(jcore.get_axis_env().axis_sizes)
    except (ImportError, AttributeError):  # pragma: no cover - other JAX versions
        return False


def _state_threaded(generator: Any) -> bool:
    """Whether Keras threads ``generator``'s state (an active StatelessScope maps it)."""
    try:
        from keras.src.backend.common.stateless_scope import (
            get_stateless_scope,
            in_stateless_scope,
        )
    except ImportError:  # pragma: no cover - other Keras layouts
        return False
    return in_stateless_scope() and get_stateless_scope().get_current_value(
        generator.state) is not None


_fixed_seed_warned: list[bool] = []


def _seed_for(seed: Any, k: int) -> Any:
    """The seed of the k-th draw of one call: distinct streams for alpha and each noise part.

    An int seed ``s`` gives ``s`` for alpha and a derived int for noise part ``k``; a JAX key
    is folded with ``k``; a ``SeedGenerator`` advances by itself.
    """
    if backend() == "jax":
        import jax

        # An int seed becomes a key, so that an int passed into jax.jit (where it arrives as
        # a 0-d integer array) draws the same numbers as the same int used eagerly.
        traced_int = ops.is_tensor(seed) and jax.numpy.issubdtype(seed.dtype, jax.numpy.integer)
        if isinstance(seed, (int, np.integer)) or (traced_int and len(seed.shape) == 0):
            seed = jax.random.PRNGKey(seed)
    if seed is None or isinstance(seed, keras.random.SeedGenerator) or k == 0:
        return seed
    if isinstance(seed, (int, np.integer)):
        return (int(seed) * 1_000_003 + k) & 0x7FFFFFFF
    if backend() == "jax":
        import jax

        return jax.random.fold_in(seed, k)
    raise TypeError(
        f"seed must be None, an int, a keras.random.SeedGenerator or (on JAX) a key; got "
        f"{type(seed).__name__}"
    )


def _check_seed(where: str, seed: Any) -> None:
    ok = (seed is None or isinstance(seed, (int, np.integer, keras.random.SeedGenerator))
          or (backend() == "jax" and ops.is_tensor(seed)))
    if isinstance(seed, bool) or not ok:
        raise TypeError(
            f"{where}: seed must be None, an int, a keras.random.SeedGenerator or (on JAX) a "
            f"key; got {type(seed).__name__}."
        )


def _check_draw(where: str, seed: Any, like: Any) -> None:
    """A seed that cannot move where this draw runs: refused (JAX) or warned about once."""
    if seed is None:
        if _is_traced(like) or (backend() == "jax" and _jit_tracing()):
            raise v.traced_unseeded(where)
    elif isinstance(seed, keras.random.SeedGenerator):
        if backend() == "jax" and (_is_traced(like) or _jit_tracing()) and not _state_threaded(
                seed):
            raise v.traced_seed_generator(where)
    elif isinstance(seed, (int, np.integer)) and not _fixed_seed_warned and _jit_tracing():
        _fixed_seed_warned.append(True)
        fix = ("a JAX key that changes per step (seed=jax.random.fold_in(key, step))"
               if backend() == "jax" else "a keras.random.SeedGenerator (created once, "
               "outside the step: seed=keras.random.SeedGenerator(0))")
        warnings.warn(v.fixed_seed_message(where, int(seed), fix), v.FixedSeedWarning,
                      stacklevel=user_stacklevel())


def _uniform(where: str, shape: Any, dtype: str, seed: Any, k: int, like: Any,
             normal: bool = False) -> Any:
    """A U[0, 1) draw (N(0, 1) with ``normal``): the ``k``-th stream of ``seed``."""
    _check_seed(where, seed)
    _check_draw(where, seed, like)
    draw_dtype = "float32" if dtype in ("float16", "bfloat16") else dtype
    draw = keras.random.normal if normal else keras.random.uniform
    return ops.cast(draw(shape, dtype=draw_dtype, seed=_seed_for(seed, k)), dtype)


def alpha_values(where: str, alpha: Any, like: Any, seed: Any) -> Any:
    sig = _signature(alpha)
    if sig is not None:  # a concrete alpha of shape (batch,) in like's dtype: only stopped
        own = _signature(like)
        if own is not None and sig[1] == own[1] and tuple(sig[0]) == tuple(own[0][:1]):
            return xp.stop_gradient(alpha)
    batch = _batch(like)
    dt = _dtype(like)
    if alpha is None:
        return _uniform(where, (batch,), dt, seed, 0, like)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return ops.full((batch,), float(alpha), dtype=dt)
    if not (ops.is_tensor(alpha) or isinstance(alpha, np.ndarray)):
        raise TypeError(
            f"{where}: alpha must be None, a number or a tensor of shape ({batch},); got "
            f"{type(alpha).__name__}."
        )
    shape = _static(alpha.shape)
    if isinstance(batch, int) and None not in shape:
        v.check_alpha_shape(where, shape, batch)
    return ops.reshape(xp.stop_gradient(ops.cast(alpha, dt)), (batch,))


def noise_values(where: str, noise: Any, real: tuple[Any, ...], seed: Any,
                 gaussian: bool = False) -> tuple[Any, ...]:
    """DRAGAN's noise: given, or drawn U[0, 1) (N(0, 1) for the paper's Gaussian form)."""
    if noise is None:
        return tuple(
            _uniform(where, ops.shape(r), _dtype(r), seed, k + 1, r, gaussian)
            for k, r in enumerate(real)
        )
    items = tuple(noise) if isinstance(noise, (tuple, list)) else (noise,)
    v.check_noise_shapes(where, [_static(n.shape) for n in items], [_static(r.shape) for r in real])
    return tuple(xp.stop_gradient(ops.cast(n, _dtype(r))) for n, r in zip(items, real))


_warned: set[int] = set()
_sublayers_of = operator.attrgetter("_layers")


class _LayerTree:
    """What a Keras model's layer tree was: every layer's class and its list of sublayers.

    :func:`_warn_batchnorm` looks for BatchNormalization at every call of a model that has
    none; Keras's walk of the tree (``_flatten_layers``) is a Python loop (about a third of
    gpreg_keras's own work per call on a three-layer model), while :meth:`unchanged`
    compares the saved copies in a few passes that run in C. A layer added, inserted,
    replaced or removed anywhere in the tree changes its parent's list of sublayers, so the
    next call walks the tree again. The model itself is not held (the entry that holds this
    is keyed by it, weakly).
    """

    __slots__ = ("classes", "layers", "sublayers")

    def __init__(self, model: Any, layers: list[Any]) -> None:
        self.layers = tuple(layers)
        every = (model, *self.layers)
        self.classes = tuple(map(type, every))
        self.sublayers = list(map(list, map(_sublayers_of, every)))

    def unchanged(self, model: Any) -> bool:
        every = (model, *self.layers)
        try:
            return tuple(map(type, every)) == self.classes and list(
                map(list, map(_sublayers_of, every))) == self.sublayers
        except (AttributeError, TypeError):  # a list replaced by something else
            return False


# Keras models seen without BatchNormalization -> their layer tree then
_without_batchnorm: weakref.WeakKeyDictionary[Any, _LayerTree] = weakref.WeakKeyDictionary()


def _batchnorm_layers(model: Any) -> list[str]:
    """Names of the batch-normalization layers in a Keras 3 model, a tf-keras model or any
    ``tf.Module``."""
    if isinstance(model, keras.Layer):
        tree = _without_batchnorm.get(model)
        if tree is not None and tree.unchanged(model):
            return []
        layers = model._flatten_layers(include_self=False)
        names = [lay.name for lay in layers if isinstance(lay, keras.layers.BatchNormalization)]
        if not names:
            # (a model that cannot be weakly referenced is walked every time)
            with contextlib.suppress(TypeError):
                _without_batchnorm[model] = _LayerTree(model, layers)
        return names
    subs = getattr(model, "submodules", None)  # tf.Module, tf-keras (Keras 2) models
    if subs is None or not hasattr(model, "trainable_variables"):
        return []
    try:
        found = list(subs)
    except Exception:  # pragma: no cover - odd modules
        return []
    return [getattr(m, "name", type(m).__name__) for m in found
            if "BatchNormalization" in type(m).__name__]


def _warn_batchnorm(where: str, critic: Any, call: Call = PLAIN) -> None:
    """Warn once per Keras (or tf-keras) critic that holds BatchNormalization layers, unless
    the penalty runs it with ``training=False``."""
    if isinstance(critic, keras.Layer):  # the model itself (no attribute lookups: see critic_fn)
        model = critic
        stateless = None
    else:
        model = getattr(critic, "_gpreg_model", critic)
        model = getattr(model, "python_function", model)  # a tf.function over the model
        stateless = getattr(critic, "_gpreg_stateless", None)
    if id(model) in _warned or call.kwargs.get("training", None) is False:
        return
    if stateless is not None and stateless[3] is False:
        return
    names = _batchnorm_layers(model)
    if names:
        _warned.add(id(model))
        warnings.warn(v.batchnorm_message(where, names) + " (Keras: applies when the critic "
                      "runs with training=True.)", v.BatchNormWarning,
                      stacklevel=user_stacklevel())


def _finite(where: str, what: str, x: Any) -> None:
    try:
        arr = ops.convert_to_numpy(x)
    except Exception as exc:  # symbolic tensors while tracing
        raise ValueError(
            f"{where}: check_finite=True needs concrete values (eager execution); inside "
            f"tf.function or jax.jit use tf.debugging.check_numerics / jax.debug instead."
        ) from exc
    arr = np.asarray(arr, dtype=np.float64).reshape(arr.shape[0], -1)
    v.check_finite(where, what, np.flatnonzero(~np.isfinite(arr).all(axis=1)).tolist())


def input_gradients(
    where: str, critic: Callable[..., Any], points: tuple[Any, ...], create_graph: bool,
    scaler: Any = None, output: Any = None,
) -> tuple[tuple[Any, ...], Any]:
    scale = None if scaler is None else loss_scale(where, scaler)
    if backend() == "tensorflow":
        from gpreg_keras import _tensorflow as impl
    elif backend() == "jax":
        from gpreg_keras import _jax as impl  # type: ignore[no-redef]
    else:  # pragma: no cover - torch is routed to gpreg_torch before this point
        raise NotImplementedError(backend())
    grads, out = impl.input_gradients(where, critic, points, create_graph, scale, output)
    if scale is not None:  # unscale out of place, in float32
        grads = tuple(ops.cast(g, "float32") / ops.cast(scale, "float32") for g in grads)
    return grads, out


def loss_scale(where: str, scaler: Any) -> Any:
    """The current loss scale of a ``keras.optimizers.LossScaleOptimizer``."""
    if not hasattr(scaler, "scale_loss") or not hasattr(scaler, "initial_scale"):
        raise TypeError(
            f"{where}: scaler must be a keras.optimizers.LossScaleOptimizer (the optimizer "
            f"that mixed_float16 training uses); got {type(scaler).__name__}."
        )
    # the optimizer's own rule: its variable once built, the initial scale before
    if not scaler.built:
        return ops.convert_to_tensor(scaler.initial_scale, dtype="float32")
    scale = scaler.dynamic_scale.value  # the live value inside a keras.StatelessScope
    if backend() == "jax" and _jit_tracing():
        import jax

        if not isinstance(scale, jax.core.Tracer):
            raise v.loss_scale_traced(where)
    return ops.convert_to_tensor(scale, dtype="float32")


class _TorchScalerView:
    """A LossScaleOptimizer seen through GradScaler's interface (Keras on torch)."""

    def __init__(self, where: str, scaler: Any) -> None:
        self._scale = loss_scale(where, scaler)

    def is_enabled(self) -> bool:
        return True

    def scale(self, x: Any) -> Any:
        return x * self._scale.to(x.dtype)

    def get_scale(self) -> float:
        return float(self._scale)


def norms_from_gradients(grads: Any) -> Any:
    """Exact per-sample norms (:func:`gpreg._math.per_sample_norm`), in ≥ float32.

    Where the sum of squares can be read on the host for free (eager TensorFlow on the CPU)
    and every sample's lies in the range where it is exact and nonzero
    (:func:`_exact_range`), the norm is its square root: three ops, as a hand-written norm,
    instead of the scaled norm's dozen (in eager mode each op is a dispatch of tens of
    microseconds). On TensorFlow where it cannot be read for free (a ``tf.function``, a
    GPU), float32 gradients get the norm of :func:`_tf_wide_norm`. JAX without ``jit``
    (also under an eager outer ``jax.grad``) makes the same choice per sample inside one
    jitted computation (:func:`gpreg_keras._jax.eager_norms`: reading a value there would
    wait for the queued work). Anywhere else (JAX under ``jit``, float64 in a
    ``tf.function``, a zero, tiny or huge gradient, NaN) it is the scaled, NaN-safe norm.
    """
    acc = _accurate(grads)
    if backend() == "jax" and not _jit_tracing():
        from gpreg_keras._jax import eager_norms

        elements = sum(int(np.prod(_static(g.shape)[1:])) for g in acc)
        wide = str(np.result_type(*[_dtype(g) for g in acc]))
        return eager_norms(acc, *_exact_range(wide, elements))
    on_host = _eager_on_host(acc[0])
    if not on_host and backend() == "tensorflow":
        wide = _tf_wide_norm(grads, acc)
        if wide is not None:
            return wide
    elif on_host:
        sq = _math.per_sample_sq_sum(acc, xp)
        values = _host_values(sq)
        if values is not None:
            elements = sum(int(np.prod(_static(g.shape)[1:])) for g in acc)
            lo, hi = _exact_range(_dtype(sq), elements)
            if values.size == 0 or (lo <= values.min() and values.max() <= hi):
                return ops.sqrt(sq)
    return _math.per_sample_norm(acc, xp)


def _accurate(grads: Any) -> list[Any]:
    """The gradients in ≥ float32 (float16 and bfloat16 cast to float32)."""
    return [ops.cast(g, "float32") if _dtype(g) in ("float16", "bfloat16") else g for g in grads]


def sq_sums_from_gradients(grads: Any) -> Any:
    """Per-sample sums of squares over every non-batch element of every part, in ≥ float32:
    the values of a shape with ``of_squares`` (R1, R2, 0-GP, Max-GP; see
    :func:`gpreg._math.squared_of_squares`). A square and a sum per part, as in a
    hand-written R1; no root, so no host read, range check or scaling on any backend."""
    return _math.per_sample_sq_sum(_accurate(grads), xp)


def _tf_wide_norm(grads: Any, acc: list[Any]) -> Any:
    """On TensorFlow where the sum of squares cannot be read for free (a ``tf.function``, a
    GPU), the exact norm of float32 (or float16/bfloat16) gradients in a third of the scaled
    norm's ops: the squares summed in float64, where no float32 square underflows or
    overflows (float32's smallest subnormal squares to 2e-90, its largest to 1e77), and the
    root rounded to float32. The root is taken of ``s + 1e-300``: for every nonzero ``s``
    (≥ 2e-90) that is ``s`` itself in float64, and at ``s = 0`` it gives the value 0 (1e-150
    rounds to 0 in float32) and a finite derivative (times the zero gradient: 0), the NaN
    safety of :func:`gpreg._math.safe_norm` without its two selects. ``None`` for float64
    gradients and on TPUs (no float64 there): the scaled norm."""
    import tensorflow as tf

    if not all(g.dtype in (tf.float32, tf.float16, tf.bfloat16) for g in grads) or _on_tpu():
        return None
    wide = [tf.cast(g, tf.float64) for g in acc]
    return tf.cast(tf.sqrt(_math.per_sample_sq_sum(wide, xp) + 1e-300), tf.float32)


_tpu: list[bool] = []


def _on_tpu() -> bool:
    """Whether TensorFlow has TPUs configured (read once)."""
    if not _tpu:
        import tensorflow as tf

        _tpu.append(bool(tf.config.list_logical_devices("TPU")))
    return _tpu[0]


def _exact_range(dtype: str, elements: int) -> tuple[float, float]:
    """Sums of squares ``s`` of ``elements`` entries for which the plain sum is exact and
    ``sqrt`` has a finite derivative: no square overflows (s ≤ max/256), the squares that
    underflow into subnormals add up to less than eps/4 of s (s ≥ 2·elements·tiny), and so
    s > 0."""
    info = np.finfo(dtype)
    return 2.0 * max(elements, 1) * float(info.tiny), float(info.max) / 256.0


def _eager_on_host(x: Any) -> bool:
    """Whether ``x`` is computed eagerly on the CPU by TensorFlow, where reading it costs no
    device sync (TensorFlow's eager CPU ops run synchronously; JAX dispatches
    asynchronously, so :func:`norms_from_gradients` reads nothing there)."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and "CPU" in getattr(x, "device", "")
    return False


def _host_values(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array, where that is a read of host memory; ``None`` otherwise."""
    try:
        return np.asarray(x)
    except Exception:  # a symbolic tensor
        return None


def _mixed_policy() -> bool:
    return keras.config.dtype_policy().name.startswith("mixed_")


def _match_fake(where: str, r: tuple[Any, ...], f: tuple[Any, ...]) -> tuple[Any, ...]:
    """``fake`` checked against ``real``: same shapes and dtypes. Under a mixed dtype policy
    (``mixed_float16``: float32 data, a float16 generator) ``fake`` is cast to ``real``'s
    dtype, which is what the critic's layers then cast to their compute dtype anyway. A pair
    of concrete signatures that passed with nothing cast is not checked again."""
    key = (where, "real_fake", tuple(map(_signature, r)), tuple(map(_signature, f)))
    if None in key[2] or None in key[3]:
        key = None
    elif key in _checked_parts:
        return f
    v.check_same_shapes(where, [_static(t.shape) for t in r], [_static(t.shape) for t in f])
    out = []
    for i, (rt, ft) in enumerate(zip(r, f)):
        if _dtype(rt) != _dtype(ft) and _mixed_policy():
            ft = ops.cast(ft, _dtype(rt))
        v.check_same_dtype(where, [(f"real[{i}]", _dtype(rt)), (f"fake[{i}]", _dtype(ft))],
                           cast="keras.ops.cast(fake, real.dtype)")
        out.append(ft)
    if key is not None and all(a is b for a, b in zip(out, f)):  # nothing was cast
        _remember(key)
    return tuple(out)


def _elements(parts_: tuple[Any, ...]) -> int | None:
    """The fewest elements of any part, when every shape is static."""
    sizes = []
    for t in parts_:
        shape = _static(t.shape)
        if None in shape:
            return None
        sizes.append(int(np.prod(shape)))
    return min(sizes)


def evaluation_points(spec: PenaltySpec, where: str, *, real: Any, fake: Any, alpha: Any,
                      noise: Any, c: float, seed: Any, points: str | None = None,
                      ddof: int = 0, perturbation: str = "uniform") -> list[tuple[Any, ...]]:
    """The sets of points at which ``spec`` evaluates the critic (one, or the real and the
    fake samples for ``points="real_fake"``)."""
    kind = choose_points(where, spec, points)
    if kind == "real":
        return [parts(where, "real", real)]
    if kind == "fake":
        return [parts(where, "fake", fake)]
    r = parts(where, "real", real)
    if kind == "perturbed_real":
        gaussian = perturbation == "gaussian"
        if gaussian and alpha is not None:
            raise v.unused_alpha(where, "perturbation='gaussian'")
        v.check_ddof(where, ddof, _elements(r))
        a = None if gaussian else alpha_values(where, alpha, r[0], seed)
        u = noise_values(where, noise, r, seed, gaussian)
        stats = xp if gaussian else _statistics(where, "DRAGAN's sigma")
        return [_points.dragan_points(r, a, u, c, stats, ddof=ddof, perturbation=perturbation)]
    f = _match_fake(where, r, parts(where, "fake", fake))
    if kind == "real_fake":
        if alpha is not None:
            raise v.unused_alpha(where, "points='real_fake'")
        return [r, f]
    a = alpha_values(where, alpha, r[0], seed)
    return [_points.interpolates(r, f, a, xp)]


class _ReplicaStatistics:
    """``keras.ops`` (the ``_ops`` namespace) whose ``std`` is taken over the samples of
    every replica of a ``tf.distribute`` strategy: the one-device statistic."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(xp, name)

    def std(self, x: Any, ddof: int = 0) -> Any:
        from gpreg_keras._tensorflow import replica_std

        return replica_std(self._ctx, x, ddof)


_shard_warned: set[str] = set()


def _warn_per_shard(where: str, what: str) -> None:
    if _named_axes() and where not in _shard_warned:
        _shard_warned.add(where)
        warnings.warn(v.per_shard_message(where, what), RuntimeWarning,
                      stacklevel=user_stacklevel())


def _statistics(where: str, what: str) -> Any:
    """The namespace for a statistic over the batch: global over the replicas of a
    ``tf.distribute`` strategy; under JAX named axes (per shard) with a warning."""
    if backend() == "tensorflow":
        from gpreg_keras._tensorflow import replica_context

        ctx = replica_context()
        if ctx is not None:
            return _ReplicaStatistics(ctx)
    _warn_per_shard(where, what)
    return xp


def _given_as(x: Any, items: tuple[Any, ...]) -> Any:
    """``items`` in the structure ``x`` was given in (one tensor, or a tuple of parts)."""
    return tuple(items) if isinstance(x, (tuple, list)) else items[0]


def _numpy_to_tensor(x: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_numpy_to_tensor(p) for p in x)
    return ops.convert_to_tensor(x) if isinstance(x, np.ndarray) else x


def _torch_signature(x: Any) -> Any:
    """What the Keras checks of a plain torch tensor depend on (``None`` for anything else:
    NumPy arrays, tuples of parts, variables, sparse tensors, which are checked at every
    call)."""
    torch = sys.modules["torch"]  # the backend: imported
    if type(x) is torch.Tensor and x.layout is torch.strided:
        return x.shape, x.dtype, x.device
    return None


# (where, points, real's and fake's signatures) whose Keras checks passed with nothing to
# convert or cast
_torch_checked: set[tuple[Any, ...]] = set()
_TORCH_ROLES = {"interpolates": (2, 3), "real": (2,), "fake": (3,)}


def _torch_inputs(spec: PenaltySpec, where: str, real: Any, fake: Any, alpha: Any,
                  noise: Any) -> tuple[Any, Any, Any, Any]:
    """On Keras's torch backend: NumPy inputs as tensors (as on TensorFlow and JAX), the
    Keras checks and messages, and ``fake`` matched to ``real`` as in
    :func:`evaluation_points`. Plain torch tensors of a signature that passed the checks
    with nothing to convert or cast are passed on as they are (the checks depend on nothing
    else; gpreg_torch detaches them)."""
    roles = _TORCH_ROLES.get(spec.points)
    key = None
    if roles is not None:
        key = (where, spec.points, _torch_signature(real), _torch_signature(fake))
        if not all(map(key.__getitem__, roles)):  # (a signature is a tuple of three, or None)
            key = None
        elif key in _torch_checked:  # (alpha and noise are converted at every call)
            return real, fake, _numpy_to_tensor(alpha), _numpy_to_tensor(noise)
    checked = _torch_checks(spec, where, real, fake, alpha, noise)
    if key is not None and (spec.points != "interpolates" or real.dtype == fake.dtype):
        if len(_torch_checked) >= 1024:
            _torch_checked.clear()
        _torch_checked.add(key)
    return checked


def _torch_checks(spec: PenaltySpec, where: str, real: Any, fake: Any, alpha: Any,
                  noise: Any) -> tuple[Any, Any, Any, Any]:
    if real is not None and spec.points != "fake":
        r = parts(where, "real", real)
        if spec.points == "interpolates":
            fake = _given_as(fake, _match_fake(where, r, parts(where, "fake", fake)))
        real = _given_as(real, r)
    elif fake is not None:
        fake = _given_as(fake, parts(where, "fake", fake))
    return real, fake, _numpy_to_tensor(alpha), _numpy_to_tensor(noise)


def _torch_randomness(spec: PenaltySpec, where: str, real: Any, alpha: Any, noise: Any,
                      seed: Any, points: str | None, perturbation: str) -> tuple[Any, Any]:
    """On Keras's torch backend, draw with keras.random so ``seed=`` has one meaning."""
    kind = choose_points(where, spec, points)
    if kind not in ("interpolates", "perturbed_real"):
        return alpha, noise
    # real as _torch_inputs passed it on: checked parts, or a tensor of a checked signature
    r = parts(where, "real", real) if real is None else real if isinstance(real, tuple) else (
        (real,))
    gaussian = kind == "perturbed_real" and perturbation == "gaussian"
    if alpha is None and not gaussian:
        alpha = alpha_values(where, None, r[0], seed)
    if kind == "perturbed_real" and noise is None:
        noise = noise_values(where, None, r, seed, gaussian)
        noise = noise[0] if len(noise) == 1 else noise
    return alpha, noise


_torch_core: Any = None  # gpreg_torch._core, on the torch backend once a penalty ran


def _import_torch_core() -> Any:
    global _torch_core
    from gpreg_torch import _core as torch_core

    _torch_core = torch_core
    return torch_core


def run(spec: PenaltySpec | str, critic: Callable[..., Any], *, real: Any = None,
        fake: Any = None, weight: float | None = None, target: float | None = None,
        ratio: bool = False, c: float = 0.5, alpha: Any = None, noise: Any = None,
        seed: Any = None, args: Any = (), kwargs: Any = None, output: Any = None,
        reduction: str | None = None, create_graph: bool = True,
        scaler: Any = None, global_batch_size: int | None = None,
        check_finite: bool = False, points: str | None = None,
        shape: str | Shape | None = None, shape_params: dict[str, Any] | None = None,
        ddof: int = 0, perturbation: str = "uniform") -> Any:
    """Compute the penalty that ``spec`` describes on the active Keras backend (the options
    as in :func:`gpreg_torch._core.run`)."""
    given = spec  # (a name: gpreg_torch finds its plans by it, without a lookup)
    if isinstance(spec, str):
        spec = get_spec(spec)
    where = f"gpreg_keras.{spec.name}"
    data = fake if spec.points == "fake" else real
    call = call_options(where, args, kwargs, output, data)
    fn = critic_fn(where, critic, call, _n_parts(data))
    _warn_batchnorm(where, critic, call)
    if backend() == "torch":
        torch_core = _torch_core or _import_torch_core()
        if spec.points == "perturbed_real":
            v.check_choice(where, "perturbation", perturbation, _points.PERTURBATIONS)
        real, fake, alpha, noise = _torch_inputs(spec, where, real, fake, alpha, noise)
        alpha, noise = _torch_randomness(spec, where, real, alpha, noise, seed, points,
                                         perturbation)
        return torch_core.run(given, fn, real=real, fake=fake, weight=weight, target=target,
                              ratio=ratio, c=c, alpha=alpha, noise=noise, output=call.output,
                              reduction=reduction, create_graph=create_graph,
                              package="gpreg_keras",
                              scaler=None if scaler is None else _TorchScalerView(where, scaler),
                              global_batch_size=global_batch_size, check_finite=check_finite,
                              points=points, shape=shape, shape_params=shape_params,
                              ddof=ddof, perturbation=perturbation)
    o = _options.penalty_options(where, spec, weight=weight, target=target, ratio=ratio,
                                 reduction=reduction, global_batch_size=global_batch_size,
                                 shape=shape, shape_params=shape_params)
    if spec.points == "perturbed_real":
        c = v.check_scalar(where, "c", c)
        v.check_choice(where, "perturbation", perturbation, _points.PERTURBATIONS)
    sets = evaluation_points(spec, where, real=real, fake=fake, alpha=alpha, noise=noise, c=c,
                             seed=seed, points=points, ddof=ddof, perturbation=perturbation)
    return _penalty(where, fn, sets, call, create_graph, scaler, check_finite, o.shape,
                    weight=o.weight, target=o.target, ratio=bool(ratio), reduction=o.reduction,
                    global_batch_size=o.global_batch_size)


def _penalty(where: str, fn: Callable[..., Any], sets: list[tuple[Any, ...]], call: Call,
             create_graph: bool, scaler: Any, check_finite: bool, shape: Shape, *,
             weight: float, target: float, ratio: bool, reduction: str,
             global_batch_size: int | None = None) -> Any:
    """Input gradient → norms → shape → reduction, with the opt-in finite checks; the
    per-sample terms of two sets of points (real and fake) are averaged. Under a
    ``tf.distribute`` strategy the maximum is taken over every replica's samples."""
    per_sample = []
    for pts in sets:
        if check_finite:
            for p in pts:
                _finite(where, "an evaluation point (from real/fake)", p)
        grads, out = input_gradients(where, fn, pts, create_graph, scaler, call.output)
        squares = shape.of_squares is not None  # no norm needed (R1, R2, 0-GP, Max-GP)
        norms = None if squares else norms_from_gradients(grads)
        if check_finite:
            _finite(where, "the critic's output", out)
            n = norms_from_gradients([xp.stop_gradient(g) for g in grads]) if squares else norms
            _finite(where, "the input gradient", ops.reshape(n, (-1, 1)))
        if squares:
            per_sample.append(shape.from_squares(sq_sums_from_gradients(grads), target=target,
                                                 ratio=ratio, xp=xp))
        else:
            per_sample.append(shape(norms, target=target, ratio=ratio, xp=xp))
    values = (per_sample[0] if len(per_sample) == 1 else _math.real_fake_mean(*per_sample)) * weight
    if reduction == "max":
        stats = _statistics(where, "the maximum over the batch")
        if isinstance(stats, _ReplicaStatistics):
            from gpreg_keras._tensorflow import replica_max

            return replica_max(stats._ctx, values)
    return _math.reduce(values, reduction, xp, count=global_batch_size)


def generic(where: str, critic: Callable[..., Any], points: Any, *, shape: str | Shape,
            weight: float, target: float, ratio: bool, reduction: str,
            create_graph: bool, args: Any = (), kwargs: Any = None, output: Any = None,
            scaler: Any = None, global_batch_size: int | None = None,
            check_finite: bool = False) -> Any:
    """Body of ``gradient_penalty``: a shape at user-chosen points."""
    call = call_options(where, args, kwargs, output, points)
    fn = critic_fn(where, critic, call, _n_parts(points))
    _warn_batchnorm(where, critic, call)
    if backend() == "torch":
        from gpreg_torch import _core as torch_core

        points = _given_as(points, parts(where, "points", points))
        return torch_core.generic(fn, points, shape=shape, weight=weight, target=target,
                                  ratio=ratio, reduction=reduction, create_graph=create_graph,
                                  output=call.output, package="gpreg_keras",
                                  global_batch_size=global_batch_size,
                                  check_finite=check_finite,
                                  scaler=None if scaler is None else _TorchScalerView(where,
                                                                                      scaler))
    o = _options.generic_options(where, shape=shape, weight=weight, target=target, ratio=ratio,
                                 reduction=reduction, global_batch_size=global_batch_size)
    pts = parts(where, "points", points)
    return _penalty(where, fn, [pts], call, create_graph, scaler, check_finite, o.shape,
                    weight=o.weight, target=o.target, ratio=bool(ratio), reduction=o.reduction,
                    global_batch_size=o.global_batch_size)


def grad_norm(where: str, critic: Callable[..., Any], points: Any, create_graph: bool, *,
              args: Any = (), kwargs: Any = None, output: Any = None) -> Any:
    call = call_options(where, args, kwargs, output, points)
    fn = critic_fn(where, critic, call, _n_parts(points))
    if backend() == "torch":
        from gpreg_torch import _core as torch_core

        points = _given_as(points, parts(where, "points", points))
        return torch_core.grad_norm(fn, points, create_graph=create_graph, where=where,
                                    output=call.output)
    grads, _ = input_gradients(where, fn, parts(where, "points", points), create_graph,
                               output=call.output)
    return norms_from_gradients(grads)


if backend() == "tensorflow":
    # gpreg's control flow is static Python: AutoGraph leaves it alone, while the user's
    # critic is converted as the caller's tf.function has it (gpreg_keras._tensorflow.entry).
    from gpreg_keras._tensorflow import entry as _entry

    run = _entry(run)
    generic = _entry(generic)
    grad_norm = _entry(grad_norm)
elif backend() == "torch":
    # Inside a compiled step (Keras's compile(jit_compile=True) runs train_step under
    # torch.compile) the penalty runs eagerly: AOTAutograd has no double backward (it failed
    # with "a leaf Variable that requires grad is being used in an in-place operation"); the
    # rest of the step stays compiled.
    import torch as _torch

    run = _torch.compiler.disable(run)
    generic = _torch.compiler.disable(generic)
    grad_norm = _torch.compiler.disable(grad_norm)
