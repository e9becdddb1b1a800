"""Rebuild the shared fixture critics as Keras models, channels-last (for tests and compare).

The fixtures store PyTorch layouts (linear weights (out, in); conv weights (out, in, kh, kw) on
NCHW inputs). Here the images are NHWC, kernels are transposed on the way in and the
parameter gradients transposed back, so the numbers compare with the stored ones directly.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from gpreg import fixtures
from gpreg.fixtures import Case, Fixture


def _to_nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _square(x: Any) -> Any:
    return x * x


def build_critic(fixture: Fixture, dtype: str = "float64") -> tuple[keras.Model, dict]:
    """The critic as a functional ``keras.Model`` and ``{param name: (variable, to_fixture)}``
    where ``to_fixture`` maps a Keras-layout array to the fixture's layout."""
    inputs = [keras.Input(_to_nhwc(r).shape[1:], dtype=dtype) for r in fixture.real]
    x: Any = inputs
    mapping: dict[str, tuple[Any, Any]] = {}
    pending: list[tuple[Any, dict[str, str], str]] = []
    for i, spec in enumerate(fixture.layers):
        kind, names = spec["type"], spec.get("params", {})
        if kind == "concat":
            x = layers.Concatenate(dtype=dtype)([layers.Flatten(dtype=dtype)(t) for t in x])
            continue
        if isinstance(x, list):
            (x,) = x
        if kind == "flatten":
            if len(x.shape) == 4:  # flatten in NCHW order, as the fixture does
                x = layers.Permute((3, 1, 2), dtype=dtype)(x)
            x = layers.Flatten(dtype=dtype)(x)
        elif kind == "linear":
            lay = layers.Dense(fixture.params[names["weight"]].shape[0], use_bias="bias" in names,
                               dtype=dtype, name=f"l{i}")
            x = lay(x)
            pending.append((lay, names, "dense"))
        elif kind == "conv2d":
            w = fixture.params[names["weight"]]
            if spec["padding"]:
                x = layers.ZeroPadding2D(spec["padding"], dtype=dtype)(x)
            lay = layers.Conv2D(w.shape[0], w.shape[2:], strides=spec["stride"], padding="valid",
                                use_bias="bias" in names, dtype=dtype, name=f"l{i}")
            x = lay(x)
            pending.append((lay, names, "conv"))
        elif kind == "layer_norm":
            lay = layers.LayerNormalization(axis=-1, epsilon=spec["eps"], dtype=dtype,
                                            name=f"l{i}")
            x = lay(x)
            pending.append((lay, names, "norm"))
        elif kind == "leaky_relu":
            x = layers.LeakyReLU(negative_slope=spec["slope"], dtype=dtype)(x)
        elif kind == "square":
            x = layers.Lambda(_square, dtype=dtype)(x)
        elif kind in ("tanh", "softplus", "elu", "relu"):
            x = layers.Activation(kind, dtype=dtype)(x)
        else:
            raise ValueError(f"unknown fixture layer type {kind!r}")
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], x)
    for lay, names, kind in pending:
        if kind == "dense":
            lay.kernel.assign(fixture.params[names["weight"]].T)
            mapping[names["weight"]] = (lay.kernel, lambda a: a.T)
        elif kind == "conv":
            lay.kernel.assign(fixture.params[names["weight"]].transpose(2, 3, 1, 0))
            mapping[names["weight"]] = (lay.kernel, lambda a: a.transpose(3, 2, 0, 1))
        else:
            lay.gamma.assign(fixture.params[names["weight"]])
            mapping[names["weight"]] = (lay.gamma, lambda a: a)
        if "bias" in names:
            var = lay.beta if kind == "norm" else lay.bias
            var.assign(fixture.params[names["bias"]])
            mapping[names["bias"]] = (var, lambda a: a)
    return model, mapping


def tensors(arrays: tuple[np.ndarray, ...], dtype: str) -> tuple[Any, ...]:
    return tuple(keras.ops.convert_to_tensor(_to_nhwc(a), dtype=dtype) for a in arrays)


def case_arguments(fixture: Fixture, case: Case, dtype: str) -> tuple[tuple, dict[str, Any]]:
    """Positional data and keyword options that reproduce ``case`` exactly (channels-last)."""
    real, fake = tensors(fixture.real, dtype), tensors(fixture.fake, dtype)
    noise = tensors(fixture.noise, dtype)
    alpha = keras.ops.convert_to_tensor(fixture.alpha, dtype=dtype)

    def one(parts: tuple) -> Any:
        return parts[0] if len(parts) == 1 else parts

    roles, randomness = fixtures.arguments(case)
    data = {"real": one(real), "fake": one(fake)}
    draws = {"alpha": alpha, "noise": one(noise)}
    return tuple(data[r] for r in roles), {**case.kwargs, **{k: draws[k] for k in randomness}}


def _np(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def penalty_and_grads(model: keras.Model, fn: Any, args: tuple, kwargs: dict,
                      mode: str = "eager") -> tuple[Any, list[Any]]:
    """The penalty and its gradient with respect to ``model.trainable_variables``, computed
    the way training code on the active backend does. ``mode``: ``"eager"``, ``"function"``
    (tf.function / jax.jit) or ``"xla"`` (TensorFlow jit_compile=True)."""
    backend = keras.backend.backend()
    variables = model.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        def step(*a: Any) -> Any:
            with tf.GradientTape() as tape:
                value = fn(model, *a, **kwargs)
            grads = tape.gradient(value, variables)
            return value, [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]

        if mode != "eager":
            step = tf.function(step, jit_compile=(mode == "xla"))
        return step(*args)
    if backend == "jax":
        import jax

        from gpreg_keras import stateless_critic

        def loss(tv: list[Any], *a: Any) -> Any:
            return fn(stateless_critic(model, tv), *a, **kwargs)

        vg = jax.value_and_grad(loss)
        if mode != "eager":
            vg = jax.jit(vg)
        return vg([v.value for v in variables], *args)
    import torch

    value = fn(model, *args, **kwargs)
    params = [v.value for v in variables]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return value, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def run_case(fixture: Fixture, case: Case, dtype: str = "float64",
             mode: str = "eager") -> dict[str, Any]:
    """Value, per-sample values, norms at the stored points and parameter gradients (NumPy,
    fixture layout)."""
    import gpreg_keras as gp

    model, mapping = build_critic(fixture, dtype)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = case_arguments(fixture, case, dtype)
    value, grads = penalty_and_grads(model, fn, args, {**kwargs, "reduction": case.reduction},
                                     mode)
    by_var = {id(v): g for v, g in zip(model.trainable_variables, grads)}
    critic = model
    if keras.backend.backend() == "jax":
        from gpreg_keras import stateless_critic

        critic = stateless_critic(model)
    per_sample = fn(critic, *args, **kwargs, reduction="none", create_graph=False)
    pts = tensors(case.points, dtype)
    norms = gp.grad_norm(critic, pts[0] if len(pts) == 1 else pts)
    return {
        "value": float(_np(value)),
        "per_sample": _np(per_sample),
        "norms": _np(norms),
        "grads": {name: back(_np(by_var[id(var)])) for name, (var, back) in mapping.items()},
    }


def dtype(name: str) -> str:
    return name


def tolerance_key(dtype: str) -> str:
    """The row of the tolerance table that applies to ``dtype`` on the active backend.

    Keras 3 computes some float64 ops (``tanh``, ``matmul``, ...) in float32 on its JAX and
    torch backends, so float64 there can only hold to float32 accuracy (pinned by
    tests/keras/test_fixtures.py::test_float64_is_demoted_outside_tensorflow).
    """
    demoted = keras.backend.backend() in ("jax", "torch")
    return "float32" if dtype == "float64" and demoted else dtype


def versions() -> dict[str, str]:
    out = {"keras": keras.__version__, "backend": keras.backend.backend()}
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            out["tensorflow"] = tf.__version__
        elif keras.backend.backend() == "jax":
            import jax

            out["jax"] = jax.__version__
        else:
            import torch

            out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
