"""check_critic in Keras 3 (run once per backend), and the double-backprop pitfalls of
Keras's TensorFlow backend measured against independent references.

The references: the finite differences inside check_critic, and the same critic rebuilt in
PyTorch float64 with copied weights (torch's LayerNorm, GroupNorm and BatchNorm are exact to
second order: tests/torch/test_check.py).
"""

from __future__ import annotations

import contextlib
import functools
import random

import keras
import numpy as np
import pytest
from keras import layers

import gpreg_keras as gp
from gpreg import BUILTIN_NAMES
from gpreg._check import CheckReport
from gpreg_keras import check_critic

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


def state(model):
    return [(v.path, np.array(keras.ops.convert_to_numpy(v))) for v in model.variables]


def test_a_batchnorm_model_is_never_run_nor_changed():
    """Every variable (moving statistics, the dropout seed generator's state) bit-identical,
    in its dtype; Python's and NumPy's global random states unchanged (rebuilding a model
    from its config draws initializer seeds from Python's random)."""
    model = keras.Sequential([keras.Input((3,)), dense(8, 1), layers.BatchNormalization(),
                              layers.Dropout(0.25), layers.LeakyReLU(0.2), dense(1, 2)])
    before, py, npr = state(model), random.getstate(), np.random.get_state()  # noqa: NPY002
    check_critic(model, REAL, FAKE, penalties=["r2"], training=True, directions=1)
    check_critic(gp.stateless_critic(model), REAL, FAKE, penalties=["r1"], directions=1,
                 kwargs={"training": True})
    after = state(model)
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, a), (_, b) in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    assert {v.dtype for v in model.weights} == {"float32"}
    assert random.getstate() == py
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), npr))  # noqa: NPY002


class Projection(keras.Model):
    """A projection critic with call(self, image, label): score = w·h + <embed(label), h>,
    h = tanh(LayerNorm(W x)); a dict output when ``as_dict``."""

    def __init__(self, classes=3, as_dict=False, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.as_dict = classes, as_dict
        kw = {"dtype": self.dtype_policy}
        self.a, self.out = dense(8, 3, **kw), dense(1, 4, **kw)
        self.norm = layers.LayerNormalization(**kw)
        self.embed = layers.Embedding(classes, 8, embeddings_initializer=(
            keras.initializers.RandomNormal(0.0, 0.5, seed=5)), **kw)

    def call(self, image, label):
        h = keras.ops.tanh(self.norm(self.a(image)))
        score = self.out(h)[:, 0] + keras.ops.sum(self.embed(label) * h, axis=1)
        return {"adv": score, "features": h} if self.as_dict else score

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "as_dict": self.as_dict}


LABELS = np.array([0, 1, 2, 0, 1, 2])


def projection(as_dict=False):
    model = Projection(as_dict=as_dict)
    model(REAL.astype("float32"), LABELS)
    return model


def test_conditional_and_dict_output_critics_through_args_and_output():
    model = projection()
    report = check_critic(model, REAL, FAKE, args=(LABELS,), penalties=SOME, directions=2)
    assert report.ok, report.summary()
    assert report.dtype == ("float64" if ON_TF else "float32")
    assert any("embeddings" in g for g in report.groups)
    if ON_TF:
        assert max(max(g.values()) for g in report.errors.values()) < 1e-9
    as_dict = check_critic(projection(as_dict=True), REAL, FAKE, args=(LABELS,),
                           output="adv", penalties=["r1"], directions=1)
    assert as_dict.ok, as_dict.summary()
    with pytest.raises(TypeError, match="output="):
        check_critic(projection(as_dict=True), REAL, FAKE, args=(LABELS,), penalties="r1")
    through = check_critic(gp.stateless_critic(model), REAL, FAKE, args=(LABELS,),
                           penalties=["r1"], directions=1)
    assert through.ok and through.groups == report.groups, through.summary()


class StyleCond(keras.Model):
    """D(img, c) with a float conditioning vector c and a dict output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lin, self.proj = dense(1, 6), dense(1, 7)

    def call(self, img, c):
        return {"adv": keras.ops.tanh(self.lin(img))[:, 0] * self.proj(c)[:, 0],
                "aux": keras.ops.sum(c, axis=1)}


def test_check_finite_through_args_and_output():
    """check_finite names the sample whose score a non-finite row of args made non-finite,
    and the sample whose point is non-finite (JAX: through stateless_critic)."""
    model = StyleCond()
    c = RNG.normal(size=(6, 2)).astype("float32")
    model(REAL.astype("float32"), c)
    critic = gp.stateless_critic(model) if BACKEND == "jax" else model
    t = keras.ops.convert_to_tensor
    real, fake, alpha = t(REAL, "float32"), t(FAKE, "float32"), t(np.linspace(0.1, 0.9, 6))
    kw = {"args": (t(c),), "output": "adv", "alpha": keras.ops.cast(alpha, "float32")}
    plain = gp.wgan_gp(critic, real, fake, **kw)
    checked = gp.wgan_gp(critic, real, fake, check_finite=True, **kw)
    assert float(keras.ops.convert_to_numpy(plain)) == float(keras.ops.convert_to_numpy(checked))
    bad_c = c.copy()
    bad_c[4, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"output is not finite .*sample\(s\) 4\."):
        gp.wgan_gp(critic, real, fake, check_finite=True, **{**kw, "args": (t(bad_c),)})
    bad_real = REAL.astype("float32")
    bad_real[2, 0] = np.inf
    with pytest.raises(FloatingPointError, match=r"evaluation point .*sample\(s\) 2\."):
        gp.r1(critic, t(bad_real), args=(t(c),), output="adv", check_finite=True)
    report = check_critic(model, REAL, FAKE, args=(c,), output="adv", penalties=["r1"],
                          directions=1)
    assert report.ok, report.summary()


def test_a_conditional_batchnorm_critic_reports_coupling_through_args():
    model = keras.Sequential([keras.Input((3,)), dense(8, 1), layers.BatchNormalization(),
                              layers.Activation("tanh"), dense(1, 2)])
    inputs = [keras.Input((3,)), keras.Input((1,))]
    cond = keras.Model(inputs, model(inputs[0]) * inputs[1])
    labels = np.linspace(0.5, 1.5, 6)[:, None]
    coupled = check_critic(cond, REAL, FAKE, args=(labels,), penalties=["wgan_gp"],
                           training=True, directions=1)
    assert coupled.coupling.coupled and not coupled.ok, coupled.summary()


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


def test_functions_are_refused_with_the_way_to_pass_the_model():
    model = critic(layers.LayerNormalization())
    before = state(model)
    for fn in (lambda x: model(x), model.call, functools.partial(model, training=True)):
        with pytest.raises(TypeError, match=r"args=\(labels,\)") as err:
            check_critic(fn, REAL, FAKE, penalties=["r1"], directions=1)
        assert "never run nor changed" in str(err.value) and "stateless_critic" in str(err.value)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(before, state(model)))


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

    class WithMoments(keras.layers.Layer):
        """x W1 -> normalized with tf.nn.moments -> tanh -> W2 (a user's own layer)."""

        def build(self, shape):
            init = keras.initializers.RandomNormal(seed=3)
            self.w1 = self.add_weight(shape=(3, 8), initializer=init, name="w1")
            self.w2 = self.add_weight(shape=(8, 1), initializer=init, name="w2")

        def call(self, x):
            h = x @ self.w1
            mean, var = tf.nn.moments(h, axes=[1], keepdims=True)
            return tf.tanh(tf.nn.batch_normalization(h, mean, var, None, None, 1e-3)) @ self.w2

    def test_a_layer_with_tf_nn_moments(monkeypatch):
        from gpreg_keras import _tensorflow

        layer = WithMoments(dtype="float64")
        layer(REAL)
        assert check_critic(layer, REAL, FAKE, penalties=["wgan_gp", "r1"]).ok
        monkeypatch.setattr(_tensorflow, "exact_moments", contextlib.nullcontext)
        flagged = check_critic(layer, REAL, FAKE, penalties=["wgan_gp", "r1"])
        w1, w2 = (v.path for v in layer.trainable_variables)
        assert not flagged.ok and flagged.errors["r1"][w1] > 1e-3
        assert flagged.errors["r1"][w2] < 1e-9

    class Float32Inside(keras.layers.Layer):
        """A float32 constant made inside call: the float64 copy fails (TensorFlow does not
        promote), so the check falls back to float32."""

        def build(self, shape):
            self.w = self.add_weight(shape=(3, 1), initializer=keras.initializers.Ones())

        def call(self, x):
            return keras.ops.tanh(x @ self.w + x @ tf.ones((3, 1), tf.float32))

    def test_a_critic_that_fails_in_float64_is_checked_in_float32():
        layer = Float32Inside()
        layer(REAL.astype("float32"))
        report = check_critic(layer, REAL, FAKE, penalties=["wgan_gp"])
        assert report.dtype == "float32" and report.ok, report.summary()
        assert report.rtol == 5e-3 and "in float64" in report.notes[0]  # the build call fails

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
