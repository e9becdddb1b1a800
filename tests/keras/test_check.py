"""check_critic in Keras 3 (run once per backend), and the double-backprop pitfalls of
Keras's TensorFlow backend measured against independent references.

The references: the finite differences inside check_critic, and the same critic rebuilt in
PyTorch float64 with copied weights (torch's LayerNorm, GroupNorm and BatchNorm are exact to
second order: tests/torch/test_check.py).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
from keras import layers

import gpreg_keras as gp
from gpreg import BUILTIN_NAMES
from gpreg._check import CheckReport
from gpreg_keras._check import check_critic

pytestmark = pytest.mark.filterwarnings("ignore::gpreg.BatchNormWarning")

BACKEND = keras.backend.backend()
ON_TF = BACKEND == "tensorflow"
# Fewer penalties off TensorFlow: every check there runs jit compilations or Keras's torch ops.
SOME = {"tensorflow": None, "jax": ["wgan_gp"]}.get(BACKEND, ["wgan_gp", "r1"])
RNG = np.random.default_rng(0)
REAL = RNG.normal(size=(6, 3))
FAKE = RNG.normal(size=(6, 3))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: intra-op threads only contend on a shared machine."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dense(units, seed, **kw):
    """Seeded initializers (keras.utils.set_random_seed would import TensorFlow on JAX)."""
    return layers.Dense(units, kernel_initializer=keras.initializers.GlorotUniform(seed),
                        bias_initializer=keras.initializers.RandomNormal(0.0, 0.1, seed), **kw)


def critic(norm=None, slope=0.2, seed=1, dtype=None):
    """Dense -> norm -> LeakyReLU -> Dense: the WGAN-GP paper's critic shape."""
    kw = {} if dtype is None else {"dtype": dtype}
    inner = [] if norm is None else [norm]
    return keras.Sequential([keras.Input((3,), **kw), dense(8, seed, **kw), *inner,
                             layers.LeakyReLU(slope, **kw), dense(1, seed + 1, **kw)])


def weights(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def test_layernorm_critic_passes():
    model = critic(layers.LayerNormalization())
    report = check_critic(model, REAL, FAKE, penalties=SOME, directions=3 if ON_TF else 2)
    assert isinstance(report, CheckReport)
    assert report.ok, report.summary()
    assert report.framework == f"keras ({BACKEND})"
    assert report.groups == tuple(v.path for v in model.trainable_variables)
    if ON_TF:
        assert report.dtype == "float64" and [p.penalty for p in report.penalties] == list(
            BUILTIN_NAMES)
        assert max(max(g.values()) for g in report.errors.values()) < 1e-9
    else:
        assert report.dtype == "float32" and "computes some float64 operations in float32" in (
            report.summary())


def test_batchnorm_in_training_mode_reports_coupling():
    model = critic(layers.BatchNormalization())
    coupled = check_critic(model, REAL, FAKE, penalties=["wgan_gp"], training=True,
                           directions=1)
    assert coupled.coupling.coupled and not coupled.ok
    assert "mixes the samples of a batch" in coupled.summary()
    inference = check_critic(model, REAL, FAKE, penalties=["wgan_gp"], directions=2)
    assert inference.ok and not inference.coupling.coupled, inference.summary()


def test_the_users_model_is_not_changed():
    model = critic(layers.BatchNormalization())
    before = weights(model)
    check_critic(model, REAL, FAKE, penalties=["r2"], training=True, directions=1)
    after = weights(model)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(before, after))
    assert {v.dtype for v in model.weights} == {"float32"}


def test_stateless_critic_closure_is_checked_through_its_model():
    model = critic(layers.LayerNormalization())
    report = check_critic(gp.stateless_critic(model), REAL, FAKE, penalties=["r1"],
                          directions=2)
    assert report.ok, report.summary()
    assert report.groups == tuple(v.path for v in model.trainable_variables)


def test_arguments_and_seed():
    model = critic()
    only_real = check_critic(model, REAL, directions=1)
    assert [p.penalty for p in only_real.penalties] == ["r1", "dragan"]
    with pytest.raises(ValueError, match="r2 is evaluated at fake and needs fake samples"):
        check_critic(model, REAL, penalties="r2")
    with pytest.raises(TypeError, match="critic must be callable"):
        check_critic(None, REAL, FAKE)
    if not ON_TF:
        with pytest.raises(ValueError, match="a float64 check is not possible there"):
            check_critic(model, REAL, FAKE, dtype="float64")
    a = check_critic(model, REAL, FAKE, penalties="max_gp", seed=5, directions=1)
    b = check_critic(model, REAL, FAKE, penalties="max_gp", seed=5, directions=1)
    assert a.errors == b.errors and a.seed == 5


def test_plain_function_critic():
    model = critic(layers.LayerNormalization())
    report = check_critic(lambda x: model(x), REAL, FAKE, penalties=["r1"], directions=1)
    if BACKEND == "jax":  # a plain function's variables are out of jax.grad's reach
        assert report.groups == () and "cannot be reached" in report.summary()
        assert report.unchecked == ("model (6 variables)",) and not report.ok
    else:
        assert report.ok, report.summary()
        assert report.groups[0] == "model: " + model.trainable_variables[0].path


if ON_TF:
    import tensorflow as tf
    import torch

    import gpreg_torch
    from gpreg_keras import _tensorflow

    def without_exact_moments(monkeypatch):
        monkeypatch.setattr(_tensorflow, "exact_moments", contextlib.nullcontext)

    def test_motivating_case_flagged_without_the_fix_and_passing_with_it(monkeypatch):
        """Dense -> LayerNormalization -> LeakyReLU -> Dense, float64, Keras 3 on TensorFlow:
        tf.nn.moments's stop_gradient leaves the penalty's value right and its parameter
        gradient wrong for every parameter before the normalization."""
        model = critic(layers.LayerNormalization(), dtype="float64")
        fixed = check_critic(model, REAL, FAKE, directions=2)
        assert fixed.ok, fixed.summary()
        without_exact_moments(monkeypatch)
        broken = check_critic(model, REAL, FAKE, directions=2)
        assert not broken.ok
        before = [v.path for v in model.trainable_variables[:2]]  # dense kernel and bias
        assert max(p.max_error for p in broken.penalties) > 1e-2
        for p in broken.penalties:
            if p.value == 0.0:  # wgan_lp below its target: nothing to differentiate
                continue
            assert p.status == "mismatch", p
            assert all(p.groups[i].rel_error > 1e-3 for i in range(2)), p
            assert all(g.rel_error < 1e-9 for g in p.groups[2:]), p  # after the norm: right
        assert all(name in broken.summary() for name in before)
        assert not broken.coupling.coupled  # the value side is right, so is the coupling test

    NORMS = {
        "layer": (lambda: layers.LayerNormalization(dtype="float64"), False),
        "group": (lambda: layers.GroupNormalization(groups=2, dtype="float64"), False),
        "batch-inference": (lambda: layers.BatchNormalization(dtype="float64"), False),
        "batch-training": (lambda: layers.BatchNormalization(dtype="float64"), True),
    }

    def reference_pair(kind):
        """The Keras float64 critic with non-trivial weights, and the same critic in torch.

        The Keras LeakyReLU keeps its slope in float32 (TensorFlow's LeakyRelu attribute), so
        the torch twin uses float32(0.2) to compare at float64 round-off."""
        make, training = NORMS[kind]
        rng = np.random.default_rng(7)
        model = critic(make(), dtype="float64")
        for v in model.trainable_variables:
            v.assign(3.0 * v.numpy() + 0.1 * rng.normal(size=v.shape))  # norms above 1
        for v in model.non_trainable_variables:
            v.assign(rng.uniform(0.5, 1.5, size=v.shape))  # moving statistics
        norm = model.layers[1]
        w = [v.numpy() for v in model.trainable_variables]
        lin1, lin2 = torch.nn.Linear(3, 8).double(), torch.nn.Linear(8, 1).double()
        if kind == "layer":
            tnorm = torch.nn.LayerNorm(8, eps=norm.epsilon)
        elif kind == "group":
            tnorm = torch.nn.GroupNorm(norm.groups, 8, eps=norm.epsilon)
        else:
            tnorm = torch.nn.BatchNorm1d(8, eps=norm.epsilon).double().train(training)
            tnorm.running_mean.copy_(torch.tensor(norm.moving_mean.numpy()))
            tnorm.running_var.copy_(torch.tensor(norm.moving_variance.numpy()))
        tnorm = tnorm.double()
        with torch.no_grad():
            for p, a in zip([lin1.weight, lin1.bias, tnorm.weight, tnorm.bias, lin2.weight,
                             lin2.bias], [w[0].T, w[1], w[2], w[3], w[4].T, w[5]]):
                p.copy_(torch.tensor(np.ascontiguousarray(a)))
        twin = torch.nn.Sequential(lin1, tnorm, torch.nn.LeakyReLU(float(np.float32(0.2))),
                                   lin2)
        return model, twin, training

    def penalty_args(name, convert):
        alpha = np.linspace(0.1, 0.9, 6)
        noise = np.random.default_rng(3).uniform(size=REAL.shape)
        if name in ("wgan_gp", "wgan_lp", "zero_gp", "max_gp", "wgan_div"):
            return (convert(REAL), convert(FAKE)), {"alpha": convert(alpha)}
        if name == "r2":
            return (convert(FAKE),), {}
        if name == "dragan":
            return (convert(REAL),), {"alpha": convert(alpha), "noise": convert(noise)}
        return (convert(REAL),), {}

    def tf_grads(model, name, training):
        args, kw = penalty_args(name, tf.constant)
        fn = (lambda x: model(x, training=True)) if training else model
        with tf.GradientTape() as tape:
            value = gp.get_penalty(name)(fn, *args, **kw)
        grads = tape.gradient(value, model.trainable_variables)
        return [np.zeros(v.shape) if g is None else g.numpy()
                for g, v in zip(grads, model.trainable_variables)]

    def torch_grads(twin, name):
        args, kw = penalty_args(name, torch.tensor)
        value = gpreg_torch.get_penalty(name)(twin, *args, **kw)
        params = list(twin.parameters())
        grads = torch.autograd.grad(value, params, allow_unused=True)
        g = [np.zeros(tuple(p.shape)) if x is None else x.numpy() for x, p in zip(grads, params)]
        return [g[0].T, g[1], g[2], g[3], g[4].T, g[5]]  # to Keras layouts

    def max_error(actual, expected):
        """Largest difference relative to the largest entry of the whole gradient."""
        scale = max(float(np.max(np.abs(e))) for e in expected)
        return max(float(np.max(np.abs(a - e))) for a, e in zip(actual, expected)) / scale

    @pytest.mark.parametrize("kind", list(NORMS))
    def test_normalization_gradients_match_torch_for_every_penalty(kind, monkeypatch):
        """With gpreg's exact moments the penalty gradients equal torch's to 1e-6 (measured:
        ~1e-15) for every penalty; without them LayerNorm, GroupNorm and BatchNorm in
        training mode are wrong (BatchNorm in inference mode uses no moments)."""
        model, twin, training = reference_pair(kind)
        fixed, broken = {}, {}
        for name in BUILTIN_NAMES:
            expected = torch_grads(twin, name)
            actual = tf_grads(model, name, training)
            scale = max(float(np.max(np.abs(e))) for e in expected)
            for a, e in zip(actual, expected):
                np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6 * scale, err_msg=name)
            fixed[name] = max_error(actual, expected)
        with monkeypatch.context() as m:
            without_exact_moments(m)
            for name in BUILTIN_NAMES:
                broken[name] = max_error(tf_grads(model, name, training),
                                         torch_grads(twin, name))
        if kind == "batch-inference":
            assert max(broken.values()) < 1e-9
        else:
            assert max(broken.values()) > 1e-2, broken

    @pytest.mark.parametrize("kind", ["group", "batch-inference"])
    def test_check_critic_passes_group_and_batch_normalization(kind):
        model, _, _ = reference_pair(kind)
        report = check_critic(model, REAL, FAKE, penalties=["wgan_gp", "wgan_lp", "r1"])
        assert report.ok, report.summary()

    def test_leaky_relu_keeps_its_slope_in_float32():
        """TensorFlow's LeakyRelu has a float32 ``alpha`` attribute: a float64 critic with
        slope 0.2 computes with 0.20000000298..., float32-accurate (0.25 is exact)."""
        x = tf.constant([-1.0], tf.float64)
        assert float(layers.LeakyReLU(0.2, dtype="float64")(x)[0]) == -float(np.float32(0.2))
        assert float(layers.LeakyReLU(0.25, dtype="float64")(x)[0]) == -0.25

    def test_tf_keras_layernorm_is_exact_with_the_fix_and_flagged_without(monkeypatch):
        """tf-keras (Keras 2) LayerNormalization uses tf.nn.moments in float64 (wrong to
        second order); gpreg's exact_moments also swaps tf.nn.moments, so the penalty is right,
        and check_critic flags the computation without the swap."""
        import tf_keras

        from gpreg_keras import _tensorflow

        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential([tf_keras.layers.Dense(8, input_shape=(3,)),
                                     tf_keras.layers.LayerNormalization(),
                                     tf_keras.layers.Activation("tanh"),
                                     tf_keras.layers.Dense(1)])
        fixed = check_critic(model, REAL, FAKE, penalties=["wgan_gp"])
        assert fixed.ok, fixed.summary()
        monkeypatch.setattr(_tensorflow, "exact_moments", contextlib.nullcontext)
        broken = check_critic(model, REAL, FAKE, penalties=["wgan_gp"])
        assert not broken.ok and max(broken.errors["wgan_gp"].values()) > 1e-3

    def test_plain_tensorflow_functions_with_tf_nn_moments(monkeypatch):
        from gpreg_keras import _tensorflow

        w1 = tf.Variable(RNG.normal(size=(3, 8)))
        w2 = tf.Variable(RNG.normal(size=(8, 1)))

        def with_moments(x):
            h = x @ w1
            mean, var = tf.nn.moments(h, axes=[1], keepdims=True)
            return tf.tanh(tf.nn.batch_normalization(h, mean, var, None, None, 1e-3)) @ w2

        assert check_critic(with_moments, REAL, FAKE, penalties=["wgan_gp", "r1"]).ok
        monkeypatch.setattr(_tensorflow, "exact_moments", contextlib.nullcontext)
        flagged = check_critic(with_moments, REAL, FAKE, penalties=["wgan_gp", "r1"])
        assert not flagged.ok and flagged.errors["r1"]["w1"] > 1e-2
        assert flagged.errors["r1"]["w2"] < 1e-9

    def test_spectral_normalization_in_training_mode_projects_by_assignment():
        """Keras's SpectralNormalization, when training, assigns the normalized kernel to the
        layer (a projection, by design): no gradient flows through the normalization, so the
        check differs there; in inference mode the layer is a plain Dense and exact."""
        model = keras.Sequential([keras.Input((3,)), layers.SpectralNormalization(
            dense(8, 0)), layers.Activation("tanh"), dense(1, 1)])
        before = weights(model)
        assert check_critic(model, REAL, FAKE, penalties=["wgan_gp"]).ok
        training = check_critic(model, REAL, FAKE, penalties=["wgan_gp"], training=True)
        assert training.deterministic and not training.ok
        assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))

    def test_subclassed_model_without_config_is_checked_in_its_own_dtype():
        class Critic(keras.Model):
            def __init__(self):
                super().__init__()
                self.a, self.b = layers.Dense(8, activation="tanh"), layers.Dense(1)

            def call(self, x):
                return self.b(self.a(x))

        model = Critic()
        model(REAL.astype("float32"))
        report = check_critic(model, REAL, FAKE, penalties=["wgan_gp"])
        assert report.ok and report.dtype == "float32", report.summary()
        assert "could not rebuild the critic in float64" in report.summary()
