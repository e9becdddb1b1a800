"""Training at scale with Keras: mixed precision, data parallelism, compiled full steps."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import gpreg_keras as gp
from gpreg import BUILTIN_NAMES
from gpreg._tolerances import assert_close

BACKEND = keras.backend.backend()
INTERP = ("wgan_gp", "wgan_lp", "zero_gp", "max_gp", "wgan_div")  # real, fake and alpha
rng = np.random.default_rng(0)
REAL = rng.normal(size=(8, 6)).astype("float32")
FAKE = rng.normal(size=(8, 6)).astype("float32")
ALPHA = rng.uniform(size=(8,)).astype("float32")
NOISE = rng.uniform(size=(8, 6)).astype("float32")


def model_fn(seed=0, dtype=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh",
                                                                    dtype=dtype),
                             keras.layers.Dense(1, dtype=dtype)])


def data_args(name, real=REAL, fake=FAKE, alpha=ALPHA, noise=NOISE):
    if name in INTERP:
        return (real, fake), {"alpha": alpha}
    if name == "dragan":
        return (real,), {"alpha": alpha, "noise": noise}
    return ((fake,) if name == "r2" else (real,)), {}


if BACKEND == "tensorflow":
    import tensorflow as tf

    def penalty_grads(model, name, **extra):
        args, kw = data_args(name)
        with tf.GradientTape() as tape:
            value = gp.get_penalty(name)(model, *[tf.constant(a) for a in args], **kw, **extra)
        grads = tape.gradient(value, model.trainable_variables)
        return value, [tf.zeros_like(v) if g is None else g for g, v in
                       zip(grads, model.trainable_variables)]

    def rel(a, b):
        return max(float(np.linalg.norm(np.asarray(x, "float64") - np.asarray(y, "float64")) /
                         np.linalg.norm(np.asarray(y, "float64")))
                   for x, y in zip(a, b) if np.linalg.norm(np.asarray(y)) > 0)

    @pytest.mark.parametrize("name", ["wgan_gp", "r1", "dragan"])
    def test_mixed_float16_with_loss_scale_optimizer_matches_float32(name):
        ref_model = model_fn()
        ref, ref_grads = penalty_grads(ref_model, name)
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            model = model_fn()
            model.set_weights(ref_model.get_weights())
            opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1),
                                                      initial_scale=2.0**10)
            args, kw = data_args(name)
            with tf.GradientTape() as tape:
                value = gp.get_penalty(name)(model, *[tf.constant(a) for a in args], **kw,
                                             scaler=opt)
                scaled = opt.scale_loss(value)
            scale = float(opt.scale_loss(1.0))  # the optimizer's current loss scale
            grads = [g / scale for g in tape.gradient(scaled, model.trainable_variables)[:3]]
        finally:
            keras.config.set_dtype_policy(policy)
        assert value.dtype == tf.float32
        assert abs(float(value) / float(ref) - 1) < 1e-2
        assert rel(grads, ref_grads[:3]) < 1e-2

    def test_mirrored_strategy_step_equals_the_single_device_step():
        """Keras's optimizer sums replica gradients: with global_batch_size the per-replica
        penalty is local sum / global batch, and the update equals one device's."""
        global_batch = 8

        def step(model, opt, real, fake, alpha, gbs):
            with tf.GradientTape() as tape:
                if gbs:
                    adv = (tf.reduce_sum(model(fake)) - tf.reduce_sum(model(real))) / gbs
                else:
                    adv = tf.reduce_mean(model(fake)) - tf.reduce_mean(model(real))
                loss = adv + gp.wgan_gp(model, real, fake, alpha=alpha, global_batch_size=gbs)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)

        single = model_fn()
        opt = keras.optimizers.SGD(0.5)
        step(single, opt, tf.constant(REAL), tf.constant(FAKE), tf.constant(ALPHA), None)

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            model = model_fn()
            dopt = keras.optimizers.SGD(0.5)
        data = tf.data.Dataset.from_tensor_slices((REAL, FAKE, ALPHA)).batch(global_batch)
        for real, fake, alpha in strategy.experimental_distribute_dataset(data):
            strategy.run(lambda r, f, a: step(model, dopt, r, f, a, global_batch),
                         args=(real, fake, alpha))
        for a, b in zip(model.get_weights(), single.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    @pytest.mark.parametrize("name", BUILTIN_NAMES)
    def test_complete_xla_critic_step_with_each_penalty(name):
        eager_model, xla_model = model_fn(), model_fn()
        opts = [keras.optimizers.Adam(1e-2), keras.optimizers.Adam(1e-2)]
        args, kw = data_args(name)
        args = [tf.constant(a) for a in args]
        kw = {k: tf.constant(v) for k, v in kw.items()}

        def step(model, opt):
            with tf.GradientTape() as tape:
                loss = (tf.reduce_mean(model(tf.constant(FAKE))) -
                        tf.reduce_mean(model(tf.constant(REAL))) +
                        gp.get_penalty(name)(model, *args, **kw))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            return loss

        compiled = tf.function(lambda: step(xla_model, opts[1]), jit_compile=True)
        for _ in range(2):
            step(eager_model, opts[0])
            compiled()
        for a, b in zip(xla_model.get_weights(), eager_model.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


if BACKEND == "jax":
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    @pytest.mark.parametrize("name", BUILTIN_NAMES)
    def test_complete_jit_critic_step_with_each_penalty(name):
        model = model_fn()
        opt = keras.optimizers.Adam(1e-2)
        opt.build(model.trainable_variables)
        tv = [v.value for v in model.trainable_variables]
        ov = [v.value for v in opt.variables]
        args, kw = data_args(name)

        def step(tv, ov, real, fake, args, kw):
            def loss(tv):
                critic = gp.stateless_critic(model, tv)
                return (ops.mean(critic(fake)) - ops.mean(critic(real)) +
                        gp.get_penalty(name)(critic, *args, **kw))

            value, grads = jax.value_and_grad(loss)(tv)
            new_tv, new_ov = opt.stateless_apply(ov, grads, tv)
            return value, new_tv, new_ov

        eager = step(tv, ov, REAL, FAKE, args, kw)
        jitted = jax.jit(step)(tv, ov, REAL, FAKE, args, kw)
        assert_close(np.asarray(jitted[0]), np.asarray(eager[0]), "float32")
        for a, b in zip(jitted[1], eager[1]):
            assert_close(np.asarray(a), np.asarray(b), "float32")

    def test_data_parallel_over_two_host_devices_equals_one_device():
        devices = jax.devices()
        assert len(devices) >= 2, "XLA_FLAGS must force two host devices (see conftest.py)"
        mesh = Mesh(np.array(devices[:2]), ("batch",))
        shard = NamedSharding(mesh, PartitionSpec("batch"))
        model = model_fn()
        tv = [v.value for v in model.trainable_variables]

        def loss(tv, real, fake, alpha):
            critic = gp.stateless_critic(model, tv)
            return (ops.mean(critic(fake)) - ops.mean(critic(real)) +
                    gp.wgan_gp(critic, real, fake, alpha=alpha))

        vg = jax.jit(jax.value_and_grad(loss))
        one = vg(tv, REAL, FAKE, ALPHA)
        sharded = [jax.device_put(x, shard) for x in (REAL, FAKE, ALPHA)]
        assert len(sharded[0].sharding.device_set) == 2
        two = vg(tv, *sharded)
        assert_close(np.asarray(two[0]), np.asarray(one[0]), "float32")
        for a, b in zip(two[1], one[1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_scaler_plumbing_is_exact_in_float32():
    """Scaling by a power of two and unscaling changes nothing in float32, on every backend;
    a non-optimizer scaler is refused with the expected type named."""
    model = model_fn()
    critic = gp.stateless_critic(model) if BACKEND == "jax" else model
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0**8)
    for name in ("wgan_gp", "r1"):
        args, kw = data_args(name)
        args = [ops.convert_to_tensor(a) for a in args]
        kw = {k: ops.convert_to_tensor(v) for k, v in kw.items()}
        plain = gp.get_penalty(name)(critic, *args, **kw, create_graph=False)
        scaled = gp.get_penalty(name)(critic, *args, **kw, scaler=opt, create_graph=False)
        assert_close(ops.convert_to_numpy(scaled), ops.convert_to_numpy(plain), "float32")
    with pytest.raises(TypeError, match="scaler must be a keras.optimizers.LossScaleOptimizer"):
        gp.r1(critic, ops.convert_to_tensor(REAL), scaler=keras.optimizers.SGD(0.1))
