"""Core fixes that every Keras backend gains (gpreg/_math.py): a NaN norm stays NaN in every
penalty shape, and the per-sample norm is exact across the float range."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import gpreg_keras as gp
from gpreg._tolerances import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import shape_of_norms


def linear_critic(w: np.ndarray):
    """Scores x_i . w_i: the input gradient of sample i is w_i (a constant)."""
    weights = ops.convert_to_tensor(w)
    return lambda x: ops.sum(x * weights, axis=1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "none"])
@pytest.mark.parametrize("shape", ["two_sided", "one_sided", "squared"])
def test_a_nan_input_gradient_shows_in_every_shape(shape, reduction):
    w = np.array([[0.3, 0.4], [np.nan, 1.0], [1.2, 0.5]], dtype="float32")  # n: .5, NaN, 1.3
    value = ops.convert_to_numpy(gp.gradient_penalty(
        linear_critic(w), ops.ones((3, 2)), shape=shape, reduction=reduction))
    if reduction != "none":
        assert np.isnan(value)
        return
    assert np.isnan(value[1])
    assert_close(value[[0, 2]], shape_of_norms(shape, [0.5, 1.3]), "float32")


def test_wgan_lp_of_a_nan_gradient_is_nan():
    w = np.array([[np.nan, 1.0]] * 4, dtype="float32")
    value = gp.wgan_lp(linear_critic(w), ops.ones((4, 2)), ops.zeros((4, 2)), alpha=0.5)
    assert np.isnan(ops.convert_to_numpy(value))


@pytest.mark.parametrize("s", [1e-25, 1e19])
def test_float32_norms_are_exact_for_tiny_and_huge_gradients(s):
    """Entries s: the norm is 2s (closed form). A plain sum of squares gave 0 and Inf."""
    w = np.full((3, 4), s, dtype="float32")
    norms = gp.grad_norm(linear_critic(w), keras.random.normal((3, 4), seed=0))
    assert_close(ops.convert_to_numpy(norms), np.full(3, 2 * s), "float32")


def test_norms_are_exact_when_one_sample_leaves_the_plain_range():
    """Eager norms take a plain sum of squares only when every sample's is in range: a batch
    mixing ordinary samples with a tiny, a huge and a zero one is exact for each (2s)."""
    scales = np.array([1.0, 1e-25, 0.5, 1e19, 0.0, 3.0], dtype="float32")
    w = np.repeat(scales[:, None], 4, axis=1)
    norms = gp.grad_norm(linear_critic(w), keras.random.normal((6, 4), seed=0))
    assert_close(ops.convert_to_numpy(norms), 2 * scales, "float32")
    plain = gp.grad_norm(linear_critic(w[[0, 2, 5]]), keras.random.normal((3, 4), seed=0))
    assert_close(ops.convert_to_numpy(plain), 2 * scales[[0, 2, 5]], "float32")


def test_zero_inf_and_nan_gradients_stay_what_they_are():
    w = np.array([[0.0, 0.0], [np.inf, 1.0], [np.nan, 1.0]], dtype="float32")
    n = ops.convert_to_numpy(gp.grad_norm(linear_critic(w), ops.ones((3, 2))))
    assert n[0] == 0 and n[1] == np.inf and np.isnan(n[2])


def _compiled(fn):
    """``fn`` staged into the backend's compiled form (Keras on torch runs gpreg_torch eagerly,
    as a compiled Keras step does: #14.14)."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if name == "jax":
        import jax

        return jax.jit(fn)
    return fn


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_norms_are_exact_across_the_float_range(dtype):
    """In a compiled step the norm cannot be read on the host: float32 gradients are summed in
    float64 on TensorFlow, float64 ones (and JAX's) scaled. Entries s (2s by closed form) from
    the smallest subnormal to near the largest finite value, a zero and the ordinary range."""
    info = np.finfo(dtype)
    scales = np.array([1.0, float(info.smallest_subnormal), 1e-25, 1e19, float(info.max) / 4,
                       0.0, 3.0], dtype=dtype)
    if dtype == "float64":
        scales[2:4] = [1e-170, 1e160]
    w = ops.convert_to_tensor(np.repeat(scales[:, None], 4, axis=1))
    x = ops.convert_to_tensor(np.ones((7, 4), dtype=dtype))
    norms = _compiled(lambda w, x: gp.grad_norm(lambda p: ops.sum(p * w, axis=1), x))(w, x)
    assert_close(ops.convert_to_numpy(norms), 2 * scales, dtype)


@pytest.mark.parametrize("compiled", [False, True])
def test_squared_penalties_are_exact_across_the_float_range_without_a_norm(compiled):
    """R1 per sample is gamma/2 times the sum of squares of the input gradient, 4 s^2 for
    entries s (closed form), eager and compiled, from 1e-25 (4e-50: 0 in float32) to 1e18
    (2e37), and 0 at a zero gradient; the squared shape takes no root."""
    scales = np.array([1.0, 1e-25, 0.5, 1e18, 0.0, 3.0], dtype="float32")
    w = ops.convert_to_tensor(np.repeat(scales[:, None], 4, axis=1))
    x = ops.convert_to_tensor(np.ones((6, 4), dtype="float32"))

    def r1(w, x):
        return gp.r1(lambda p: ops.sum(p * w, axis=1), x, reduction="none")

    got = ops.convert_to_numpy((_compiled(r1) if compiled else r1)(w, x))
    assert_close(got, 5.0 * 4.0 * scales.astype(np.float64) ** 2, "float32")
    assert got[4] == 0.0


def test_a_compiled_penalty_at_a_zero_gradient_has_a_zero_parameter_gradient():
    """R1 of D(x) = x·v with v = 0: the value is 0 and so is its gradient in v (not NaN), the
    same in a compiled step as eagerly."""
    v = np.zeros((3, 1), dtype="float32")
    x = np.ones((5, 3), dtype="float32")
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        var = tf.Variable(v)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                value = gp.r1(lambda p: tf.matmul(p, var), tf.constant(x))
            return value, tape.gradient(value, var)

        value, grad = step()
    elif name == "jax":
        import jax

        value, grad = jax.jit(jax.value_and_grad(
            lambda v: gp.r1(lambda p: p @ v, jax.numpy.asarray(x))))(jax.numpy.asarray(v))
    else:
        import torch

        var = torch.zeros(3, 1, requires_grad=True)
        value = gp.r1(lambda p: p @ var, torch.from_numpy(x))
        (grad,) = torch.autograd.grad(value, var)
    assert float(ops.convert_to_numpy(value)) == 0.0
    assert np.array_equal(ops.convert_to_numpy(grad), np.zeros((3, 1), dtype="float32"))
