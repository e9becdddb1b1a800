"""Randomness that moves and state that is kept: SeedGenerators under jax.jit, int seeds in
compiled steps, non-trainable state through stateless_critic (BatchNorm statistics, Dropout
seeds), the live loss scale under jax.jit, and the Variables-for-values mistake. Expected
numbers come from closed forms and NumPy."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import layers, ops

import gpreg
import gpreg_keras as gp

BACKEND = keras.backend.backend()
B = 4


def alphas_of(values):
    """zero_gp on D(x) = ½‖x‖², real = 1, fake = 0: the point is α, the per-sample value
    10·α²·d (d = 1 here), so α = √(value / 10)."""
    return np.sqrt(np.asarray(ops.convert_to_numpy(values), np.float64) / 10.0)


def half_square(x):
    return 0.5 * ops.sum(x * x, axis=1)


REAL1, FAKE1 = np.ones((B, 1), "float32"), np.zeros((B, 1), "float32")


def reset_fixed_seed_warning():
    from gpreg_keras import _core

    _core._fixed_seed_warned.clear()


if BACKEND == "jax":
    import jax

    def test_seed_generator_under_jit_is_refused_and_left_usable():
        """Issue 14.4: a SeedGenerator under jax.jit drew the same α on every step and left a
        tracer in the generator (the next eager use raised UnexpectedTracerError). Now a clear
        error, and the generator still works eagerly."""
        seeds = keras.random.SeedGenerator(0)

        @jax.jit
        def step(real, fake):
            return gp.zero_gp(half_square, real, fake, seed=seeds, reduction="none")

        with pytest.raises(ValueError, match="SeedGenerator cannot advance inside jax.jit"):
            step(REAL1, FAKE1)
        keras.random.uniform((2,), seed=seeds)  # no leaked tracer
        with pytest.raises(ValueError, match="inside jax.jit .* need a seed"):
            jax.jit(lambda r, f: gp.zero_gp(half_square, r, f))(REAL1, FAKE1)

    def test_seed_generator_whose_state_keras_threads_moves_under_jit():
        """Inside a keras.StatelessScope that maps the generator's state, Keras threads it:
        allowed, and α differs from step to step."""
        seeds = keras.random.SeedGenerator(0)

        @jax.jit
        def step(state, real, fake):
            with keras.StatelessScope(state_mapping=[(seeds.state, state)]) as scope:
                values = gp.zero_gp(half_square, real, fake, seed=seeds, reduction="none")
            return values, scope.get_current_value(seeds.state)

        state, drawn = seeds.state.value, []
        for _ in range(3):
            values, state = step(state, REAL1, FAKE1)
            drawn.append(alphas_of(values))
        assert all(np.all((a >= 0) & (a < 1)) for a in drawn)
        assert not np.allclose(drawn[0], drawn[1]) and not np.allclose(drawn[1], drawn[2])

    def test_a_key_per_step_moves_alpha_under_jit():
        """The documented seed for jit: a key folded with the step."""

        @jax.jit
        def step(key, t, real, fake):
            return gp.zero_gp(half_square, real, fake, seed=jax.random.fold_in(key, t),
                              reduction="none")

        key = jax.random.key(0)
        drawn = [alphas_of(step(key, t, REAL1, FAKE1)) for t in range(3)]
        assert not np.allclose(drawn[0], drawn[1]) and not np.allclose(drawn[1], drawn[2])

    def test_variables_instead_of_values_are_refused():
        """Issue 14.9: stateless_critic(model, model.trainable_variables) gave all-zero
        gradients under jax.grad with no message."""
        model = keras.Sequential([keras.Input((3,)), layers.Dense(1)])
        with pytest.raises(TypeError, match=r"trainable_values holds the model's Variables.*"
                                            r"v.value for v in model.trainable_variables"):
            gp.stateless_critic(model, model.trainable_variables)
        with pytest.raises(TypeError, match="non_trainable_values holds"):
            gp.stateless_critic(model, None, model.non_trainable_variables + [model.weights[0]])


def compiled(fn):
    """``fn`` as a compiled step on this backend (none on torch)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return fn


@pytest.mark.skipif(BACKEND == "torch", reason="the torch backend traces nothing")
def test_fixed_int_seed_in_a_compiled_step_warns_once():
    """Issue 14.5: an int seed draws the same α on every call; inside a compiled step that is
    every training step. One FixedSeedWarning; none eagerly, and none for a seed that is a
    (traced) argument of the jitted step."""
    reset_fixed_seed_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gp.zero_gp(half_square, REAL1, FAKE1, seed=0)  # eager: a fixed draw, for tests
        assert not [c for c in caught if c.category is gpreg.FixedSeedWarning]
        step = compiled(lambda r, f: gp.zero_gp(half_square, r, f, seed=0, reduction="none"))
        first = alphas_of(step(ops.convert_to_tensor(REAL1), ops.convert_to_tensor(FAKE1)))
        again = alphas_of(step(ops.convert_to_tensor(REAL1), ops.convert_to_tensor(FAKE1)))
        step2 = compiled(lambda r, f: gp.wgan_gp(half_square, r, f, seed=1))
        step2(ops.convert_to_tensor(REAL1), ops.convert_to_tensor(FAKE1))
    np.testing.assert_array_equal(first, again)  # what the warning is about
    fixed = [c for c in caught if c.category is gpreg.FixedSeedWarning]
    assert len(fixed) == 1, [str(c.message) for c in caught]
    assert "seed=0 is a fixed draw" in str(fixed[0].message)
    assert __file__ in fixed[0].filename or "autograph" in fixed[0].filename
    if BACKEND == "jax":
        import jax

        reset_fixed_seed_warning()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jax.jit(lambda r, f, s: gp.zero_gp(half_square, r, f, seed=s))(REAL1, FAKE1, 3)
        assert not [c for c in caught if c.category is gpreg.FixedSeedWarning]


@pytest.mark.skipif(BACKEND == "jax", reason="a SeedGenerator is for the stateful backends")
def test_seed_generator_moves_alpha_in_a_compiled_step():
    seeds = keras.random.SeedGenerator(0)
    step = compiled(lambda r, f: gp.zero_gp(half_square, r, f, seed=seeds, reduction="none"))
    drawn = [alphas_of(step(ops.convert_to_tensor(REAL1), ops.convert_to_tensor(FAKE1)))
             for _ in range(3)]
    assert not np.allclose(drawn[0], drawn[1]) and not np.allclose(drawn[1], drawn[2])


# --- non-trainable state: BatchNorm moving statistics and Dropout seeds -------------------

K = np.array([[0.5, -1.0, 0.25], [1.5, 0.5, -0.5]], "float32")  # (2, 3) first kernel
RNG = np.random.default_rng(2)
REAL = RNG.normal(size=(B, 2)).astype("float32")
FAKE = RNG.normal(size=(B, 2)).astype("float32") + 1.0
ALPHA = np.array([0.1, 0.4, 0.6, 0.9], "float32")


def bn_critic():
    model = keras.Sequential([keras.Input((2,)),
                              layers.Dense(3, kernel_initializer=keras.initializers.Constant(K),
                                           bias_initializer="zeros"),
                              layers.BatchNormalization(momentum=0.9), layers.Activation("tanh"),
                              layers.Dense(1)])
    return model


def expected_moving_mean(steps):
    """Keras's rule, call by call (fake, real, then the penalty's interpolates), in NumPy."""
    mm = np.zeros(3)
    points = ALPHA[:, None] * REAL + (1 - ALPHA[:, None]) * FAKE
    for _ in range(steps):
        for x in (FAKE, REAL, points):
            mm = 0.9 * mm + 0.1 * (x.astype(np.float64) @ K).mean(axis=0)
    return mm


@pytest.mark.filterwarnings("ignore::gpreg.BatchNormWarning")
def test_batchnorm_moving_statistics_update_alike_on_every_backend():
    """Issue 14.6: BatchNorm's moving statistics moved on TensorFlow and torch (the penalty's
    training=True pass included) but never on JAX, where stateless_critic dropped the
    updates. With the state threaded (non_trainable_values) all three equal the NumPy rule."""
    model = bn_critic()
    train = {"training": True}
    if BACKEND == "jax":
        import jax

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def step(tv, ntv, real, fake, alpha):
            def loss(tv):
                D = gp.stateless_critic(model, tv, ntv)
                value = (ops.mean(D(fake, **train)) - ops.mean(D(real, **train))
                         + gp.wgan_gp(D, real, fake, alpha=alpha, kwargs=train))
                return value, D.non_trainable_values

            (_, new_ntv), _ = jax.value_and_grad(loss, has_aux=True)(tv)
            return new_ntv

        for _ in range(2):
            ntv = step(tv, ntv, REAL, FAKE, ALPHA)
        index = [v.path for v in model.non_trainable_variables].index(
            model.layers[1].moving_mean.path)
        moving_mean = np.asarray(ntv[index])
    else:
        for _ in range(2):
            real, fake = ops.convert_to_tensor(REAL), ops.convert_to_tensor(FAKE)
            value = (ops.mean(model(fake, **train)) - ops.mean(model(real, **train))
                     + gp.wgan_gp(model, real, fake, alpha=ops.convert_to_tensor(ALPHA),
                                  kwargs=train))
            assert np.isfinite(float(ops.convert_to_numpy(value)))
        moving_mean = ops.convert_to_numpy(model.layers[1].moving_mean)
    np.testing.assert_allclose(moving_mean, expected_moving_mean(2), rtol=1e-5, atol=1e-6)


def test_dropout_draws_a_new_mask_every_step():
    """Issue 14.6: a Dropout critic with training=True drew the same mask on every jitted
    step on JAX (its seed state was dropped). D(x) = Σ mask·x / (1 − rate) with a kernel of
    ones, so R1 with γ = 2 is the number of kept inputs / (1 − rate)², per sample."""
    model = keras.Sequential([keras.Input((8,)), layers.Dropout(0.5, seed=1),
                              layers.Dense(1, kernel_initializer="ones", use_bias=False)])
    x = np.ones((B, 8), "float32")
    kept = []
    if BACKEND == "jax":
        import jax

        tv = [v.value for v in model.trainable_variables]

        @jax.jit
        def step(ntv, x):
            D = gp.stateless_critic(model, tv, ntv)
            values = gp.r1(D, x, gamma=2.0, reduction="none", kwargs={"training": True})
            return values, D.non_trainable_values

        ntv = [v.value for v in model.non_trainable_variables]
        for _ in range(3):
            values, ntv = step(ntv, x)
            kept.append(np.asarray(values) * 0.25)
    else:
        for _ in range(3):
            values = gp.r1(model, ops.convert_to_tensor(x), gamma=2.0, reduction="none",
                           kwargs={"training": True})
            kept.append(ops.convert_to_numpy(values) * 0.25)
    for k in kept:
        np.testing.assert_allclose(k, np.round(k), atol=1e-5)  # whole numbers of inputs
        assert np.all((k >= 0) & (k <= 8))
    assert not np.array_equal(kept[0], kept[1]) or not np.array_equal(kept[1], kept[2])


# --- the live loss scale -----------------------------------------------------------------

def test_loss_scale_optimizer_recovers_after_overflow_in_a_compiled_step():
    """Issue 14.8: under jax.jit the inner loss scale was read at trace time, so once the
    float16 inner backward overflowed every step was skipped (10 of 10) while TensorFlow
    recovered. Closed form: a float16 Dense with a kernel of ones seeds the inner backward
    with the scale, Inf in float16 from 2¹⁶ = 65536 up; starting at 2²⁰ and halving on each
    skipped step, steps 0–4 are skipped and step 5 (scale 2¹⁵) onwards apply, on every
    backend."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((2,)),
                                  layers.Dense(1, kernel_initializer="ones", use_bias=False)])
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-3),
                                                  initial_scale=2.0**20)
        opt.build(model.trainable_variables)
        x = np.full((B, 2), 0.5, "float32")
        applied, scales = [], []
        if BACKEND == "jax":
            import jax

            @jax.jit
            def step(tv, ov, x):
                def loss(tv):
                    with keras.StatelessScope(state_mapping=list(zip(opt.variables, ov))):
                        D = gp.stateless_critic(model, tv)
                        return opt.scale_loss(gp.r1(D, x, gamma=1.0, scaler=opt))

                grads = jax.grad(loss)(tv)
                return opt.stateless_apply(ov, grads, tv)

            tv = [v.value for v in model.trainable_variables]
            ov = [v.value for v in opt.variables]
            for _ in range(10):
                scales.append(float(opt.dynamic_scale.value if not scales else
                                    ov[[v.path for v in opt.variables].index(
                                        opt.dynamic_scale.path)]))
                new_tv, ov = step(tv, ov, x)
                applied.append(not np.array_equal(np.asarray(new_tv[0]), np.asarray(tv[0])))
                tv = new_tv

            def frozen(tv, x):  # without the scope: the frozen scale is refused
                return gp.r1(gp.stateless_critic(model, tv), x, scaler=opt)

            with pytest.raises(ValueError, match="keras.StatelessScope"):
                jax.jit(frozen)(tv, x)
        else:
            if BACKEND == "tensorflow":
                import tensorflow as tf

                @tf.function
                def step(x):
                    with tf.GradientTape() as tape:
                        scaled = opt.scale_loss(gp.r1(model, x, gamma=1.0, scaler=opt))
                    grads = tape.gradient(scaled, model.trainable_variables)
                    opt.apply(grads, model.trainable_variables)
            else:
                import torch

                def step(x):
                    scaled = opt.scale_loss(gp.r1(model, x, gamma=1.0, scaler=opt))
                    grads = torch.autograd.grad(scaled, [v.value for v in
                                                         model.trainable_variables])
                    with torch.no_grad():
                        opt.apply(list(grads), model.trainable_variables)
            for _ in range(10):
                before = ops.convert_to_numpy(model.trainable_variables[0]).copy()
                scales.append(float(ops.convert_to_numpy(opt.dynamic_scale)))
                step(ops.convert_to_tensor(x))
                applied.append(not np.array_equal(
                    ops.convert_to_numpy(model.trainable_variables[0]), before))
    finally:
        keras.config.set_dtype_policy(policy)
    assert applied == [False] * 5 + [True] * 5, (applied, scales)
    assert scales[:6] == [2.0**k for k in (20, 19, 18, 17, 16, 15)]
