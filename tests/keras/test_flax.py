"""Flax critics through gpreg_keras on the JAX backend (KERAS_BACKEND=jax), no Keras model.

Every shipped fixture critic is rebuilt twice, as a Flax NNX module and as a linen module,
with the stored parameters; every penalty's value, per-sample values, norms and parameter
gradient (``jax.grad`` with respect to the Flax parameters, through gpreg's inner
``jax.grad``) must match the float64 reference of ``gpreg/fixtures/generate.py``. The critics
are pure JAX, so float64 holds to round-off here (a Keras model on JAX demotes some float64
ops to float32; see test_fixtures.py). Runs in the keras-jax group; flax and optax are pinned
in the ``test`` extra.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("Flax critics run on the JAX backend: this module runs in the keras-jax group",
                allow_module_level=True)

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import gpreg_keras as gp
from gpreg import fixtures
from gpreg._tolerances import assert_case, assert_close
from gpreg_keras._fixture import case_arguments, tensors

CASES = [(f, c) for f in fixtures.load() for c in f.cases]


# --- the fixture critics in Flax (inputs channels-last, as gpreg_keras._fixture.tensors) ----

class Layer(NamedTuple):
    """One fixture layer, with what a Flax layer needs to know about its parameters."""

    kind: str
    spec: dict[str, Any]
    weight: np.ndarray | None  # the fixture's array (PyTorch layout), None for parameter-free
    bias: np.ndarray | None


def plan(fixture: fixtures.Fixture) -> list[Layer]:
    out = []
    for spec in fixture.layers:
        names = spec.get("params", {})
        w = fixture.params[names["weight"]] if "weight" in names else None
        b = fixture.params[names["bias"]] if "bias" in names else None
        out.append(Layer(spec["type"], spec, w, b))
    return out


def flatten_nchw(x: Any) -> Any:
    """Flatten per sample in the fixture's NCHW element order."""
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    return x.reshape(x.shape[0], -1)


def concat(*parts: Any) -> Any:
    return jnp.concatenate([flatten_nchw(p) for p in parts], axis=1)


def parameter_free(layer: Layer) -> Any:
    kind = layer.kind
    if kind == "leaky_relu":
        return functools.partial(jax.nn.leaky_relu, negative_slope=layer.spec["slope"])
    simple = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "elu": jax.nn.elu,
              "relu": jax.nn.relu, "square": jnp.square, "flatten": flatten_nchw,
              "concat": concat}
    return simple[kind]


def conv_options(layer: Layer) -> dict[str, Any]:
    p, s = layer.spec["padding"], layer.spec["stride"]
    return {"kernel_size": layer.weight.shape[2:], "strides": (s, s),
            "padding": ((p, p), (p, p)), "use_bias": layer.bias is not None}


# Flax layout of each parameter from the fixture's, and back
TO_FLAX = {"linear": lambda w: w.T, "conv2d": lambda w: w.transpose(2, 3, 1, 0),
           "layer_norm": lambda w: w}
TO_FIXTURE = {"linear": lambda w: w.T, "conv2d": lambda w: w.transpose(3, 2, 0, 1),
              "layer_norm": lambda w: w}
WEIGHT_NAME = {"linear": "kernel", "conv2d": "kernel", "layer_norm": "scale"}


def nnx_critic(fixture: fixtures.Fixture, dtype: str) -> nnx.Sequential:
    """The fixture critic as an ``nnx.Sequential`` holding the stored parameters."""
    rngs = nnx.Rngs(0)
    kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
    layers = []
    for layer in plan(fixture):
        if layer.kind == "linear":
            mod = nnx.Linear(layer.weight.shape[1], layer.weight.shape[0],
                             use_bias=layer.bias is not None, **kw)
        elif layer.kind == "conv2d":
            mod = nnx.Conv(layer.weight.shape[1], layer.weight.shape[0], **conv_options(layer),
                           **kw)
        elif layer.kind == "layer_norm":
            mod = nnx.LayerNorm(layer.weight.shape[0], epsilon=layer.spec["eps"],
                                use_fast_variance=False, **kw)
        else:
            layers.append(parameter_free(layer))
            continue
        getattr(mod, WEIGHT_NAME[layer.kind])[...] = jnp.asarray(
            TO_FLAX[layer.kind](layer.weight), dtype)
        if layer.bias is not None:
            mod.bias[...] = jnp.asarray(layer.bias, dtype)
        layers.append(mod)
    return nnx.Sequential(*layers)


class LinenCritic(nn.Module):
    """The fixture critic as a linen module; its parameters come from :func:`linen_params`."""

    fixture_name: str
    dtype: str

    @nn.compact
    def __call__(self, *parts: Any) -> Any:
        (fixture,) = [f for f in fixtures.load() if f.name == self.fixture_name]
        x: Any = parts
        kw = {"dtype": self.dtype, "param_dtype": self.dtype}
        for i, layer in enumerate(plan(fixture)):
            if layer.kind == "linear":
                fn: Any = nn.Dense(layer.weight.shape[0], use_bias=layer.bias is not None,
                                   name=f"l{i}", **kw)
            elif layer.kind == "conv2d":
                fn = nn.Conv(layer.weight.shape[0], **conv_options(layer), name=f"l{i}", **kw)
            elif layer.kind == "layer_norm":
                fn = nn.LayerNorm(epsilon=layer.spec["eps"], use_fast_variance=False,
                                  name=f"l{i}", **kw)
            else:
                fn = parameter_free(layer)
            x = fn(*x) if isinstance(x, tuple) else fn(x)
        return x


def linen_params(fixture: fixtures.Fixture, dtype: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, layer in enumerate(plan(fixture)):
        if layer.weight is None:
            continue
        entry = {WEIGHT_NAME[layer.kind]: jnp.asarray(TO_FLAX[layer.kind](layer.weight), dtype)}
        if layer.bias is not None:
            entry["bias"] = jnp.asarray(layer.bias, dtype)
        params[f"l{i}"] = entry
    return {"params": params}


def fixture_names(fixture: fixtures.Fixture) -> list[tuple[str, int, str]]:
    """(fixture parameter name, layer index, Flax parameter name) for every parameter."""
    out = []
    for i, spec in enumerate(fixture.layers):
        names = spec.get("params", {})
        if "weight" in names:
            out.append((names["weight"], i, WEIGHT_NAME[spec["type"]]))
        if "bias" in names:
            out.append((names["bias"], i, "bias"))
    return out


def _np(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def to_fixture(fixture: fixtures.Fixture, i: int, attr: str, grad: Any) -> np.ndarray:
    """Layer ``i``'s gradient of parameter ``attr`` in the fixture's (PyTorch) layout."""
    grad = _np(grad)
    return grad if attr == "bias" else TO_FIXTURE[fixture.layers[i]["type"]](grad)


# --- running a case the way Flax training code does -------------------------------------

def run_nnx(fixture, case, dtype: str, jit: bool = False) -> dict[str, Any]:
    model = nnx_critic(fixture, dtype)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = case_arguments(fixture, case, dtype)

    def loss(m: nnx.Module, *a: Any) -> Any:
        return fn(m, *a, **kwargs, reduction=case.reduction)

    vg = nnx.value_and_grad(loss)
    value, grads = (nnx.jit(vg) if jit else vg)(model, *args)
    got = {name: to_fixture(fixture, i, attr, grads["layers"][i][attr][...])
           for name, i, attr in fixture_names(fixture)}
    return _report(model, fn, args, kwargs, case, dtype, value, got)


def run_linen(fixture, case, dtype: str, jit: bool = False) -> dict[str, Any]:
    module = LinenCritic(fixture.name, dtype)
    params = linen_params(fixture, dtype)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = case_arguments(fixture, case, dtype)

    def loss(p: Any, *a: Any) -> Any:
        return fn(lambda *x: module.apply(p, *x), *a, **kwargs, reduction=case.reduction)

    vg = jax.value_and_grad(loss)
    value, grads = (jax.jit(vg) if jit else vg)(params, *args)
    got = {name: to_fixture(fixture, i, attr, grads["params"][f"l{i}"][attr])
           for name, i, attr in fixture_names(fixture)}
    return _report(lambda *x: module.apply(params, *x), fn, args, kwargs, case, dtype, value,
                   got)


def _report(critic, fn, args, kwargs, case, dtype, value, grads) -> dict[str, Any]:
    per_sample = fn(critic, *args, **kwargs, reduction="none", create_graph=False)
    pts = tensors(case.points, dtype)
    norms = gp.grad_norm(critic, pts[0] if len(pts) == 1 else pts)
    return {"value": float(_np(value)), "per_sample": _np(per_sample), "norms": _np(norms),
            "grads": grads}


RUNNERS = {"nnx": run_nnx, "linen": run_linen}


# NNX on every fixture; linen, whose difference is only how parameters are held and passed,
# on those that cover each kind of layer, several inputs, a score map and a zero gradient
LINEN = ("linear", "conv", "mlp_layernorm", "two_input", "patch_map", "zero_grad")
EAGER = [("nnx", f, c) for f, c in CASES] + [("linen", f, c) for f, c in CASES
                                             if f.name in LINEN]


@pytest.mark.parametrize(("api", "fixture", "case"), EAGER,
                         ids=[f"{a}-{f.name}-{c.id}" for a, f, c in EAGER])
def test_flax_critic_matches_the_float64_reference(api, fixture, case):
    assert_case(RUNNERS[api](fixture, case, "float64"), case, "float64",
                f"{api}/{fixture.name}/{case.id}")


JIT = [("nnx", f, c) for f, c in CASES if f.name == "conv"] + [
    ("linen", f, c) for f, c in CASES if f.name == "two_input"]


@pytest.mark.parametrize(("api", "fixture", "case"), JIT,
                         ids=[f"{a}-{f.name}-{c.id}" for a, f, c in JIT])
def test_flax_critic_under_jit_in_float32(api, fixture, case):
    """``nnx.jit`` / ``jax.jit`` of the value and gradient, float32 parameters and data."""
    assert_case(RUNNERS[api](fixture, case, "float32", jit=True), case, "float32",
                f"{api}/jit/{fixture.name}/{case.id}")


def test_a_key_per_step_draws_new_points_and_jit_equals_eager():
    """``seed=`` a JAX key, typed (``jax.random.key``) or raw (``PRNGKey``): under ``jax.jit``
    the same key gives the eager value, and a new key gives new interpolates."""
    fixture = next(f for f in fixtures.load() if f.name == "mlp_tanh")
    module, params = LinenCritic(fixture.name, "float32"), linen_params(fixture, "float32")
    real, fake = (tensors(fixture.real, "float32")[0], tensors(fixture.fake, "float32")[0])

    def penalty(p, key):
        return gp.wgan_gp(lambda x: module.apply(p, x), real, fake, seed=key)

    jitted = jax.jit(penalty)
    for key in (jax.random.key(3), jax.random.PRNGKey(3)):
        assert_close(float(jitted(params, key)), float(penalty(params, key)), "float32")
    values = {float(jitted(params, k)) for k in jax.random.split(jax.random.key(0), 4)}
    assert len(values) == 4


def test_a_module_that_updates_its_state_gets_the_fix_and_eval_mode_works():
    """NNX Dropout (and BatchNorm in training mode) change their variables when called,
    which Flax forbids inside the penalty's inner jax.grad; eval mode for the penalty works."""
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(3, 8, rngs=rngs), nnx.Dropout(0.5, rngs=rngs),
                           nnx.relu, nnx.Linear(8, 1, rngs=rngs))
    real, fake = jnp.ones((4, 3)), jnp.zeros((4, 3))
    with pytest.raises(RuntimeError, match=r"updates its own state .* model\.eval\(\), then "
                                           r"the penalty, then model\.train\(\)"):
        nnx.grad(lambda m: gp.wgan_gp(m, real, fake, seed=jax.random.key(0)))(model)

    def loss(m):
        m.eval()
        penalty = gp.wgan_gp(m, real, fake, seed=jax.random.key(0))
        m.train()
        return penalty

    grads = nnx.jit(nnx.grad(loss))(model)
    assert float(jnp.abs(grads["layers"][0]["kernel"][...]).sum()) > 0
    assert not model.layers[1].deterministic  # back in training mode
