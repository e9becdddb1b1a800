"""Exact normalization statistics on TensorFlow wherever the critic comes from (a
``tf.function`` traced before the penalty, ``tf.compat.v1.nn.moments``, float16 inputs), no
deadlock with synchronized BatchNorm across replicas, and AutoGraph for the user's critic.
Expected numbers: a hand-written float64 torch twin (tests/support/gp_reference.py), closed
forms, or a hand-written nested tape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import gpreg
import gpreg_keras as gp
from gpreg._tolerances import tolerance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import as64, penalty

BACKEND = keras.backend.backend()
B = 6
RNG = np.random.default_rng(0)
REAL, FAKE = RNG.normal(size=(B, 3)), RNG.normal(size=(B, 3))
ALPHA = RNG.uniform(size=B)
LABELS = np.arange(B) % 3


def assert_grads(got, want, dtype="float64"):
    """Every parameter gradient, with ``atol`` relative to the largest entry of all of them
    (parameters whose exact gradient is zero, such as a bias before BatchNorm, included)."""
    tol = tolerance(dtype)
    top = max(float(np.max(np.abs(w))) for w in want)
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=tol["rtol"],
                                   atol=tol["atol"] * top, err_msg=f"parameter {i}")


def max_error(got, want):
    top = max(float(np.max(np.abs(w))) for w in want)
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - w))) for g, w in
               zip(got, want)) / top


if BACKEND == "tensorflow":
    import tensorflow as tf
    from keras import layers, ops

    def norm_layer(kind):
        return {"layer": lambda: layers.LayerNormalization(dtype="float64", name="norm"),
                "group": lambda: layers.GroupNormalization(groups=2, dtype="float64",
                                                           name="norm"),
                "batch": lambda: layers.BatchNormalization(dtype="float64", name="norm")}[kind]()

    class Conditional(keras.Model):
        """``call(self, x, labels, training=None)`` returning a dict: the structured,
        conditional critic of issue 15, with a normalization layer."""

        def __init__(self, kind):
            super().__init__(dtype="float64")
            self.body = layers.Dense(4, dtype="float64", name="body")
            self.norm = norm_layer(kind)
            self.head = layers.Dense(1, dtype="float64", name="head")
            self.embed = layers.Embedding(3, 4, dtype="float64", name="embed")

        def call(self, x, labels, training=None):
            h = ops.tanh(self.norm(self.body(x), training=training))
            return {"features": h,
                    "score": self.head(h)[:, 0] + ops.sum(self.embed(labels) * h, axis=1)}

    def torch_norm(kind, h, w, training):
        eps = 1e-3
        if kind == "layer":
            mu, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
        elif kind == "group":
            g = h.reshape(h.shape[0], 2, -1)
            mu, var = g.mean(2, keepdim=True), g.var(2, unbiased=False, keepdim=True)
            h = ((g - mu) / torch.sqrt(var + eps)).reshape(h.shape)
            return h * w["norm/gamma"] + w["norm/beta"]
        elif training:
            mu, var = h.mean(0, keepdim=True), h.var(0, unbiased=False, keepdim=True)
        else:  # moving statistics of a fresh layer: mean 0, variance 1
            mu, var = torch.zeros(()), torch.ones(())
        return (h - mu) / torch.sqrt(var + eps) * w["norm/gamma"] + w["norm/beta"]

    def leaves_of(model):
        leaves = [as64(v.numpy()).requires_grad_(True) for v in model.trainable_variables]
        names = ["/".join(v.path.split("/")[-2:]) for v in model.trainable_variables]
        return leaves, dict(zip(names, leaves))

    def reference(model, kind, conditional):
        leaves, w = leaves_of(model)
        y = torch.as_tensor(LABELS)

        def twin(x):
            h = torch.tanh(torch_norm(kind, x @ w["body/kernel"] + w["body/bias"], w, True))
            score = (h @ w["head/kernel"] + w["head/bias"])[:, 0]
            return score + (w["embed/embeddings"][y] * h).sum(1) if conditional else score

        value, grads, _ = penalty("wgan_gp", twin, leaves, [as64(REAL)], [as64(FAKE)],
                                  alpha=as64(ALPHA))
        return value, grads

    def sequential(kind):
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((3,), dtype="float64"),
                                 layers.Dense(4, dtype="float64", name="body"), norm_layer(kind),
                                 layers.Activation("tanh", dtype="float64"),
                                 layers.Dense(1, dtype="float64", name="head")])

    def wgan_gp_grads(critic, variables, compiled, **kw):
        real, fake, alpha = (tf.constant(a) for a in (REAL, FAKE, ALPHA))

        def step():
            with tf.GradientTape() as tape:
                value = gp.wgan_gp(critic, real, fake, alpha=alpha, **kw)
            return value, tape.gradient(value, variables)

        value, grads = (tf.function(step) if compiled else step)()
        return float(value), [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
                              for g, v in zip(grads, variables)]

    @pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function step"])
    @pytest.mark.parametrize("how", ["model", "args-kwargs-output"])
    @pytest.mark.parametrize("kind", ["layer", "group", "batch"])
    def test_tf_function_critic_traced_first_gets_exact_statistics(kind, how, compiled):
        """Issue 14.1 (and 15.4: through args=/kwargs=/output=): the adversarial terms trace
        tf.function(critic) first; the penalty's weight gradients were off by 7e-3 (layer),
        3e-2 (group), 1e-1 (batch) against the float64 twin; now to round-off."""
        training = {"training": True} if kind == "batch" else {}
        if how == "model":
            model = sequential(kind)
            critic = tf.function(lambda x: model(x, **training))
            critic(tf.constant(REAL))  # the adversarial call traces first (tf.nn.moments)
            kw = {}
        else:
            keras.utils.set_random_seed(3)
            model = Conditional(kind)
            model(tf.constant(REAL), tf.constant(LABELS))
            critic = tf.function(model)
            critic(tf.constant(REAL), tf.constant(LABELS), **training)  # traced first
            kw = {"args": (tf.constant(LABELS),), "kwargs": training, "output": "score"}
        value, grads = wgan_gp_grads(critic, model.trainable_variables, compiled, **kw)
        ref_value, ref_grads = reference(model, kind, how != "model")
        np.testing.assert_allclose(value, ref_value, rtol=1e-9)
        assert_grads(grads, ref_grads)

    def test_frozen_graph_critic_warns_that_its_statistics_cannot_be_fixed(tmp_path):
        """Issue 14.1: a restored SavedModel (model.export) keeps tf.nn.moments' stop_gradient
        and cannot be retraced: InexactStatisticsWarning, once, and none for a frozen graph
        without moments."""
        model = sequential("layer")
        model.export(str(tmp_path / "ln"), verbose=False)
        restored = tf.saved_model.load(str(tmp_path / "ln"))
        plain = keras.Sequential([keras.Input((3,), dtype="float64"),
                                  layers.Dense(1, dtype="float64")])
        plain.export(str(tmp_path / "plain"), verbose=False)
        no_moments = tf.saved_model.load(str(tmp_path / "plain"))
        x = tf.constant(REAL)
        with pytest.warns(gpreg.InexactStatisticsWarning, match="frozen TensorFlow graph"):
            gp.r1(restored.serve, x)
        concrete = tf.function(model).get_concrete_function(tf.TensorSpec((None, 3),
                                                                          tf.float64))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gp.r1(restored.serve, x)  # once per critic
            gp.r1(no_moments.serve, x)
            tfsm = keras.layers.TFSMLayer(str(tmp_path / "ln"), call_endpoint="serve",
                                          dtype="float64")
            gp.r1(tfsm, x)
            gp.r1(concrete, x)
        assert [c.category for c in caught] == [gpreg.InexactStatisticsWarning] * 2

    W1 = RNG.normal(size=(3, 5))
    B1 = RNG.normal(size=5)
    W2 = RNG.normal(size=(5, 1))
    BOUND_V2 = tf.nn.moments  # bound at import: still covered (it calls nn_impl.moments)
    BOUND_V1 = tf.compat.v1.nn.moments  # bound at import: bypasses any swap (documented)

    def plain_tf_critic(which):
        w1, b1, w2 = (tf.Variable(a) for a in (W1, B1, W2))

        def critic(x):
            h = x @ w1 + b1
            if which == "compat.v1":
                mu, var = tf.compat.v1.nn.moments(h, axes=[1], keep_dims=True)
            elif which == "alias of tf.nn.moments":
                mu, var = BOUND_V2(h, axes=[1], keepdims=True)
            elif which == "alias of compat.v1":
                mu, var = BOUND_V1(h, [1], None, None, True)
            else:
                mu, var = tf.nn.moments(h, axes=[1], keepdims=True)
            return tf.tanh((h - mu) / tf.sqrt(var + 1e-3)) @ w2

        return critic, [w1, b1, w2]

    def moments_reference(name):
        leaves = [as64(a).requires_grad_(True) for a in (W1, B1, W2)]

        def twin(x):
            h = x @ leaves[0] + leaves[1]
            mu, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
            return torch.tanh((h - mu) / torch.sqrt(var + 1e-3)) @ leaves[2]

        return penalty(name, twin, leaves, [as64(REAL)], [as64(FAKE)], alpha=as64(ALPHA))

    def moments_case(which, name):
        critic, variables = plain_tf_critic(which)
        with tf.GradientTape() as tape:
            if name == "r1":
                value = gp.r1(critic, tf.constant(REAL))
            else:
                value = gp.wgan_gp(critic, tf.constant(REAL), tf.constant(FAKE),
                                   alpha=tf.constant(ALPHA))
        grads = [g.numpy() for g in tape.gradient(value, variables)]
        ref_value, ref_grads, _ = moments_reference(name)
        return float(value), grads, ref_value, ref_grads

    @pytest.mark.parametrize("name", ["wgan_gp", "r1"])
    @pytest.mark.parametrize("which", ["tf.nn", "compat.v1", "alias of tf.nn.moments"])
    def test_every_moments_entry_point_is_exact(which, name):
        """Issue 14.2: tf.compat.v1.nn.moments (and a tf.nn.moments alias bound at import)
        had errors of 4.8e-2 (wgan_gp) and 7.0e-2 (r1); now round-off."""
        value, grads, ref_value, ref_grads = moments_case(which, name)
        np.testing.assert_allclose(value, ref_value, rtol=1e-9)
        assert_grads(grads, ref_grads)

    def test_alias_of_compat_v1_moments_bypasses_the_swap():
        """The documented limit (docs/pitfalls.md): a tf.compat.v1.nn.moments bound to a name
        before the call is the original function; gpreg cannot reach it."""
        _, grads, _, ref_grads = moments_case("alias of compat.v1", "r1")
        assert max_error(grads, ref_grads) > 1e-3

    def test_exact_moments_reduce_float16_and_bfloat16_in_float32():
        """Issue 14.3: the swapped moments summed float16 in float16 (mean and variance inf
        for 256 values near 300, where TensorFlow gives 300 and 1.0); now float32
        accumulation, as tf.nn.moments does. Reference: NumPy float64."""
        from gpreg_keras._tensorflow import _exact_moments, _exact_tf_moments, _exact_v1_moments

        x64 = 300.0 + np.random.default_rng(5).normal(size=(2, 16, 16, 1))
        for dtype in (tf.float16, tf.bfloat16):
            x = tf.cast(tf.constant(x64), dtype)
            xr = tf.cast(x, tf.float64).numpy()  # the values after rounding to dtype
            want_mean, want_var = xr.mean(axis=(1, 2)), xr.var(axis=(1, 2))
            for fn in (_exact_tf_moments, _exact_v1_moments):
                mean, var = fn(x, axes=[1, 2])
                assert mean.dtype == dtype and var.dtype == dtype
                np.testing.assert_allclose(tf.cast(mean, tf.float64).numpy(), want_mean,
                                           rtol=1e-2)
                np.testing.assert_allclose(tf.cast(var, tf.float64).numpy(), want_var,
                                           rtol=5e-2)
            mean, var = _exact_moments(tf.cast(x, tf.float32), [1, 2])
            np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-4)

    def test_mixed_float16_instance_norm_critic_r1_is_finite_and_right():
        """Issue 14.3: a mixed_float16 critic with an instance norm over tf.nn.moments
        (pix2pix / CycleGAN style) got R1 = 0 or NaN where a hand-written nested tape gives the
        finite value; now they agree to float16 accuracy."""

        class InstanceNorm(layers.Layer):
            def call(self, x):
                mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
                return (x - mean) * tf.math.rsqrt(var + 1e-5)

        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            keras.utils.set_random_seed(0)
            critic = keras.Sequential([
                keras.Input((16, 16, 1)),
                layers.Conv2D(2, 1, kernel_initializer="ones", bias_initializer="zeros"),
                InstanceNorm(), layers.LeakyReLU(0.2), layers.Flatten(),
                layers.Dense(1, dtype="float32")])
            x = tf.constant(300.0 + np.random.default_rng(1).normal(size=(2, 16, 16, 1)),
                            tf.float32)
            value = float(gp.r1(critic, x, gamma=1.0))
            with tf.GradientTape() as tape:  # by hand: TensorFlow's own tf.nn.moments
                tape.watch(x)
                total = tf.reduce_sum(tf.cast(critic(x), tf.float32))
            g = tf.reshape(tf.cast(tape.gradient(total, x), tf.float64), (2, -1)).numpy()
        finally:
            keras.config.set_dtype_policy(policy)
        by_hand = 0.5 * np.mean(np.sum(g * g, axis=1))
        assert np.isfinite(by_hand) and by_hand > 0
        np.testing.assert_allclose(value, by_hand, rtol=2e-2)

    def test_synchronized_batchnorm_under_mirrored_strategy_does_not_deadlock(tmp_path):
        """Issue 14.10: with BatchNormalization(synchronized=True) under MirroredStrategy the
        replicas meet inside the critic, and gpreg held its lock across the call: the step
        hung forever (a hand-written nested tape finished). The step runs in a subprocess with
        a watchdog, and its gradients equal the hand-written nested tape's."""
        out = tmp_path / "grads.json"
        script = textwrap.dedent(f"""
            import json, os, sys
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            os.environ["KERAS_BACKEND"] = "tensorflow"
            import numpy as np, tensorflow as tf
            cpus = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
            import keras
            import gpreg_keras as gp
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            with strategy.scope():
                keras.utils.set_random_seed(0)
                model = keras.Sequential([
                    keras.Input((3,)), keras.layers.Dense(4),
                    keras.layers.BatchNormalization(synchronized=True),
                    keras.layers.Dense(1)])
            x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
            data = tf.data.Dataset.from_tensor_slices(x).batch(8)

            def step(x, use_gpreg):
                with tf.GradientTape() as tape:
                    if use_gpreg:
                        value = gp.r1(model, x, kwargs={{"training": True}})
                    else:
                        with tf.GradientTape() as inner:
                            inner.watch(x)
                            total = tf.reduce_sum(model(x, training=True))
                        g = inner.gradient(total, x)
                        value = 5.0 * tf.reduce_mean(tf.reduce_sum(g * g, axis=1))
                return tape.gradient(value, model.trainable_variables)

            result = {{}}
            for use_gpreg in (False, True):
                for batch in strategy.experimental_distribute_dataset(data):
                    grads = strategy.run(step, args=(batch, use_gpreg))
                    summed = [strategy.reduce("SUM", g, axis=None).numpy().tolist()
                              for g in grads[:3]]
                result["gpreg" if use_gpreg else "tape"] = summed
            with open({str(out)!r}, "w") as f:
                json.dump(result, f)
        """)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        try:
            proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=420,
                                  capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            pytest.fail("the MirroredStrategy step with synchronized BatchNorm hung (deadlock)")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(out.read_text())
        for got, want in zip(result["gpreg"], result["tape"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def autograph_critic():
        w = tf.Variable(tf.ones((3, 1)))

        def critic(x):  # a tensor `if` and a `for ... in tf.range`: AutoGraph's job
            if tf.reduce_sum(x) > 0:  # noqa: SIM108 (the statement form is the point)
                h = x @ w
            else:
                h = -(x @ w)
            for _ in tf.range(2):
                h = h * 1.5
            return h

        return critic, w

    def test_autograph_converts_the_users_critic_not_gpreg():
        """Issue 14.11: under tf.function a plain-function critic with a tensor `if` and a
        tf.range loop raised OperatorNotAllowedInGraphError inside gpreg (the adversarial terms
        worked). Closed form: D = ±2.25 x·w, so ‖∇D‖ = 2.25‖w‖ and with w = 1 the penalty is
        10 (2.25√3 − 1)², its gradient 10·2(2.25√3 − 1)·2.25/√3 per weight. gpreg's own
        functions stay unconverted."""
        critic, w = autograph_critic()
        real, fake = tf.ones((4, 3)), tf.zeros((4, 3))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(critic(fake)) - tf.reduce_mean(critic(real)) + gp.wgan_gp(
                    critic, real, fake, alpha=tf.fill((4,), 0.5))
                penalty_only = gp.wgan_gp(critic, real, fake, alpha=tf.fill((4,), 0.5))
            return loss, penalty_only, tape.gradient(penalty_only, [w])[0]

        _, value, grad = step()
        n = 2.25 * np.sqrt(3.0)
        np.testing.assert_allclose(float(value), 10 * (n - 1) ** 2, rtol=1e-6)
        np.testing.assert_allclose(grad.numpy(), np.full((3, 1), 20 * (n - 1) * 2.25 / np.sqrt(3)),
                                   rtol=1e-6)
        from gpreg_keras import _core

        for fn in (_core.run, _core.generic, _core.grad_norm):
            assert hasattr(fn, "autograph_info__")  # AutoGraph calls them as they are

    def test_autograph_off_in_the_caller_stays_off_for_the_critic():
        """tf.function(autograph=False) means no conversion, for the critic too: the error is
        TensorFlow's own, as in the adversarial terms."""
        critic, _ = autograph_critic()
        step = tf.function(lambda r, f: gp.wgan_gp(critic, r, f, alpha=tf.fill((4,), 0.5)),
                           autograph=False)
        with pytest.raises(Exception, match="OperatorNotAllowedInGraph|not allowed"):
            step(tf.ones((4, 3)), tf.zeros((4, 3)))

else:

    def test_exact_moments_is_a_no_op_off_tensorflow():
        with gp.exact_moments():
            pass
