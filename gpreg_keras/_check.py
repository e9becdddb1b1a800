"""``check_critic`` for Keras 3: gpreg's parameter gradients against finite differences.

The comparison, the report and its text are the core's (:mod:`gpreg._check`). Here the critic
is copied (a float64 rebuild on the TensorFlow backend) and the penalties are evaluated at
chosen parameter values:

- a Keras 3 model or layer goes through ``stateless_call`` with the parameter values as
  arguments, on every backend, so nothing is ever assigned to a variable;
- a tf-keras (Keras 2) model, or a plain function that calls models, is run on rebuilt copies
  whose variables are assigned (the user's own variables are never touched).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from gpreg import _call as _callmod
from gpreg import _check as core
from gpreg import _validation as v
from gpreg._call import Call
from gpreg._check import CheckReport
from gpreg._specs import PenaltySpec
from gpreg_keras._calling import arrange

WHERE = "gpreg_keras.check_critic"
_FLOATS = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def _backend() -> str:
    return keras.backend.backend()


def _np(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _tensor(x: Any, dtype: str) -> Any:
    return ops.convert_to_tensor(np.asarray(x, dtype=dtype), dtype=dtype)


def _seed(seed: Any) -> int:
    if seed is None:
        return 0
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed) & 0x7FFFFFFF
    if isinstance(seed, keras.random.SeedGenerator):
        return int(_np(keras.random.randint((), 0, 2**31 - 1, seed=seed)))
    if _backend() == "jax":
        import jax

        try:
            return int(jax.random.randint(seed, (), 0, 2**31 - 1))
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{WHERE}: seed must be None, an int, a keras.random.SeedGenerator or (on "
                    f"JAX) a key; got {type(seed).__name__}.")


def _parts(role: str, x: Any, dtype: str) -> tuple[Any, ...]:
    items = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    out = []
    for p in items:
        if not (isinstance(p, np.ndarray) or ops.is_tensor(p)):
            raise TypeError(f"{WHERE}: {role} must be a tensor, a NumPy array or a tuple of them "
                            f"(one per critic input); got {type(p).__name__}.")
        a = _np(p)
        v.check_floating(WHERE, role, str(a.dtype), a.dtype.kind == "f")
        out.append(a.astype(dtype))
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
        if key == "dtype":
            if isinstance(val, str) and val in _FLOATS:
                val = dtype
            elif isinstance(val, dict) and isinstance(val.get("config"), dict) and (
                    val["config"].get("name") in _FLOATS):
                val = {**val, "config": {**val["config"], "name": dtype}}
            out[key] = val
        else:
            out[key] = _retype(val, dtype)
    return out


def _is_keras2(obj: Any) -> bool:
    """A tf-keras (Keras 2) model or layer: configurable, with weights, not a Keras 3 layer."""
    return (not isinstance(obj, keras.Layer) and callable(obj)
            and all(hasattr(obj, a) for a in ("get_config", "from_config", "get_weights",
                                              "set_weights", "trainable_variables")))


def _rebuild(model: Any, dtype: str, sample: Any) -> Any:
    """``model`` rebuilt from its config in ``dtype`` with its weights; raises if impossible."""
    twin = type(model).from_config(_retype(model.get_config(), dtype))
    weights = model.get_weights()
    if len(twin.get_weights()) != len(weights):
        twin(sample)  # build it (a Sequential without an Input, a bare layer)
    twin.set_weights([w.astype(dtype) if w.dtype.kind == "f" else w for w in weights])
    return twin


def _name(var: Any) -> str:
    name = getattr(var, "path", None) or var.name
    return name[:-2] if name.endswith(":0") else name


def _model_dtype(model: Any) -> str:
    """The one dtype the model stores and computes in, or ``"mixed"``."""
    dts = {keras.backend.standardize_dtype(w.dtype) for w in model.trainable_variables}
    compute = getattr(model, "compute_dtype", None)
    if compute is not None:
        dts.add(keras.backend.standardize_dtype(compute))
    return dts.pop() if len(dts) == 1 else "mixed"


def _pure(model: Any, tv: list[Any], ntv: list[Any],
          training: bool | None) -> Callable[..., Any]:
    """``critic(*points)`` through ``model.stateless_call`` (:func:`stateless_critic`;
    ``training`` goes in only when set and the model's ``call`` takes it)."""
    from gpreg_keras._stateless import stateless_critic

    return stateless_critic(model, tv, ntv, training=training)


def _raw_call(critic: Any, parts: Sequence[Any], call: Call) -> Any:
    """The critic's scores at ``parts`` with the check's extra arguments."""
    inner = getattr(critic, "_gpreg_call", None)
    if inner is not None:
        raw = inner(tuple(parts), call.args, call.kwargs)
    else:
        raw = critic(*arrange(critic, tuple(parts), call.args), **call.kwargs)
    return raw if call.output is None and ops.is_tensor(raw) else _callmod.pick_output(
        WHERE, raw, call.output, ops.is_tensor)


def _cast_call(call: Call, dtype: str) -> Call:
    """``call`` with its floating tensors and arrays in the check's dtype."""
    def cast(x: Any) -> Any:
        if isinstance(x, np.ndarray) or ops.is_tensor(x):
            a = _np(x)
            return _tensor(a, dtype) if a.dtype.kind == "f" else x
        return x

    return Call(_callmod.map_leaves(cast, call.args), _callmod.map_leaves(cast, call.kwargs),
                call.output)


def _stateless_parts(critic: Any) -> tuple[Any, list[Any], list[Any], bool | None] | None:
    """``(model, trainable, non_trainable, training)`` of a ``gp.stateless_critic`` closure."""
    parts = getattr(critic, "_gpreg_stateless", None)
    if parts is None:
        return None
    model, tv, ntv, training = parts
    return model, list(tv), list(ntv), training


class _Data:
    def __init__(self, real: tuple, fake: tuple | None, alpha: np.ndarray,
                 noise: tuple, dtype: str, call: Call) -> None:
        self.call = call
        self.real = tuple(_tensor(a, dtype) for a in real)
        self.fake = None if fake is None else tuple(_tensor(a, dtype) for a in fake)
        self.alpha = _tensor(alpha, dtype)
        self.noise = tuple(_tensor(a, dtype) for a in noise)

    def penalty(self, spec: PenaltySpec, critic: Callable[..., Any], create_graph: bool) -> Any:
        from gpreg_keras._penalties import get_penalty

        def one(parts: tuple) -> Any:
            return parts[0] if len(parts) == 1 else parts

        kw: dict[str, Any] = {"create_graph": create_graph, "args": self.call.args,
                              "kwargs": self.call.kwargs, "output": self.call.output}
        if spec.points == "interpolates":
            assert self.fake is not None
            data = (one(self.real), one(self.fake))
            kw["alpha"] = self.alpha
        elif spec.points == "fake":
            assert self.fake is not None
            data = (one(self.fake),)
        elif spec.points == "perturbed_real":
            data = (one(self.real),)
            kw["alpha"], kw["noise"] = self.alpha, one(self.noise)
        else:
            data = (one(self.real),)
        return get_penalty(spec.name)(critic, *data, **kw)


def _float(x: Any) -> float:
    return float(_np(x))


class _StatelessTarget:
    """A Keras 3 model evaluated with ``stateless_call``: parameters are arguments."""

    def __init__(self, model: Any, tv: list[Any], ntv: list[Any], training: bool | None,
                 specs: list[PenaltySpec], data: _Data, dtype: str, names: list[str]) -> None:
        fixed = [_tensor(_np(t), dtype) if _np(t).dtype.kind == "f" else t for t in ntv]
        self.make = lambda values: _pure(model, values, fixed, training)
        self.specs, self.data, self.dtype = specs, data, dtype
        self.tv = [_tensor(_np(t), dtype) for t in tv]
        self.groups = [(name, _np(t)) for name, t in zip(names, self.tv)]
        self._all: Callable[[list[Any]], list[Any]] | None = self._compile()

    def _compile(self) -> Callable[[list[Any]], list[Any]]:
        def all_values(values: list[Any]) -> list[Any]:
            critic = self.make(values)
            return [self.data.penalty(s, critic, False) for s in self.specs]

        if _backend() == "jax":
            import jax

            return jax.jit(all_values)
        if _backend() == "tensorflow":
            import tensorflow as tf

            return tf.function(all_values, autograph=False, reduce_retracing=True)
        return all_values

    def values(self, k: int | None, theta: np.ndarray | None) -> np.ndarray:
        tv = list(self.tv)
        if k is not None:
            tv[k] = _tensor(theta, self.dtype)
        if self._all is not None:
            try:
                return np.asarray([_float(x) for x in self._all(tv)], dtype=np.float64)
            except Exception:
                self._all = None  # not traceable: evaluate eagerly, penalty by penalty
        return np.asarray([self._one(s, tv) for s in self.specs], dtype=np.float64)

    def _one(self, spec: PenaltySpec, tv: list[Any]) -> float:
        try:
            return _float(self.data.penalty(spec, self.make(tv), False))
        except Exception:
            return float("nan")

    def gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        if _backend() == "jax":
            try:
                return self._jax_gradients()
            except Exception:
                pass  # one penalty fails: find which, penalty by penalty
        base, grads = [], []
        for spec in self.specs:
            try:
                value, g = self._grad(spec)
            except Exception as exc:
                base.append(self._one(spec, self.tv))
                grads.append(core.explain(exc))
                continue
            base.append(value)
            grads.append(g)
        return np.asarray(base, dtype=np.float64), grads

    def _jax_gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        """Every penalty's value and gradient from one compiled Jacobian."""
        import jax
        import jax.numpy as jnp

        def stacked(tv: list[Any]) -> Any:
            critic = self.make(tv)
            return jnp.stack([self.data.penalty(s, critic, True) for s in self.specs])

        values, jac = jax.jit(lambda tv: (stacked(tv), jax.jacrev(stacked)(tv)))(self.tv)
        values = np.asarray(values, dtype=np.float64)
        grads: list[list[np.ndarray] | str] = [
            [np.asarray(j[p], dtype=np.float64) for j in jac] for p in range(len(self.specs))]
        return values, grads

    def _grad(self, spec: PenaltySpec) -> tuple[float, list[np.ndarray]]:
        backend = _backend()
        if backend == "jax":
            import jax

            value, g = jax.value_and_grad(
                lambda tv: self.data.penalty(spec, self.make(tv), True))(self.tv)
            return _float(value), [_np(x) for x in g]
        if backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                tape.watch(self.tv)
                value = self.data.penalty(spec, self.make(self.tv), True)
            g = tape.gradient(value, self.tv)
            return _float(value), [np.zeros(t.shape) if x is None else _np(x)
                                   for x, t in zip(g, self.tv)]
        tv = [t.detach().clone().requires_grad_(True) for t in self.tv]
        value = self.data.penalty(spec, self.make(tv), True)
        return _float(value.detach()), _torch_grads(value, tv)

    def outputs(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        out = _raw_call(self.make(self.tv), [_tensor(p, self.dtype) for p in parts],
                        self.data.call)
        a = _np(out).astype(np.float64)
        return a.reshape(a.shape[0], -1).sum(axis=1)


def _torch_grads(value: Any, params: list[Any]) -> list[np.ndarray]:
    """Gradients with respect to ``params`` taken over every leaf of the graph, so that a
    Function marked ``@once_differentiable`` raises as in ``loss.backward()``."""
    import torch

    from gpreg_torch._check import _graph_leaves

    if not value.requires_grad:
        return [np.zeros(tuple(p.shape)) for p in params]
    ids = {id(p) for p in params}
    others = [t for t in _graph_leaves(value) if id(t) not in ids]
    gs = torch.autograd.grad(value, params + others, allow_unused=True)[:len(params)]
    return [np.zeros(tuple(p.shape)) if g is None else g.detach().cpu().double().numpy()
            for g, p in zip(gs, params)]


class _StatefulTarget:
    """Rebuilt copies whose variables are assigned (tf-keras models, plain functions)."""

    def __init__(self, critic: Callable[..., Any], variables: list[tuple[str, Any]],
                 state: list[Any], specs: list[PenaltySpec], data: _Data, dtype: str) -> None:
        self.critic, self.specs, self.data, self.dtype = critic, specs, data, dtype
        self.vars = [var for _, var in variables]
        self.snapshot = [(var, _np(var)) for var in state]
        self.groups = [(name, _np(var)) for name, var in variables]
        self._all: Callable[[], list[Any]] | None = None
        if _backend() == "tensorflow":  # variables are read when the function runs
            import tensorflow as tf

            self._all = tf.function(
                lambda: [self.data.penalty(s, self.critic, False) for s in self.specs],
                autograph=False)

    def _restore(self) -> None:
        for var, val in self.snapshot:
            var.assign(val)

    def values(self, k: int | None, theta: np.ndarray | None) -> np.ndarray:
        self._restore()
        if k is not None:
            self.vars[k].assign(np.asarray(theta, dtype=self.groups[k][1].dtype))
        if self._all is not None:
            try:
                out = [_float(x) for x in self._all()]
                self._restore()
                return np.asarray(out, dtype=np.float64)
            except Exception:
                self._all = None  # not traceable: evaluate eagerly, penalty by penalty
        out = []
        for spec in self.specs:
            try:
                out.append(_float(self.data.penalty(spec, self.critic, False)))
            except Exception:
                out.append(float("nan"))
        self._restore()
        return np.asarray(out, dtype=np.float64)

    def gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        base, grads = [], []
        for spec in self.specs:
            self._restore()
            try:
                value, g = self._grad(spec)
            except Exception as exc:
                base.append(float("nan"))
                grads.append(core.explain(exc))
                continue
            base.append(value)
            grads.append(g)
        self._restore()
        return np.asarray(base, dtype=np.float64), grads

    def _grad(self, spec: PenaltySpec) -> tuple[float, list[np.ndarray]]:
        if not self.vars:
            return _float(self.data.penalty(spec, self.critic, False)), []
        if _backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                value = self.data.penalty(spec, self.critic, True)
            g = tape.gradient(value, self.vars)
            return _float(value), [np.zeros(tuple(x.shape)) if d is None else _np(d)
                                   for d, x in zip(g, self.vars)]
        value = self.data.penalty(spec, self.critic, True)
        return _float(value.detach()), _torch_grads(value, [x.value for x in self.vars])

    def outputs(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        self._restore()
        out = _raw_call(self.critic, [_tensor(p, self.dtype) for p in parts], self.data.call)
        self._restore()
        a = _np(out).astype(np.float64)
        return a.reshape(a.shape[0], -1).sum(axis=1)


def _hidden(critic: Callable[..., Any], parts: tuple[np.ndarray, ...], dtype: str,
            known: set[int], call: Call) -> list[str]:
    """Parameters that a plain-function critic uses besides the ones that were copied."""
    pts = [_tensor(p, dtype) for p in parts]
    if _backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            _raw_call(critic, pts, call)
        return [f"{var.name} {tuple(var.shape)}" for var in tape.watched_variables()
                if id(var) not in known]
    if _backend() == "torch":
        import torch

        from gpreg_torch._check import _graph_leaves

        leaves = [p.requires_grad_(True) for p in pts]
        out = _raw_call(critic, leaves, call)
        ids = known | {id(p) for p in leaves}
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return []
        return [f"a {tuple(t.shape)} tensor" for t in _graph_leaves(out)
                if id(t) not in ids and t.requires_grad]
    return []


def _variable_ids(variables: Sequence[Any]) -> set[int]:
    ids = set()
    for var in variables:
        ids.add(id(var))
        inner = getattr(var, "_value", None)  # the backend variable of a Keras 3 variable
        if inner is not None:
            ids.add(id(inner))
    return ids


class _Plan:
    """How the critic is copied and called in one dtype."""

    def __init__(self, critic: Callable[..., Any], dtype: str, training: bool | None,
                 real: tuple[np.ndarray, ...]) -> None:
        self.dtype, self.real = dtype, real
        self.notes: list[str] = []
        self.model: Any = None
        self.fn: Any = None
        self.variables: list[tuple[str, Any]] = []
        self.state: list[Any] = []
        self.hidden: list[str] = []
        sample = [_tensor(a, dtype) for a in real]
        self.sample = sample[0] if len(sample) == 1 else sample
        stateless = _stateless_parts(critic)
        if stateless is None and isinstance(critic, keras.Layer):
            stateless = (critic, [var.value for var in critic.trainable_variables],
                         [var.value for var in critic.non_trainable_variables], None)
        if stateless is not None:
            model, self.tv, self.ntv, train = stateless
            self.train = train if training is None else bool(training)
            self.names = [_name(var) for var in model.trainable_variables]
            if _model_dtype(model) != dtype:
                try:
                    model = _rebuild(model, dtype, self.sample)
                except Exception as exc:
                    own = _model_dtype(model)
                    self.dtype = own if own in ("float32", "float64") else "float32"
                    self.notes.append(
                        f"could not rebuild the critic in {dtype} from its config "
                        f"({core.explain(exc)}): checked it in its own dtype ({self.dtype}) "
                        f"through stateless_call (the model was not changed)")
            self.model = model
        elif _backend() == "jax":
            self.fn = critic
            self.hidden = _models_in(critic)
            if self.hidden:
                self.notes.append("on JAX a plain function's parameters cannot be reached: pass "
                                  "the Keras model, or gp.stateless_critic(model, ...), to "
                                  "check them")
        else:
            self.fn, self.variables, self.state, failed = _copy_function(
                critic, dtype, training, self.sample)
            self.notes.extend(f if f.startswith("tf-keras") else f"could not rebuild {f}"
                              for f in failed)

    def probe(self, call: Call) -> None:
        """Call the copy once on the data (raises what the critic raises)."""
        parts = [_tensor(a, self.dtype) for a in self.real]
        call = _cast_call(call, self.dtype)
        if self.model is not None:
            ntv = [_tensor(_np(t), self.dtype) if _np(t).dtype.kind == "f" else t
                   for t in self.ntv]
            tv = [_tensor(_np(t), self.dtype) for t in self.tv]
            _raw_call(_pure(self.model, tv, ntv, self.train), parts, call)
        else:
            _raw_call(self.fn, parts, call)


def check_critic(
    critic: Callable[..., Any],
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
    r"""Check that gpreg's penalties differentiate correctly through ``critic``: run it first.

    A gradient penalty's parameter gradient is a second derivative of the critic (double
    backprop). A layer that is right to first order but not to second order leaves the
    penalty's value right and its gradient silently wrong — Keras 3's normalization layers
    on TensorFlow were such a case (gpreg corrects them inside its own calls). This function
    compares, on a copy of ``critic`` (the critic itself is never changed), each penalty's
    parameter gradient with central finite differences of the penalty's value along
    ``directions`` random directions per parameter group (each variable), and reports the
    relative error per penalty and group. It also reports **sample coupling** (moving sample
    :math:`j`'s input moves sample :math:`i`'s score: BatchNormalization in training mode),
    non-finite values or gradients, and errors raised by double backprop.

    The check runs in float64 on the TensorFlow backend (the critic is rebuilt from its
    config with a float64 dtype policy). Keras 3 computes some float64 operations in float32
    on its JAX and torch backends, so there it runs in float32 with a larger step and a
    looser tolerance, and the report says so. The evaluation points use a fixed ``alpha``
    and DRAGAN ``noise``, and the non-trainable state (dropout seeds, BatchNorm statistics)
    is the same at every call, so each penalty is a deterministic function of the parameters.

    Args:
        critic: a Keras 3 model or layer (on JAX too), a :func:`stateless_critic` closure, a
            tf-keras (Keras 2) model on TensorFlow, or a function that calls such models (it
            is rebuilt around copies of them; parameters it reaches in other ways are
            reported as unchecked).
        real: a batch of real samples (a tensor or NumPy array, or a tuple of them for a
            multi-input critic); a few samples suffice (4–16).
        fake: a batch shaped like ``real``; without it only the penalties evaluated at real
            data (``r1``, ``dragan``) are checked.
        penalties: a name or a list of names (any registered penalty); default: every
            built-in that the data allow.
        directions: random directions per parameter group.
        eps: finite-difference step, relative to each group's root mean square; default
            ``1e-4`` in float64 and ``3e-3`` in float32.
        rtol: largest accepted relative error; default ``1e-6`` in float64 and ``5e-3`` in
            float32.
        dtype: ``"float64"`` or ``"float32"``: the dtype of the copy. Default: float64 on
            TensorFlow (float32 when the critic fails in float64), float32 on JAX and torch.
            Check in float32 to test the kernels your float32 training runs: some layers
            pick another implementation per dtype (tf-keras's LayerNormalization is fused,
            and exact, only in float32).
        args, kwargs, output: the critic's extra arguments and output selector, as in the
            penalties (``critic(*points, *args, **kwargs)``); floating tensors among them are
            cast to the check's dtype.
        training: passed to the model's call (``None``: the model's default, inference).
        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key that seeds the check's
            draws (points, directions); default: seed 0, so the same call gives the same
            report.

    Returns:
        CheckReport: (defined in ``gpreg._check``) ``ok``, ``errors`` (``{penalty:
        {group: relative error}}``),
        ``coupling``, ``nonfinite``, ``failures()`` and ``summary()`` (also ``str(report)``).

    Raises:
        TypeError: ``critic`` is not callable, or the data are not arrays.
        ValueError: a penalty needs ``fake`` and none was given; ``directions``, ``eps`` or
            ``rtol`` out of range.

    Example:
        >>> import keras, numpy as np, gpreg_keras as gp
        >>> critic = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
        ...                            keras.layers.LayerNormalization(),
        ...                            keras.layers.Activation("tanh"), keras.layers.Dense(1)])
        >>> rng = np.random.default_rng(0)
        >>> report = gp.check_critic(critic, rng.normal(size=(6, 3)), rng.normal(size=(6, 3)))
        >>> report.ok
        True
    """
    with warnings.catch_warnings():
        # gpreg's own BatchNormWarning would repeat at every internal evaluation; the report
        # says the same (sample coupling) once.
        warnings.simplefilter("ignore", getattr(v, "BatchNormWarning", UserWarning))
        return _check(critic, real, fake, penalties=penalties, directions=directions, eps=eps,
                      rtol=rtol, dtype=dtype, training=training, seed=seed, args=args,
                      kwargs=kwargs, output=output)


def _check(critic: Any, real: Any, fake: Any, *, penalties: Any, directions: Any, eps: Any,
           rtol: Any, dtype: Any, training: Any, seed: Any, args: Any, kwargs: Any,
           output: Any) -> CheckReport:
    if not callable(critic):
        raise TypeError(f"{WHERE}: critic must be callable (a Keras model or a function); got "
                        f"{type(critic).__name__}.")
    backend = _backend()
    if dtype not in (None, "float64", "float32"):
        raise ValueError(f"{WHERE}: dtype must be None, 'float64' or 'float32'; got {dtype!r}. "
                         f"Finite differences need at least float32.")
    if dtype == "float64" and backend != "tensorflow":
        raise ValueError(f"{WHERE}: Keras on {backend} computes some float64 operations in "
                         f"float32, so a float64 check is not possible there; use dtype=None "
                         f"or 'float32', or the TensorFlow backend.")
    wanted = dtype
    dtype = dtype or ("float64" if backend == "tensorflow" else "float32")
    real_np = _parts("real", real, "float64")
    fake_np = None if fake is None else _parts("fake", fake, "float64")
    if fake_np is not None:
        v.check_same_shapes(WHERE, [a.shape for a in real_np], [a.shape for a in fake_np])
    specs = core.resolve_penalties(WHERE, penalties, fake_np is not None)
    from gpreg_keras._core import call_options

    call = call_options(WHERE, args, kwargs, output, real_np)
    seed_int = _seed(seed)
    notes: list[str] = []
    plan: _Plan | None = None
    first_error: BaseException | None = None
    for dt in (dtype, "float32") if dtype == "float64" and wanted is None else (dtype,):
        try:
            plan = _Plan(critic, dt, training, real_np)
            plan.probe(call)
        except Exception as exc:
            first_error = first_error or exc
            plan = None
            continue
        break
    if plan is None:
        assert first_error is not None
        raise v.critic_failed(WHERE, [a.shape for a in real_np], first_error)
    if plan.dtype != dtype and first_error is not None:
        plan.notes.insert(0, f"the critic failed in {dtype} ({core.explain(first_error)}), so "
                             f"the check ran in {plan.dtype} with looser eps and rtol")
    dtype = plan.dtype
    notes.extend(plan.notes)
    directions, eps, rtol = core.settings(WHERE, dtype, directions, eps, rtol)
    if dtype != "float64" and backend != "tensorflow":
        notes.append(f"Keras on {backend} computes some float64 operations in float32, so the "
                     f"check ran in float32 (step {eps:g}, rtol {rtol:g}); run it on the "
                     f"TensorFlow backend for a float64 check")
    r_pts, d_rng, c_rng = core.streams(seed_int)
    alpha, noise = core.draws(r_pts, [a.shape for a in real_np])
    data = _Data(real_np, fake_np, alpha, noise, dtype, _cast_call(call, dtype))
    unchecked: list[str] = []
    target: _StatelessTarget | _StatefulTarget
    if plan.model is not None:
        target = _StatelessTarget(plan.model, plan.tv, plan.ntv, plan.train, specs, data, dtype,
                                  plan.names)
    else:
        target = _StatefulTarget(plan.fn, plan.variables, plan.state, specs, data, dtype)
        unchecked = list(plan.hidden)
        if backend != "jax":
            known = _variable_ids([var for _, var in plan.variables] + plan.state)
            unchecked = _hidden(plan.fn, real_np, dtype, known, _cast_call(call, dtype))
            if unchecked:
                notes.append("pass the Keras model itself, or a function that calls it, so "
                             "that the check can copy every parameter")

    base, grads = target.gradients()
    results, deterministic = core.compare(
        [s.name for s in specs], target.groups, target.values, base, grads, dtype=dtype,
        directions=directions, eps=eps, rtol=rtol, rng=d_rng)
    if not target.groups and not unchecked:
        notes.append("the critic has no trainable parameters that the check could find: only "
                     "coupling and finite values were checked")

    batch = int(real_np[0].shape[0])
    coupling = None
    if batch >= 2:
        base_out = target.outputs(real_np)
        moved = [(j, target.outputs(core.perturbation(c_rng, real_np, j, dtype)))
                 for j in core.coupled_samples(batch)]
        coupling = core.coupling(base_out, moved, dtype, rtol)
    else:
        notes.append("one sample: sample coupling was not tested (pass at least 2)")
    return core.report(framework=f"keras ({backend})", dtype=dtype, penalties=results,
                       groups=[n for n, _ in target.groups], coupling_check=coupling,
                       deterministic=deterministic, unchecked=unchecked, notes=notes, eps=eps,
                       rtol=rtol, directions=directions, seed=seed_int)


def _copy_function(critic: Callable[..., Any], dtype: str, training: bool | None,
                   sample: Any) -> tuple[Callable[..., Any], list[tuple[str, Any]], list[Any],
                                         list[str]]:
    """A plain-function critic (or a tf-keras model) rebuilt around copies of its models:
    ``(function, [(group name, variable)], every variable of the copies, failures)``."""
    found: list[tuple[str, Any, Any]] = []
    loose: list[tuple[str, Any]] = []  # bare tf.Variables
    failed: list[str] = []
    notes: list[str] = []

    def copier(obj: Any, path: str) -> Any:
        if _backend() == "tensorflow":
            import tensorflow as tf

            if isinstance(obj, tf.Variable) and obj.dtype.is_floating:
                twin = tf.Variable(tf.cast(obj, dtype), trainable=obj.trainable,
                                   name=obj.name.split(":")[0])
                loose.append((path, twin))
                return twin
        if not (isinstance(obj, keras.Layer) or _is_keras2(obj)):
            return None
        try:
            twin = _rebuild(obj, dtype, sample)
        except Exception as exc:
            failed.append(f"{path or type(obj).__name__}: {core.explain(exc)}")
            return None
        found.append((path, obj, twin))
        if _is_keras2(obj) and dtype == "float64" and _keras2_norms(obj):
            notes.append(
                "tf-keras's LayerNormalization and BatchNormalization run a fused kernel "
                "(exact) in float32 and tf.nn.moments (wrong to second order; gpreg does not "
                "correct tf-keras) otherwise: check with dtype='float32' to test what float32 "
                "training runs")
        return twin if training is None else _TrainingCall(twin, training)

    fn = core.Rebinder(copier)(critic)
    variables: list[tuple[str, Any]] = []
    state: list[Any] = []
    seen: set[int] = set()
    for path, orig, m in found:
        for var, ovar in zip(m.trainable_variables, orig.trainable_variables):
            if id(var) not in seen:
                seen.add(id(var))
                variables.append((f"{path}: {_name(ovar)}" if path else _name(ovar), var))
        state.extend(var for var in m.variables if id(var) not in {id(s) for s in state})
    for path, var in loose:
        if var.trainable:
            variables.append((path, var))
        state.append(var)
    return fn, variables, state, failed + notes


def _models_in(critic: Callable[..., Any]) -> list[str]:
    """The Keras models a plain function refers to (found, not copied)."""
    seen: list[str] = []

    def note(obj: Any, path: str) -> None:
        if isinstance(obj, keras.Layer) and obj.trainable_variables:
            seen.append(f"{path or type(obj).__name__} ({len(obj.trainable_variables)} "
                        f"variables)")
        return None

    core.Rebinder(note)(critic)
    return seen


def _keras2_norms(model: Any) -> bool:
    names = {type(m).__name__ for m in getattr(model, "submodules", ())}
    return bool(names & {"LayerNormalization", "BatchNormalization"})


class _TrainingCall:
    """A copied model called with a fixed ``training`` flag (for plain-function critics)."""

    def __init__(self, model: Any, training: bool) -> None:
        self.model, self.training = model, bool(training)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("training", self.training)
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

