"""Keras 3 adapter body: randomness, points, checks and the penalty, per backend.

The only backend-specific piece is the input gradient (``_tensorflow.py``, ``_jax.py``); on
Keras's torch backend the whole computation is ``gpreg_torch``'s, with the random draws made
here by ``keras.random`` so that ``seed=`` means the same on every backend.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from gpreg import _call, _math, _points
from gpreg import _validation as v
from gpreg._call import PLAIN, Call
from gpreg._specs import (
    PenaltySpec,
    Shape,
    choose_points,
    get_spec,
    resolve_shape,
    resolve_spec_shape,
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
    return ops.stop_gradient(x) if ops.is_tensor(x) else x


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
    stateless = getattr(critic, "_gpreg_call", None)
    if stateless is not None:  # gp.stateless_critic(...): it knows the model's convention
        return lambda *pts: stateless(pts, call.args, call.kwargs)
    if isinstance(critic, keras.Layer):
        if backend() == "jax":
            from gpreg_keras._jax import keras_model_error

            raise keras_model_error(where)
        if n_parts == 1 and call.plain and backend() == "tensorflow":
            return critic
        # (on torch, a Keras model is a torch module too: wrapped, gpreg_torch does not take
        # it for a torch critic to inspect)
        return lambda *pts: critic(*arrange(critic, pts, call.args), **call.kwargs)
    if call.plain:
        return critic
    return lambda *pts: critic(*pts, *call.args, **call.kwargs)


def _static(shape: Any) -> tuple[Any, ...]:
    return tuple(None if s is None else int(s) for s in shape)


def _dtype(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def parts(where: str, role: str, x: Any) -> tuple[Any, ...]:
    """Normalise ``x`` (tensor or tuple/list of tensors) to a tuple of stopped tensors."""
    items = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    out = []
    for p in items:
        if isinstance(p, np.ndarray):
            if p.dtype.kind not in "f":
                v.check_floating(where, role, str(p.dtype), False)
            p = ops.convert_to_tensor(p)
        elif not ops.is_tensor(p):
            kind = f"{type(p).__module__.split('.')[0]}.{type(p).__name__}"
            if kind.startswith("jax"):  # a Flax or pure-JAX critic's data
                raise TypeError(
                    f"{where}: {role} is a JAX array ({kind}), but Keras runs its {backend()} "
                    f"backend. Flax and pure-JAX critics need Keras's JAX backend: set "
                    f"KERAS_BACKEND=jax before keras is first imported."
                )
            raise TypeError(
                f"{where}: {role} must be a tensor of the Keras backend ({backend()}) or a "
                f"tuple of them (one per critic input); got {kind}. Convert with "
                f"keras.ops.convert_to_tensor(x, dtype='float32')."
            )
        dt = _dtype(p)
        v.check_floating(where, role, dt, keras.backend.is_float_dtype(dt))
        out.append(ops.stop_gradient(p))
    shapes = [_static(p.shape) for p in out]
    if all(s and s[0] is not None for s in shapes) or any(len(s) == 0 for s in shapes):
        v.check_parts(where, role, shapes)
    return tuple(out)


def _batch(x: Any) -> Any:
    b = x.shape[0]
    return int(b) if b is not None else ops.shape(x)[0]


def _is_traced(x: Any) -> bool:
    if backend() != "jax":
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


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


def _uniform(where: str, shape: Any, dtype: str, seed: Any, k: int, like: Any,
             normal: bool = False) -> Any:
    """A U[0, 1) draw (N(0, 1) with ``normal``): the ``k``-th stream of ``seed``."""
    _check_seed(where, seed)
    if seed is None and _is_traced(like):
        raise ValueError(
            f"{where}: inside jax.jit (or any JAX transformation) the random draws need a seed: "
            f"pass seed= (an int, a keras.random.SeedGenerator or a JAX key), or explicit "
            f"alpha= (and noise= for DRAGAN)."
        )
    draw_dtype = "float32" if dtype in ("float16", "bfloat16") else dtype
    draw = keras.random.normal if normal else keras.random.uniform
    return ops.cast(draw(shape, dtype=draw_dtype, seed=_seed_for(seed, k)), dtype)


def alpha_values(where: str, alpha: Any, like: Any, seed: Any) -> Any:
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
    return ops.reshape(ops.stop_gradient(ops.cast(alpha, dt)), (batch,))


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
    return tuple(ops.stop_gradient(ops.cast(n, _dtype(r))) for n, r in zip(items, real))


_warned: set[int] = set()


def _warn_batchnorm(where: str, critic: Any) -> None:
    """Warn once per Keras critic that holds BatchNormalization layers."""
    model = getattr(critic, "_gpreg_model", critic)
    if not isinstance(model, keras.Layer) or id(model) in _warned:
        return
    names = [lay.name for lay in model._flatten_layers(include_self=False)
             if isinstance(lay, keras.layers.BatchNormalization)]
    if names:
        _warned.add(id(model))
        warnings.warn(v.batchnorm_message(where, names) + " (Keras: applies when the critic "
                      "runs with training=True.)", v.BatchNormWarning, stacklevel=5)


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
    scale = scaler.dynamic_scale if scaler.built else scaler.initial_scale
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
    acc = []
    for g in grads:
        dt = _dtype(g)
        acc.append(ops.cast(g, "float32") if dt in ("float16", "bfloat16") else g)
    return _math.safe_norm(_math.per_sample_sq_sum(acc, xp), xp)


def _check_dtypes(where: str, r: tuple[Any, ...], f: tuple[Any, ...]) -> None:
    v.check_same_shapes(where, [_static(t.shape) for t in r], [_static(t.shape) for t in f])
    for i, (rt, ft) in enumerate(zip(r, f)):
        v.check_same_dtype(where, [(f"real[{i}]", _dtype(rt)), (f"fake[{i}]", _dtype(ft))])


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
        return [_points.dragan_points(r, a, u, c, xp, ddof=ddof, perturbation=perturbation)]
    f = parts(where, "fake", fake)
    _check_dtypes(where, r, f)
    if kind == "real_fake":
        if alpha is not None:
            raise v.unused_alpha(where, "points='real_fake'")
        return [r, f]
    a = alpha_values(where, alpha, r[0], seed)
    return [_points.interpolates(r, f, a, xp)]


def _torch_randomness(spec: PenaltySpec, where: str, real: Any, alpha: Any, noise: Any,
                      seed: Any, points: str | None, perturbation: str) -> tuple[Any, Any]:
    """On Keras's torch backend, draw with keras.random so ``seed=`` has one meaning."""
    kind = choose_points(where, spec, points)
    if kind not in ("interpolates", "perturbed_real"):
        return alpha, noise
    r = parts(where, "real", real)
    gaussian = kind == "perturbed_real" and perturbation == "gaussian"
    if alpha is None and not gaussian:
        alpha = alpha_values(where, None, r[0], seed)
    if kind == "perturbed_real" and noise is None:
        noise = noise_values(where, None, r, seed, gaussian)
        noise = noise[0] if len(noise) == 1 else noise
    return alpha, noise


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
    if isinstance(spec, str):
        spec = get_spec(spec)
    where = f"gpreg_keras.{spec.name}"
    data = fake if spec.points == "fake" else real
    call = call_options(where, args, kwargs, output, data)
    fn = critic_fn(where, critic, call, _n_parts(data))
    _warn_batchnorm(where, critic)
    if backend() == "torch":
        from gpreg_torch import _core as torch_core

        if spec.points == "perturbed_real":
            v.check_choice(where, "perturbation", perturbation, _points.PERTURBATIONS)
        alpha, noise = _torch_randomness(spec, where, real, alpha, noise, seed, points,
                                         perturbation)
        return torch_core.run(spec, fn, real=real, fake=fake, weight=weight, target=target,
                              ratio=ratio, c=c, alpha=alpha, noise=noise, output=call.output,
                              reduction=reduction, create_graph=create_graph,
                              package="gpreg_keras",
                              scaler=None if scaler is None else _TorchScalerView(where, scaler),
                              global_batch_size=global_batch_size, check_finite=check_finite,
                              points=points, shape=shape, shape_params=shape_params,
                              ddof=ddof, perturbation=perturbation)
    shp = resolve_spec_shape(where, spec, shape, shape_params)
    w = v.check_scalar(where, spec.weight_name, spec.default_weight if weight is None else weight)
    t = spec.default_target if target is None else target
    t = v.check_target(where, t, bool(ratio)) if shp.uses_target else float(t)
    red = v.check_reduction(where, spec.default_reduction if reduction is None else reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    if spec.points == "perturbed_real":
        c = v.check_scalar(where, "c", c)
        v.check_choice(where, "perturbation", perturbation, _points.PERTURBATIONS)
    sets = evaluation_points(spec, where, real=real, fake=fake, alpha=alpha, noise=noise, c=c,
                             seed=seed, points=points, ddof=ddof, perturbation=perturbation)
    return _penalty(where, fn, sets, call, create_graph, scaler, check_finite, shp,
                    weight=spec.weight_factor * w, target=t, ratio=bool(ratio), reduction=red,
                    global_batch_size=gbs)


def _penalty(where: str, fn: Callable[..., Any], sets: list[tuple[Any, ...]], call: Call,
             create_graph: bool, scaler: Any, check_finite: bool, shape: Shape, *,
             weight: float, target: float, ratio: bool, reduction: str,
             global_batch_size: int | None = None) -> Any:
    """Input gradient → norms → shape → reduction, with the opt-in finite checks; the
    per-sample terms of two sets of points (real and fake) are averaged."""
    per_sample = []
    for pts in sets:
        if check_finite:
            for p in pts:
                _finite(where, "an evaluation point (from real/fake)", p)
        grads, out = input_gradients(where, fn, pts, create_graph, scaler, call.output)
        norms = norms_from_gradients(grads)
        if check_finite:
            _finite(where, "the critic's output", out)
            _finite(where, "the input gradient", ops.reshape(norms, (-1, 1)))
        per_sample.append(shape(norms, target=target, ratio=ratio, xp=xp))
    values = per_sample[0] if len(per_sample) == 1 else _math.real_fake_mean(*per_sample)
    return _math.reduce(values * weight, reduction, xp, count=global_batch_size)


def generic(where: str, critic: Callable[..., Any], points: Any, *, shape: str | Shape,
            weight: float, target: float, ratio: bool, reduction: str,
            create_graph: bool, args: Any = (), kwargs: Any = None, output: Any = None,
            scaler: Any = None, global_batch_size: int | None = None,
            check_finite: bool = False) -> Any:
    """Body of ``gradient_penalty``: a shape at user-chosen points."""
    call = call_options(where, args, kwargs, output, points)
    fn = critic_fn(where, critic, call, _n_parts(points))
    _warn_batchnorm(where, critic)
    if backend() == "torch":
        from gpreg_torch import _core as torch_core

        return torch_core.generic(fn, points, shape=shape, weight=weight, target=target,
                                  ratio=ratio, reduction=reduction, create_graph=create_graph,
                                  output=call.output, package="gpreg_keras",
                                  global_batch_size=global_batch_size,
                                  check_finite=check_finite,
                                  scaler=None if scaler is None else _TorchScalerView(where,
                                                                                      scaler))
    w = v.check_scalar(where, "weight", weight)
    t = v.check_target(where, target, bool(ratio))
    red = v.check_reduction(where, reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    shp = resolve_shape(where, shape)
    pts = parts(where, "points", points)
    return _penalty(where, fn, [pts], call, create_graph, scaler, check_finite, shp, weight=w,
                    target=t, ratio=bool(ratio), reduction=red, global_batch_size=gbs)


def grad_norm(where: str, critic: Callable[..., Any], points: Any, create_graph: bool, *,
              args: Any = (), kwargs: Any = None, output: Any = None) -> Any:
    call = call_options(where, args, kwargs, output, points)
    fn = critic_fn(where, critic, call, _n_parts(points))
    if backend() == "torch":
        from gpreg_torch import _core as torch_core

        return torch_core.grad_norm(fn, points, create_graph=create_graph, where=where,
                                    output=call.output)
    grads, _ = input_gradients(where, fn, parts(where, "points", points), create_graph,
                               output=call.output)
    return norms_from_gradients(grads)


if backend() == "tensorflow":
    # gpreg's control flow is static Python: tell AutoGraph not to convert it. Converting
    # the ~40 functions behind a penalty made the first tf.function trace take 4–11 s.
    import tensorflow as _tf

    run = _tf.autograph.experimental.do_not_convert(run)
    generic = _tf.autograph.experimental.do_not_convert(generic)
    grad_norm = _tf.autograph.experimental.do_not_convert(grad_norm)
