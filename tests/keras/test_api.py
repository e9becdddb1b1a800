"""Both adapters expose the same surface; the same mistakes get the same errors; seeds."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import gpreg_keras as gp
import gpreg_torch
from gpreg import BUILTIN_NAMES

BACKEND = keras.backend.backend()
KERAS_ONLY = {"stateless_critic", "exact_moments"}  # JAX needs a pure critic; TF statistics
TORCH_ONLY = {"from_scores"}  # forward reuse needs autograd's after-the-fact gradients
RENAMED = {"generator": "seed"}  # framework-specific randomness argument


def test_public_surface_matches_gpreg_torch():
    assert set(gp.__all__) - KERAS_ONLY == set(gpreg_torch.__all__) - TORCH_ONLY
    for name in set(gpreg_torch.__all__) - TORCH_ONLY:
        t = inspect.signature(getattr(gpreg_torch, name)).parameters
        k = inspect.signature(getattr(gp, name)).parameters
        t_items = [(RENAMED.get(p.name, p.name), p.kind, p.default) for p in t.values()]
        k_items = [(p.name, p.kind, p.default) for p in k.values()]
        assert t_items == k_items, name
        assert getattr(gp, name).__doc__, name
    assert gp.LazyRegularization is gpreg_torch.LazyRegularization


def test_get_penalty_returns_public_functions():
    for name in BUILTIN_NAMES:
        assert gp.get_penalty(name) is getattr(gp, name)


def critic_fn(x):
    return 2.0 * ops.sum(x, axis=1)


def model_or_fn():
    """A Keras model where the backend allows calling it directly, else a pure function."""
    if BACKEND == "jax":
        return critic_fn
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(1)])


REAL = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
FAKE = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")


def t(x):
    return ops.convert_to_tensor(x)


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda c: gp.wgan_gp(c, t(REAL), t(FAKE[:3])), ValueError,
         r"real \(4, 3\) and fake \(3, 3\)"),
        (lambda c: gp.r1(c, t(REAL.astype("int32"))), TypeError, "floating-point points"),
        (lambda c: gp.wgan_gp(c, t(REAL), t(FAKE), alpha=t(np.ones(3, "float32"))), ValueError,
         "alpha has shape"),
        (lambda c: gp.r1(c, t(REAL[:0])), ValueError, "empty batch"),
        (lambda c: gp.r1(lambda x: ops.mean(critic_fn(x)), t(REAL)), ValueError,
         r"output has shape \(\)"),
        (lambda c: gp.r1(lambda x: 3.0, t(REAL)), TypeError, "returned a float"),
        (lambda c: gp.r1(lambda x: critic_fn(ops.stop_gradient(x)), t(REAL)), RuntimeError,
         "does not depend on its input"),
        (lambda c: gp.wgan_gp(c, t(REAL), t(FAKE), reduction="avg"), ValueError,
         "unknown reduction 'avg'"),
        (lambda c: gp.r1(c, t(REAL), gamma=-1.0), ValueError,
         "gamma must be a finite, non-negative number"),
        (lambda c: gp.wgan_gp(c, t(REAL), t(FAKE), target=float("nan")), ValueError,
         "target must be a finite"),
        (lambda c: gp.get_penalty("wgan"), KeyError, "known penalties: wgan_gp"),
        (lambda c: gp.wgan_div(c, t(REAL), t(FAKE), p=0.5), ValueError, "p must be at least 1"),
        (lambda c: gp.wgan_div(c, t(REAL), t(FAKE), points="real"), ValueError,
         "unknown points 'real'; expected one of 'interpolates', 'real_fake'"),
        (lambda c: gp.wgan_div(c, t(REAL), t(FAKE), points="real_fake", alpha=0.5), ValueError,
         "alpha is not used with points='real_fake'"),
        (lambda c: gp.dragan(c, t(REAL), perturbation="gaussian", alpha=0.5), ValueError,
         "alpha is not used with perturbation='gaussian'"),
        (lambda c: gp.dragan(c, t(REAL), perturbation="normal"), ValueError,
         "unknown perturbation 'normal'"),
        (lambda c: gp.dragan(c, t(REAL), ddof=2), ValueError, "ddof must be 0"),
        (lambda c: gp.dragan(c, t(REAL), shape="cubic"), ValueError, "unknown shape 'cubic'"),
    ],
)
def test_same_errors_as_torch(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call(model_or_fn())
    assert "gpreg_keras" in str(info.value) or exc is KeyError


def test_wrong_layout_reports_shapes():
    if BACKEND == "jax":
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(1)])
        critic = gp.stateless_critic(model)
    else:
        critic = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                                   keras.layers.Flatten(), keras.layers.Dense(1)])
    nchw = t(np.zeros((2, 3, 8, 8), "float32"))
    with pytest.raises(ValueError, match=r"(?s)critic failed on the evaluation points of shape "
                                         r"\(2, 3, 8, 8\).*channels-first vs channels-last"):
        gp.r1(critic, nchw)


def test_seed_reproduces_and_differs():
    def c(x):  # nonlinear: the penalty depends on where the points fall
        return ops.sum(x * x, axis=1)

    a = float(gp.wgan_gp(c, t(REAL), t(FAKE), seed=3))
    b = float(gp.wgan_gp(c, t(REAL), t(FAKE), seed=3))
    d = float(gp.wgan_gp(c, t(REAL), t(FAKE), seed=4))
    assert a == b and a != d
    e = float(gp.dragan(c, t(REAL), seed=keras.random.SeedGenerator(5)))
    f = float(gp.dragan(c, t(REAL), seed=keras.random.SeedGenerator(5)))
    assert e == f


def test_channels_first_and_last_give_the_same_norms():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 4, 5)).astype("float32")
    x = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    first = gp.grad_norm(lambda z: ops.sum(z * t(w), axis=(1, 2, 3)), t(x))
    last = gp.grad_norm(lambda z: ops.sum(z * t(w.transpose(1, 2, 0)), axis=(1, 2, 3)),
                        t(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(ops.convert_to_numpy(first), ops.convert_to_numpy(last),
                               rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(first), [np.linalg.norm(w)] * 2, rtol=1e-5)


def test_multi_input_keras_model_takes_a_list():
    a_in, b_in = keras.Input((2,)), keras.Input((3,))
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a_in, b_in]))
    model = keras.Model([a_in, b_in], out)
    critic = gp.stateless_critic(model) if BACKEND == "jax" else model
    real = (t(REAL[:, :2]), t(REAL))
    fake = (t(FAKE[:, :2]), t(FAKE))
    kernel = ops.convert_to_numpy(model.layers[-1].kernel)
    norms = ops.convert_to_numpy(gp.grad_norm(critic, real))
    np.testing.assert_allclose(norms, [np.linalg.norm(kernel)] * 4, rtol=1e-5)
    assert np.isfinite(float(gp.wgan_gp(critic, real, fake, seed=0)))


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_zero_input_gradient_is_finite(name):
    """A dead-ReLU critic: exactly zero input gradients, finite penalty and gradients."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(1)])
    model.layers[0].kernel.assign(np.ones((3, 4), "float32"))
    model.layers[0].bias.assign(np.full((4,), -100.0, "float32"))
    from gpreg_keras._fixture import penalty_and_grads

    fn = gp.get_penalty(name)
    args = (t(REAL), t(FAKE)) if name in ("wgan_gp", "wgan_lp", "zero_gp", "max_gp",
                                         "wgan_div") else (
        (t(FAKE),) if name == "r2" else (t(REAL),))
    value, grads = penalty_and_grads(model, fn, args, {"seed": 1} if name not in (
        "r1", "r2") else {})
    assert np.isfinite(float(ops.convert_to_numpy(value)))
    for g in grads:
        assert np.all(np.isfinite(ops.convert_to_numpy(g)))


def test_check_finite_names_the_penalty_and_the_samples():
    bad = REAL.copy()
    bad[1, 0] = np.nan

    def critic(x):  # nonlinear, so the NaN reaches the input gradient
        return ops.sum(x * x, axis=1)

    with pytest.raises(FloatingPointError, match=r"gpreg_keras.wgan_gp: an evaluation point .* "
                                                 r"sample\(s\) 1\."):
        gp.wgan_gp(critic, t(bad), t(FAKE), seed=0, check_finite=True)
    value = gp.wgan_gp(critic, t(bad), t(FAKE), seed=0)
    assert np.isnan(float(ops.convert_to_numpy(value)))  # off by default: NaN stays visible


def test_a_batchnorm_layer_added_after_calls_without_one_warns_at_the_next_call(monkeypatch):
    """The walk for BatchNormalization is kept for a model that has none, and redone when its
    layer tree changes (here a layer added to a Sequential inside the model)."""
    import warnings

    from gpreg import BatchNormWarning
    from gpreg_keras import _core

    inner = keras.Sequential([keras.layers.Dense(4)])
    model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
    x = t(REAL)
    critic = lambda: gp.stateless_critic(model, training=True) if BACKEND == "jax" else model  # noqa: E731
    walks = []
    walk = keras.Layer._flatten_layers
    monkeypatch.setattr(keras.Layer, "_flatten_layers",
                        lambda self, *a, **k: walks.append(self) or walk(self, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchNormWarning)
        gp.r1(critic(), x)
        first = walks.count(model)
        gp.r1(critic(), x)
    assert first >= 1 and walks.count(model) == first  # the second call did not walk
    inner.add(keras.layers.BatchNormalization(name="late_bn"))
    assert not _core._without_batchnorm[model].unchanged(model)
    with pytest.warns(BatchNormWarning, match=r"\(late_bn\)"):
        gp.r1(critic(), x)


def test_batchnorm_layer_warns_once():
    from gpreg import BatchNormWarning

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)])
    critic = gp.stateless_critic(model, training=True) if BACKEND == "jax" else model
    with pytest.warns(BatchNormWarning, match=r"\(bn\).*training=True"):
        gp.r1(critic, t(REAL))
