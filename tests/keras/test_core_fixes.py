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
