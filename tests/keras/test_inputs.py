"""What gpreg_keras accepts and refuses at the edges: NumPy inputs on every backend, ragged and
sparse points, dtypes under mixed precision, tensors of another framework, BatchNorm warnings
(tf-keras, through args=, the training flag), check_finite through args=, and Keras's
compiled torch path. Expected numbers are closed forms or the float64 torch twin."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers, ops

import gpreg
import gpreg_keras as gp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import as64, penalty

BACKEND = keras.backend.backend()
B, D = 4, 3


def linear(x):
    """D(x) = 2 Σ x: input gradient 2 everywhere, norm 2√3 for three features."""
    return 2.0 * ops.sum(x, axis=1)


NORM = 2.0 * np.sqrt(D)


def value(x):
    return float(ops.convert_to_numpy(x))


def test_numpy_inputs_on_every_backend():
    """Issue 14.12: Keras's torch backend refused NumPy real/fake/alpha/noise, which TensorFlow
    and JAX accept and the docs promise."""
    real, fake = np.ones((B, D), "float32"), np.zeros((B, D), "float32")
    alpha, noise = np.full(B, 0.5, "float32"), np.ones((B, D), "float32")
    want = 10 * (NORM - 1) ** 2
    np.testing.assert_allclose(value(gp.wgan_gp(linear, real, fake, alpha=alpha)), want,
                               rtol=1e-6)
    np.testing.assert_allclose(value(gp.wgan_gp(linear, real, fake, seed=0)), want, rtol=1e-6)
    np.testing.assert_allclose(value(gp.dragan(linear, real, alpha=alpha, noise=noise)), want,
                               rtol=1e-6)
    np.testing.assert_allclose(value(gp.r1(linear, real)), 5 * NORM**2, rtol=1e-6)
    np.testing.assert_allclose(value(gp.r2(linear, fake)), 5 * NORM**2, rtol=1e-6)
    np.testing.assert_allclose(value(gp.gradient_penalty(linear, real, shape="squared")),
                               NORM**2, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(gp.grad_norm(linear, real)),
                               np.full(B, NORM), rtol=1e-6)
    with pytest.raises(TypeError, match="real has dtype int64; gradient penalties need "
                                        "floating-point points"):
        gp.r1(linear, np.ones((B, D), "int64"))


def test_dtype_mismatch_gives_the_keras_idiom_and_mixed_policies_cast_fake():
    """Issue 14.14: the hint said fake.to(real.dtype) (PyTorch); under mixed_float16 (float32
    data, a float16 generator) the mismatch is normal: fake is cast to real's dtype."""
    real = ops.ones((B, D), dtype="float32")
    fake16 = ops.zeros((B, D), dtype="float16")
    with pytest.raises(TypeError, match=r"different dtypes \(real\[0\] float32, fake\[0\] "
                                        r"float16\); cast them to one dtype, e\.g\. "
                                        r"keras\.ops\.cast\(fake, real\.dtype\)"):
        gp.wgan_gp(linear, real, fake16, alpha=0.5)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        got = value(gp.wgan_gp(linear, real, fake16, alpha=0.5))
    finally:
        keras.config.set_dtype_policy(policy)
    np.testing.assert_allclose(got, 10 * (NORM - 1) ** 2, rtol=1e-6)


def foreign_array():
    """A tensor of a framework Keras does not run here, and that framework's name."""
    if BACKEND != "jax":
        import jax.numpy as jnp

        return jnp.ones((B, D)), "jax"
    import torch

    return torch.ones(B, D), "torch"


def test_tensor_of_another_framework_suggests_the_backend():
    """Issue 14.14: with KERAS_BACKEND unset (TensorFlow) and JAX arrays the message only
    said convert_to_tensor; it now names the backend to set."""
    x, other = foreign_array()
    with pytest.raises(TypeError, match=rf"got .*Keras runs its {BACKEND} backend: if the model "
                                        rf"is meant for {other}, set KERAS_BACKEND={other} "
                                        rf"before the first `import keras`"):
        gp.r1(linear, x)


def sparse_points():
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return [("ragged tensor", tf.ragged.constant([[1.0, 2.0], [3.0]])),
                ("sparse tensor", tf.sparse.from_dense(tf.eye(3)))]
    if BACKEND == "jax":
        import jax.numpy as jnp
        from jax.experimental import sparse

        return [("sparse array (BCOO)", sparse.BCOO.fromdense(jnp.eye(3)))]
    import torch

    return [("sparse tensor", torch.eye(3).to_sparse())]


@pytest.mark.parametrize("index", [0, 1])
def test_ragged_and_sparse_points_are_refused(index):
    """Issue 14.14: ragged points to dragan failed with "Can't convert Python sequence with
    mixed types"; sparse ones with a conversion error."""
    cases = sparse_points()
    if index >= len(cases):
        pytest.skip("one sparse kind on this backend")
    kind, x = cases[index]
    for call in (lambda: gp.dragan(linear, x, seed=0), lambda: gp.r1(linear, x)):
        with pytest.raises(TypeError, match=rf"real is a {kind.replace('(', '.').replace(')', '.')}"
                                            rf"; gradient penalties need dense tensors"):
            call()


# --- BatchNorm warnings, check_finite and the training flag through args= -----------------

class Labelled(keras.Model):
    """``call(self, x, labels, training=None)``, optionally with BatchNormalization."""

    def __init__(self, batchnorm=False):
        super().__init__()
        self.body = layers.Dense(5, name="body")
        self.norm = layers.BatchNormalization(name="bn") if batchnorm else None
        self.head = layers.Dense(1, name="head")
        self.embed = layers.Embedding(3, 5, name="embed")

    def call(self, x, labels, training=None):
        h = self.body(x)
        if self.norm is not None:
            h = self.norm(h, training=training)
        h = ops.tanh(h)
        return self.head(h)[:, 0] + ops.sum(self.embed(labels) * h, axis=1)


def built(model):
    x = ops.convert_to_tensor(np.zeros((B, D), "float32"))
    labels = ops.convert_to_tensor(np.arange(B) % 3)
    model(x, labels)
    return model, labels


def direct(model, **kw):
    return gp.stateless_critic(model, **kw) if BACKEND == "jax" else model


def bn_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [c for c in caught if c.category is gpreg.BatchNormWarning]


def test_batchnorm_warning_through_args_and_the_training_flag():
    """Issue 15.4/15.5: the BatchNormWarning works through args=; a penalty that runs the
    critic with training=False (kwargs, or stateless_critic(training=False)) uses the moving
    statistics, couples nothing and does not warn."""
    x = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(B, D)).astype("float32"))
    model, labels = built(Labelled(batchnorm=True))
    assert not bn_warnings(lambda: gp.r1(direct(model), x, args=(labels,),
                                         kwargs={"training": False}))
    if BACKEND == "jax":
        assert not bn_warnings(lambda: gp.r1(direct(model, training=False), x,
                                             args=(labels,)))
    caught = bn_warnings(lambda: gp.r1(direct(model), x, args=(labels,),
                                       kwargs={"training": True}))
    assert len(caught) == 1 and "(bn)" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller
    assert not bn_warnings(lambda: gp.r1(direct(model), x, args=(labels,),
                                         kwargs={"training": True}))  # once per critic


def test_check_finite_through_args_names_the_sample():
    """Issue 15.4: check_finite=True with a conditional critic called through args=."""
    model, labels = built(Labelled())
    x = np.random.default_rng(1).normal(size=(B, D)).astype("float32")
    x[2, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"gpreg_keras.r1: an evaluation point .* "
                                                 r"sample\(s\) 2\."):
        gp.r1(direct(model), ops.convert_to_tensor(x), args=(labels,), check_finite=True)
    x[2, 1] = 0.0
    assert np.isfinite(value(gp.r1(direct(model), ops.convert_to_tensor(x), args=(labels,),
                                   check_finite=True)))


if BACKEND == "tensorflow":

    def test_tf_keras_batchnorm_critic_warns():
        """Issue 14.13: tf-keras (Keras 2) BatchNormalization critics got no BatchNormWarning
        though the docs promise one."""
        import tensorflow as tf
        import tf_keras

        model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(D,)),
                                     tf_keras.layers.BatchNormalization(name="tfk_bn"),
                                     tf_keras.layers.Dense(1)])
        x = tf.random.normal((B, D))
        assert not bn_warnings(lambda: gp.r1(model, x, kwargs={"training": False}))
        caught = bn_warnings(lambda: gp.r1(model, x, kwargs={"training": True}))
        assert len(caught) == 1 and "tfk_bn" in str(caught[0].message)
        plain = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(D,))])
        assert not bn_warnings(lambda: gp.r1(plain, x))


if BACKEND == "torch":

    def test_compiled_torch_train_step_runs_the_penalty_eagerly():
        """Issue 14.14: with compile(jit_compile=True) Keras runs train_step under
        torch.compile, and gpreg failed inside it ("a leaf Variable that requires grad is
        being used in an in-place operation"). The penalty now runs eagerly inside the
        compiled step (AOTAutograd has no double backward); one SGD step on R1 equals the
        float64 torch twin's."""
        import torch

        keras.utils.set_random_seed(0)
        critic = keras.Sequential([keras.Input((D,)), layers.Dense(4, activation="tanh"),
                                   layers.Dense(1)])

        class R1Only(keras.Model):
            def __init__(self):
                super().__init__()
                self.critic = critic

            def call(self, x):
                return self.critic(x)

            def train_step(self, data):
                loss = gp.r1(self.critic, data)
                params = [v.value for v in self.critic.trainable_variables]
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
                with torch.no_grad():
                    self.optimizer.apply(grads, self.critic.trainable_variables)
                return {"loss": loss}

        model = R1Only()
        x = np.random.default_rng(3).normal(size=(B, D)).astype("float32")
        model(x)
        start = [ops.convert_to_numpy(v).astype(np.float64) for v in critic.trainable_variables]
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
        model.fit(x, batch_size=B, epochs=1, verbose=0, shuffle=False)
        leaves = [as64(w).requires_grad_(True) for w in start]

        def twin(p):
            return torch.tanh(p @ leaves[0] + leaves[1]) @ leaves[2] + leaves[3]

        _, grads, _ = penalty("r1", twin, leaves, [as64(x)])
        for v, w, g in zip(critic.trainable_variables, start, grads):
            np.testing.assert_allclose(ops.convert_to_numpy(v), w - 0.1 * g, rtol=1e-5,
                                       atol=1e-6)


def test_numpy_noise_and_alpha_are_converted_at_every_call():
    """A plugin evaluated at perturbed points with NumPy noise (and a NumPy alpha at
    interpolates): the second and later calls, whose points passed the checks before, convert
    them as the first does (on the torch backend they were passed on as NumPy arrays)."""
    from gpreg import _specs

    registry = dict(_specs._registry)
    try:
        gpreg.register_penalty(gpreg.PenaltySpec(
            "test_perturbed", "interpolates", "two_sided",
            point_options=("interpolates", "perturbed_real")))
        penalty = gp.get_penalty("test_perturbed")
        model = keras.Sequential([keras.Input((3,)), layers.Dense(1)])
        if keras.backend.backend() == "jax":
            model = gp.stateless_critic(model, [v.value for v in model.trainable_variables],
                                        [v.value for v in model.non_trainable_variables])
        real = ops.convert_to_tensor(np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3))
        fake = ops.convert_to_tensor(np.zeros((4, 3), dtype="float32"))
        noise = np.random.default_rng(0).random((4, 3)).astype("float32")
        alpha = np.full(4, 0.5, dtype="float32")
        values = [float(ops.convert_to_numpy(penalty(
            model, real, fake, points="perturbed_real", noise=noise)))
            for _ in range(3)]
        values += [float(ops.convert_to_numpy(penalty(model, real, fake, alpha=alpha)))
                   for _ in range(3)]
        assert values[0] == values[1] == values[2] and values[3] == values[4] == values[5]
    finally:
        _specs._registry.clear()
        _specs._registry.update(registry)
