"""What only one Keras backend has: JAX's purity and seeds, TensorFlow's tapes and the exact
normalization statistics."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

import gpreg_keras as gp
from gpreg import fixtures
from gpreg._tolerances import assert_close, max_rel_error

BACKEND = keras.backend.backend()
REAL = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
FAKE = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")


def small_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, activation="tanh"),
                             keras.layers.Dense(1)])


if BACKEND == "jax":
    import jax
    import jax.numpy as jnp

    def test_keras_model_on_jax_is_refused_with_the_fix():
        with pytest.raises(TypeError, match="stateless_critic"):
            gp.wgan_gp(small_model(), jnp.asarray(REAL), jnp.asarray(FAKE), seed=0)

    def test_traced_call_without_seed_is_a_clear_error():
        critic = gp.stateless_critic(small_model())

        @jax.jit
        def f(real, fake):
            return gp.wgan_gp(critic, real, fake)

        with pytest.raises(ValueError, match="inside jax.jit .* need a seed: pass seed="):
            f(jnp.asarray(REAL), jnp.asarray(FAKE))

    @pytest.mark.parametrize("seed", [7, "key", "typed_key", "generator"])
    def test_jit_and_eager_agree_for_every_seed_kind(seed):
        model = small_model()
        tv = [v.value for v in model.trainable_variables]
        if seed == "key":
            seed = jax.random.PRNGKey(3)
        elif seed == "typed_key":
            seed = jax.random.key(3)

        def loss(tv, real, fake, s):
            return gp.dragan(gp.stateless_critic(model, tv), real, seed=s) + gp.wgan_gp(
                gp.stateless_critic(model, tv), real, fake, seed=s)

        if seed == "generator":
            # a SeedGenerator is stateful: eager use only (under jit use an int or a key)
            v0, g0 = jax.value_and_grad(loss)(tv, REAL, FAKE, keras.random.SeedGenerator(1))
            v1, g1 = jax.value_and_grad(loss)(tv, REAL, FAKE, keras.random.SeedGenerator(1))
        else:
            v0, g0 = jax.value_and_grad(loss)(tv, REAL, FAKE, seed)
            v1, g1 = jax.jit(jax.value_and_grad(loss))(tv, REAL, FAKE, seed)
        assert_close(np.asarray(v1), np.asarray(v0), "float32")
        for a, b in zip(g1, g0):
            assert_close(np.asarray(a), np.asarray(b), "float32")

    def test_stateless_critic_gradient_matches_direct_jax():
        """The penalty's parameter gradient through stateless_critic equals a hand-written
        jax.grad of the same formula."""
        model = small_model()
        tv = [v.value for v in model.trainable_variables]
        alpha = jnp.linspace(0.1, 0.9, 4)

        def ours(tv):
            return gp.wgan_gp(gp.stateless_critic(model, tv), REAL, FAKE, alpha=alpha)

        def manual(tv):
            w1, b1, w2, b2 = tv
            x = alpha[:, None] * REAL + (1 - alpha[:, None]) * FAKE
            def d(xi):
                return (jnp.tanh(xi @ w1 + b1) @ w2 + b2)[0]
            g = jax.vmap(jax.grad(d))(x)
            return 10.0 * jnp.mean((jnp.sqrt(jnp.sum(g * g, axis=1)) - 1.0) ** 2)

        for a, b in zip(jax.grad(ours)(tv), jax.grad(manual)(tv)):
            assert_close(np.asarray(a), np.asarray(b), "float32")


    def test_input_dependence_is_linearized_only_when_the_gradient_cannot_show_it(monkeypatch):
        """The check that the critic depends on its input costs a second trace
        (jax.linearize) only where the input gradient cannot show the dependence: all zero,
        or not a value yet (under jax.jit, once per trace). Under an eager outer jax.grad the
        gradient is a tracer with a value, and a nonzero value is the proof."""
        from gpreg_keras import _jax

        calls = []
        real = _jax._depends_on_inputs
        monkeypatch.setattr(_jax, "_depends_on_inputs",
                            lambda fn, pts: calls.append(1) or real(fn, pts))
        model = small_model()
        tv = [v.value for v in model.trainable_variables]
        alpha = jnp.linspace(0.1, 0.9, 4)

        def loss(tv, critic=None):
            critic = critic or gp.stateless_critic(model, tv)
            return gp.wgan_gp(critic, REAL, FAKE, alpha=alpha)

        for _ in range(3):
            jax.grad(loss)(tv)
            loss(tv)
        assert calls == []
        model = small_model()  # (the eager calls above proved it for the first model)
        tv = [v.value for v in model.trainable_variables]
        step = jax.jit(jax.grad(loss))
        step(tv)
        step(tv)
        assert calls == [1]
        # a critic that ignores its input: zero gradients, so linearized, and refused
        with pytest.raises(RuntimeError, match="does not depend on its input"):
            jax.grad(lambda tv: loss(tv, lambda x: jnp.sum(tv[0]) * jnp.ones((4, 1))))(tv)
        # the same with a gradient that is exactly zero only here, yet depends on the input
        zero_here = gp.wgan_gp(lambda x: jnp.sum(x ** 2, axis=1, keepdims=True),
                               np.zeros_like(REAL), np.zeros_like(FAKE), alpha=alpha)
        assert_close(np.asarray(zero_here), np.asarray(10.0), "float32")  # (0 − 1)² · 10

    def test_the_dependence_shown_once_is_not_read_again_and_a_new_signature_is(monkeypatch):
        """Once a critic's output was shown to depend on the points at a signature, later
        eager calls read no value for it (a read waits for the queued work); other
        points' shapes, other arguments, another model and a new plain critic are checked
        again, and a critic that ignores its input is refused every time."""
        from gpreg_keras import _jax

        reads = []
        real_any = _jax.jnp.any

        class Counting:
            sum = staticmethod(jnp.sum)

            @staticmethod
            def any(x):
                reads.append(1)
                return real_any(x)

        monkeypatch.setattr(_jax, "jnp", Counting)
        model = small_model()
        tv = [v.value for v in model.trainable_variables]

        def loss(tv, real=REAL, **kw):
            return gp.r1(gp.stateless_critic(model, tv), real, **kw)

        for _ in range(3):
            jax.grad(loss)(tv)
        assert len(reads) == 1
        jax.grad(loss)(tv, REAL[:2])  # another batch
        jax.grad(lambda tv: loss(tv, kwargs={"training": True}))(tv)  # another call
        assert len(reads) == 3
        other = small_model()
        gp.r1(gp.stateless_critic(other), REAL)
        assert len(reads) == 4

        def plain(x):
            return jnp.sum(x ** 2, axis=1, keepdims=True)

        for _ in range(2):
            gp.r1(plain, REAL)
        assert len(reads) == 5
        def ignores(x):
            return jnp.ones((4, 1)) * jnp.sum(tv[0])

        for _ in range(2):
            with pytest.raises(RuntimeError, match="does not depend on its input"):
                gp.r1(ignores, REAL)

    def test_an_eager_wgan_gp_reads_no_value_and_keeps_each_norm_exact(monkeypatch):
        """Without jax.jit, the exact norm is chosen per sample inside one jitted
        computation: once the critic's dependence is shown, a call reads no value; the
        norms are exact for ordinary, tiny, huge and zero gradients in one batch; and the
        penalty's parameter gradient is exact, finite at the zero gradient."""
        from gpreg_keras import _core, _jax

        reads = []
        for module, name in ((_jax, "_concrete"), (_core, "_host_values")):
            real_fn = getattr(module, name)
            monkeypatch.setattr(module, name,
                                lambda x, f=real_fn: reads.append(1) or f(x))
        rows = [[0.3, 0.4], [3e-30, 4e-30], [3e25, 4e25], [0.0, 0.0]]
        norms = np.array([0.5, 5e-30, 5e25, 0.0])
        w = jnp.asarray(rows, "float32")

        def critic(x):
            return jnp.sum(x * w, axis=1, keepdims=True)

        for _ in range(2):
            got = gp.grad_norm(critic, np.ones((4, 2), "float32"))
        assert len(reads) == 1  # the dependence, shown by the first call
        assert_close(np.asarray(got), norms, "float32")

        moderate = w[jnp.asarray([0, 1, 3])]
        alpha = jnp.full((3,), 0.5)

        def loss(t):
            return gp.wgan_gp(lambda x: t * jnp.sum(x * moderate, axis=1, keepdims=True),
                              np.ones((3, 2), "float32"), np.zeros((3, 2), "float32"),
                              alpha=alpha)

        value, grad = jax.value_and_grad(loss)(jnp.float32(1.0))
        n = norms[[0, 1, 3]]
        assert_close(np.asarray(value), np.mean((n - 1.0) ** 2) * 10.0, "float32")
        # d/dt of 10 · mean((t n − 1)²) at t = 1: finite, and exact at the zero gradient
        assert_close(np.asarray(grad), np.mean(20.0 * (n - 1.0) * n), "float32")

    @pytest.mark.parametrize("count", [3, 7, 12, 100])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_the_mean_is_the_same_eager_and_under_jit(count, dtype):
        """The mean of the per-sample values is one ``jnp.mean``: within round-off of the
        float64 sum over the count, and bit for bit what ``jax.jit`` computes for it (an
        eager sum divided by the count could differ from the jitted one by an ulp)."""
        from gpreg_keras import _ops

        if dtype == "float64" and not jax.config.jax_enable_x64:
            pytest.skip("float64 needs jax_enable_x64")
        rng = np.random.default_rng(count)
        for _ in range(20):
            x = jnp.asarray(rng.standard_normal(count) * 10.0 ** rng.uniform(-3, 3), dtype)
            eager, jitted = np.asarray(_ops.mean(x)), np.asarray(jax.jit(_ops.mean)(x))
            assert eager.dtype == np.dtype(dtype)
            assert np.array_equal(eager, jitted)
            assert_close(eager, np.sum(np.asarray(x, np.float64)) / count, dtype)

    def test_concrete_points_bind_no_stop_gradient_and_traced_ones_are_stopped():
        """Points that no trace carries are used as they are (nothing differentiates through
        a concrete array); points an outer jax.grad traces are stopped: their gradient is
        zero, as the API promises, and the parameters' gradient is unchanged."""
        from jax._src import core as jax_core

        model = small_model()
        tv = [v.value for v in model.trainable_variables]
        alpha = jnp.linspace(0.1, 0.9, 4)
        real, fake = jnp.asarray(REAL), jnp.asarray(FAKE)

        def pen(tv, real, fake):
            return gp.wgan_gp(gp.stateless_critic(model, tv), real, fake, alpha=alpha)

        names = []
        bind = jax_core.Primitive.bind

        def recording(self, *a, **k):
            names.append(self.name)
            return bind(self, *a, **k)

        jax.grad(pen)(tv, real, fake)  # the checks pass once
        jax_core.Primitive.bind = recording
        try:
            jax.grad(pen)(tv, real, fake)
        finally:
            jax_core.Primitive.bind = bind
        assert "stop_gradient" not in names
        g_real, g_fake = jax.grad(pen, argnums=(1, 2))(tv, real, fake)
        assert np.array_equal(np.asarray(g_real), np.zeros_like(REAL))
        assert np.array_equal(np.asarray(g_fake), np.zeros_like(FAKE))
        for a, b in zip(jax.grad(pen)(tv, real, fake),
                        jax.grad(lambda tv: pen(tv, REAL, FAKE))(tv)):
            assert np.array_equal(np.asarray(a), np.asarray(b))

if BACKEND != "jax":

    def test_jax_arrays_on_another_backend_say_to_set_the_jax_backend():
        """A Flax user who forgot KERAS_BACKEND=jax is told that, not to convert the data."""
        import jax.numpy as jnp

        x = jnp.ones((4, 3))
        with pytest.raises(TypeError, match=r"got jax\w*\.\w+\. Keras runs its \w+ backend: "
                                            r".*set KERAS_BACKEND=jax before"):
            gp.wgan_gp(lambda v: v.sum(axis=1), x, x, seed=0)


if BACKEND == "tensorflow":
    import tensorflow as tf

    from gpreg_keras import _tensorflow
    from gpreg_keras._fixture import run_case

    def test_tf_module_and_plain_callable_critics():
        class Critic(tf.Module):
            def __init__(self):
                self.w = tf.Variable(tf.random.normal((3, 1), seed=1))

            def __call__(self, x):
                return tf.tanh(x @ self.w)

        critic = Critic()
        with tf.GradientTape() as tape:
            value = gp.wgan_gp(critic, tf.constant(REAL), tf.constant(FAKE), seed=0)
        (grad,) = tape.gradient(value, [critic.w])
        assert grad is not None and np.all(np.isfinite(grad.numpy()))

    def test_tf_keras_model_critic_matches_keras3():
        """A Keras 2 (tf-keras) model works as the critic and gives the Keras 3 numbers."""
        import tf_keras

        k3 = small_model()
        k2 = tf_keras.Sequential([tf_keras.layers.Dense(5, activation="tanh", input_shape=(3,)),
                                  tf_keras.layers.Dense(1)])
        k2.set_weights([v.numpy() for v in k3.trainable_variables])
        out = []
        for model in (k3, k2):
            with tf.GradientTape() as tape:
                value = gp.wgan_gp(model, tf.constant(REAL), tf.constant(FAKE), seed=2)
            grads = tape.gradient(value, model.trainable_variables)
            out.append((value.numpy(), [g.numpy() for g in grads[:3]]))
        assert_close(out[1][0], out[0][0], "float32")
        for a, b in zip(out[1][1], out[0][1]):
            assert_close(a, b, "float32")

    def test_graph_mode_with_unknown_batch():
        model = small_model()
        spec = tf.TensorSpec((None, 3), tf.float32)

        @tf.function(input_signature=[spec, spec], jit_compile=True)
        def step(real, fake):
            with tf.GradientTape() as tape:
                value = gp.wgan_gp(model, real, fake, seed=1)
            return value, tape.gradient(value, model.trainable_variables)

        value, grads = step(tf.constant(REAL), tf.constant(FAKE))
        assert np.isfinite(value.numpy()) and all(g is not None for g in grads[:2])

    def test_keras_moments_are_wrong_to_second_order_without_the_fix(monkeypatch):
        """Why exact_moments exists: with Keras's own tf.nn.moments the LayerNorm critic's
        penalty gradient is wrong (first-order quantities stay right)."""
        fx = next(f for f in fixtures.load() if f.name == "mlp_layernorm")
        case = fx.case("wgan_gp")
        fixed = run_case(fx, case, "float64")
        for name, expected in case.grads.items():
            assert_close(fixed["grads"][name], expected, "float64")
        monkeypatch.setattr(_tensorflow, "exact_moments", contextlib.nullcontext)
        broken = run_case(fx, case, "float64")
        assert_close(broken["norms"], case.norms, "float64")  # first order: fine
        errors = [max_rel_error(broken["grads"][k], v) for k, v in case.grads.items()]
        assert max(errors) > 1e-3  # second order: wrong

    def test_exact_moments_restores_keras_on_error():
        from keras.src.backend.tensorflow import nn as knn

        original = knn._compute_moments
        with pytest.raises(ZeroDivisionError), _tensorflow.exact_moments():
            assert knn._compute_moments is not original
            raise ZeroDivisionError
        assert knn._compute_moments is original
