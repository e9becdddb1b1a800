"""``check_critic`` for Keras 3: gpreg's parameter gradients against finite differences.

The check, the comparison and the report are the core's (:mod:`gpreg._check`). Here the
critic's penalties are evaluated at chosen parameter values without ever running or changing
the user's model: a Keras 3 model or layer (or a :func:`stateless_critic`) goes through
``stateless_call`` with the values as arguments, on every backend (rebuilt from its config
first when the check runs in another dtype: float64 on TensorFlow); a tf-keras (Keras 2) model
is rebuilt, and the variables of the copy are assigned.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from gpreg import _call as _callmod
from gpreg import _check as core
from gpreg import _validation as v
from gpreg._call import Call
from gpreg._check import CheckReport, Points
from gpreg._specs import PenaltySpec
from gpreg_keras._calling import arrange
from gpreg_keras._core import _check_seed, call_options
from gpreg_keras._stateless import stateless_critic

WHERE = "gpreg_keras.check_critic"
_FLOATS = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def _backend() -> str:
    return keras.backend.backend()


def _np(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _tensor(x: Any, dtype: str) -> Any:
    return ops.convert_to_tensor(np.asarray(x, dtype=dtype), dtype=dtype)


def _seed(seed: Any) -> int:
    """An int seed for the check's NumPy draws (a SeedGenerator or a JAX key draws one)."""
    _check_seed(WHERE, seed)
    if seed is None or isinstance(seed, (int, np.integer)):
        return int(seed or 0) & 0x7FFFFFFF
    return int(_np(keras.random.randint((), 0, 2**31 - 1, seed=seed)))


def _parts(role: str, x: Any) -> tuple[np.ndarray, ...]:
    out = []
    for p in tuple(x) if isinstance(x, (tuple, list)) else (x,):
        if not (isinstance(p, np.ndarray) or ops.is_tensor(p)):
            raise TypeError(f"{WHERE}: {role} must be a tensor, a NumPy array or a tuple of them "
                            f"(one per critic input); got {type(p).__name__}.")
        a = _np(p)
        v.check_floating(WHERE, role, str(a.dtype), a.dtype.kind == "f")
        out.append(a.astype("float64"))
    v.check_parts(WHERE, role, [tuple(a.shape) for a in out])
    return tuple(out)


def _retype(config: Any, dtype: str) -> Any:
    """A model config with every floating dtype (policies included) replaced by ``dtype``."""
    if isinstance(config, list):
        return [_retype(c, dtype) for c in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, val in config.items():
        if key != "dtype":
            val = _retype(val, dtype)
        elif isinstance(val, str) and val in _FLOATS:
            val = dtype
        elif isinstance(val, dict) and isinstance(val.get("config"), dict) and (
                val["config"].get("name") in _FLOATS):
            val = {**val, "config": {**val["config"], "name": dtype}}
        out[key] = val
    return out


def _is_keras2(obj: Any) -> bool:
    """A tf-keras (Keras 2) model or layer: configurable, with weights, not a Keras 3 layer."""
    return (not isinstance(obj, keras.Layer) and callable(obj)
            and all(hasattr(obj, a) for a in ("get_config", "from_config", "get_weights",
                                              "set_weights", "trainable_variables")))


def _rebuild(model: Any, dtype: str, call: Call, parts: Sequence[Any]) -> Any:
    """``model`` rebuilt from its config in ``dtype`` with its weights; raises if impossible.
    (New initializers draw their seeds from Python's ``random``: its state is restored.)"""
    state = random.getstate()
    try:
        twin = type(model).from_config(_retype(model.get_config(), dtype))
        weights = model.get_weights()
        if len(twin.get_weights()) != len(weights):  # not built yet (no Input): call it once
            twin(*arrange(twin, tuple(parts), call.args), **call.kwargs)
        twin.set_weights([w.astype(dtype) if w.dtype.kind == "f" else w for w in weights])
    finally:
        random.setstate(state)
    if {keras.backend.standardize_dtype(w.dtype) for w in twin.trainable_variables} - {dtype}:
        raise TypeError(f"the rebuilt model keeps variables that are not {dtype} (inner layers "
                        f"made without the model's dtype policy)")
    return twin


def _name(var: Any) -> str:
    name = getattr(var, "path", None) or var.name
    return name[:-2] if name.endswith(":0") else name


def _model_dtype(model: Any) -> str:
    """The one dtype the model stores and computes in, or ``"mixed"``."""
    dts = {keras.backend.standardize_dtype(w.dtype) for w in model.trainable_variables}
    if getattr(model, "compute_dtype", None) is not None:
        dts.add(keras.backend.standardize_dtype(model.compute_dtype))
    return dts.pop() if len(dts) == 1 else "mixed"


def _source(critic: Any) -> tuple[Any, list[Any] | None, list[Any] | None, bool | None]:
    """``(model, trainable values, non-trainable values, training)``: the values are
    ``None`` for a tf-keras model (checked on a rebuilt copy)."""
    if not callable(critic):
        raise TypeError(f"{WHERE}: critic must be callable (a Keras model); got "
                        f"{type(critic).__name__}.")
    parts = getattr(critic, "_gpreg_stateless", None)
    if parts is not None:  # gp.stateless_critic(model, ...)
        return parts[0], list(parts[1]), list(parts[2]), parts[3]
    if isinstance(critic, keras.Layer):
        return (critic, [x.value for x in critic.trainable_variables],
                [x.value for x in critic.non_trainable_variables], None)
    if _is_keras2(critic) and _backend() == "tensorflow":
        return critic, None, None, None
    raise v.check_needs_model(WHERE, critic, "a Keras model or layer, gp.stateless_critic("
                                             "model, ...), or a tf-keras model on TensorFlow")


class _Target:
    """The penalties of the critic in one dtype as functions of its trainable values."""

    def __init__(self, source: Any, dtype: str, training: bool | None,
                 specs: list[PenaltySpec], pts: Points, call: Call) -> None:
        model, tv, ntv, train = source
        self.train = train if training is None else bool(training)
        self.keras2, self.notes, self.unchecked = tv is None, [], []
        names = [_name(x) for x in model.trainable_variables]
        if self.keras2 or _model_dtype(model) != dtype:
            try:
                model = _rebuild(model, dtype, self._cast(call, dtype),
                                 [_tensor(a, dtype) for a in pts.real])
                tv, ntv = model.trainable_variables, model.non_trainable_variables
            except Exception as exc:
                if self.keras2:
                    raise
                own = _model_dtype(model)
                self.notes.append(
                    f"could not rebuild the critic in {dtype} from its config "
                    f"({v.explain(exc)}): checked it in its own dtype through stateless_call")
                dtype = own if own in ("float32", "float64") else "float32"
        self.model, self.dtype, self.specs = model, dtype, specs
        self.pts, self.call = pts.map(lambda a: _tensor(a, dtype)), self._cast(call, dtype)
        self.tv = [_tensor(_np(t), dtype) for t in tv]
        self.ntv = [_tensor(a, dtype) if a.dtype.kind == "f" else ops.convert_to_tensor(a)
                    for a in map(_np, ntv)]
        self.groups = [(n, _np(t)) for n, t in zip(names, self.tv)]
        if self.keras2:
            self.vars, self.state = model.trainable_variables, model.non_trainable_variables
            if training is not None:
                self.call = Call(self.call.args, {**self.call.kwargs, "training": self.train},
                                 self.call.output)
            kinds = {type(m).__name__ for m in getattr(model, "submodules", ())}
            if dtype == "float64" and kinds & {"LayerNormalization", "BatchNormalization"}:
                self.notes.append(
                    "tf-keras's LayerNormalization and BatchNormalization run a fused kernel "
                    "(exact) in float32 and tf.nn.moments otherwise: check with "
                    "dtype='float32' to test what float32 training runs")
        if dtype != "float64" and _backend() != "tensorflow":
            self.notes.append(f"Keras on {_backend()} computes some float64 operations in "
                              f"float32, so the check ran in float32 (looser eps and rtol); "
                              f"run it on the TensorFlow backend for a float64 check")
        self._all = self._compiled()

    @staticmethod
    def _cast(call: Call, dtype: str) -> Call:
        def cast(x: Any) -> Any:
            if not (isinstance(x, np.ndarray) or ops.is_tensor(x)) or _np(x).dtype.kind != "f":
                return x
            return _tensor(_np(x), dtype)

        return call.map(cast)

    def _critic(self, tv: list[Any]) -> Any:
        if not self.keras2:
            return stateless_critic(self.model, tv, self.ntv, training=self.train)
        for var, val in zip([*self.vars, *self.state], [*tv, *self.ntv]):
            if val is not var:  # the copy's own variables are assigned, never the user's
                var.assign(val)
        return self.model

    def _penalty(self, spec: PenaltySpec, critic: Any, create_graph: bool) -> Any:
        from gpreg_keras._penalties import get_penalty

        data, kw = self.pts.penalty_args(spec)
        c = self.call
        return get_penalty(spec.name)(critic, *data, create_graph=create_graph, args=c.args,
                                      kwargs=c.kwargs, output=c.output, **kw)

    def _compiled(self) -> Any:
        def all_values(tv: list[Any]) -> list[Any]:
            critic = self._critic(tv)
            return [self._penalty(s, critic, False) for s in self.specs]

        if _backend() == "jax":
            import jax

            return jax.jit(all_values)
        if _backend() == "tensorflow":
            import tensorflow as tf

            return tf.function(all_values, autograph=False, reduce_retracing=True)
        return all_values

    def _one(self, spec: PenaltySpec, tv: list[Any]) -> float:
        try:
            return float(_np(self._penalty(spec, self._critic(tv), False)))
        except Exception:
            return float("nan")

    def values(self, k: int | None, theta: np.ndarray | None) -> np.ndarray:
        tv = list(self.tv)
        if k is not None:
            tv[k] = _tensor(theta, self.dtype)
        if self._all is not None:
            try:
                return np.asarray([float(_np(x)) for x in self._all(tv)], dtype=np.float64)
            except Exception:
                self._all = None  # not traceable: evaluate eagerly, penalty by penalty
        return np.asarray([self._one(s, tv) for s in self.specs], dtype=np.float64)

    def gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        if _backend() == "jax":
            try:
                return self._jax_gradients()
            except Exception:
                pass  # one penalty fails: find which, penalty by penalty
        base: list[float] = []
        grads: list[list[np.ndarray] | str] = []
        for spec in self.specs:
            try:
                value, g = self._grad(spec)
            except Exception as exc:
                value, g = self._one(spec, self.tv), v.explain(exc)
            base.append(value)
            grads.append(g)
        return np.asarray(base, dtype=np.float64), grads

    def _jax_gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        """Every penalty's value and gradient from one compiled Jacobian."""
        import jax
        import jax.numpy as jnp

        def stacked(tv: list[Any]) -> Any:
            critic = self._critic(tv)
            return jnp.stack([self._penalty(s, critic, True) for s in self.specs])

        values, jac = jax.jit(lambda tv: (stacked(tv), jax.jacrev(stacked)(tv)))(self.tv)
        return np.asarray(values, dtype=np.float64), [
            [np.asarray(j[p], dtype=np.float64) for j in jac] for p in range(len(self.specs))]

    def _grad(self, spec: PenaltySpec) -> tuple[float, list[np.ndarray]]:
        def f(tv: list[Any]) -> Any:
            return self._penalty(spec, self._critic(tv), True)

        if _backend() == "jax":
            import jax

            value, g = jax.value_and_grad(f)(self.tv)
            return float(value), [_np(x) for x in g]
        if _backend() == "tensorflow":
            import tensorflow as tf

            src = self.vars if self.keras2 else self.tv
            self._critic(self.tv)  # a tf-keras copy: back to the base values
            with tf.GradientTape() as tape:
                tape.watch(src)
                value = f(src)
            g = tape.gradient(value, src)
            return float(value), [np.zeros(tuple(t.shape)) if x is None else _np(x)
                                  for x, t in zip(g, src)]
        from gpreg_torch._check import leaf_gradients

        tv = [t.detach().clone().requires_grad_(True) for t in self.tv]
        value = f(tv)
        return float(value.detach()), leaf_gradients(value, tv)

    def outputs(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        critic, c = self._critic(self.tv), self.call
        pts = tuple(_tensor(p, self.dtype) for p in parts)
        inner = getattr(critic, "_gpreg_call", None)  # stateless_critic: points and args apart
        raw = inner(pts, c.args, c.kwargs) if inner is not None else critic(
            *arrange(critic, pts, c.args), **c.kwargs)
        out = raw if c.output is None and ops.is_tensor(raw) else _callmod.pick_output(
            WHERE, raw, c.output, ops.is_tensor)
        a = _np(out).astype(np.float64)
        return a.reshape(a.shape[0], -1).sum(axis=1)


def check(
    critic: Any,
    real: Any,
    fake: Any = None,
    *,
    penalties: str | Sequence[str] | None = None,
    directions: int = 3,
    eps: float | None = None,
    rtol: float | None = None,
    dtype: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Any = None,
    training: bool | None = None,
    seed: Any = None,
) -> CheckReport:
    """The body of :func:`gpreg_keras.check_critic` (its docstring is the specification)."""
    source = _source(critic)
    backend = _backend()
    core.check_dtype(WHERE, dtype)
    if dtype == "float64" and backend != "tensorflow":
        raise ValueError(f"{WHERE}: Keras on {backend} computes some float64 operations in "
                         f"float32, so a float64 check is not possible there; use dtype=None "
                         f"or 'float32', or the TensorFlow backend.")
    real_np = _parts("real", real)
    fake_np = None if fake is None else _parts("fake", fake)
    call = call_options(WHERE, args, kwargs, output, real_np)
    dtypes = (dtype,) if dtype else ("float64", "float32") if backend == "tensorflow" else (
        "float32",)

    def make(dt: str, specs: list[PenaltySpec], pts: Points) -> _Target:
        return _Target(source, dt, training, specs, pts, call)

    with warnings.catch_warnings():
        # gpreg's BatchNormWarning would repeat at every evaluation; the report says it once
        warnings.simplefilter("ignore", v.BatchNormWarning)
        return core.run(WHERE, f"keras ({backend})", make, dtypes, real_np, fake_np,
                        penalties=penalties, directions=directions, eps=eps, rtol=rtol,
                        seed=_seed(seed))
