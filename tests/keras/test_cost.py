"""``gpreg_keras.cost`` on the running backend: the FLOP count of a LeakyReLU MLP against its
closed form, the report, conditioning passed through, the model left unchanged.

Each backend's autodiff emits a different program for the same step, so the penalty's count
differs (derived by hand below); the plain step's is the same everywhere. No timed
assertions.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from keras import ops
from numpy.testing import assert_allclose

import gpreg_keras as gp

BACKEND = keras.backend.backend()
DIMS = (6, 10, 7, 1)
BATCH = 5


def mlp(dims=DIMS) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers: list = [keras.Input((dims[0],))]
    for d in dims[1:]:
        layers += [keras.layers.Dense(d), keras.layers.LeakyReLU(0.2)]
    return keras.Sequential(layers[:-1])


def data(n=BATCH, d=DIMS[0], seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype("float32")
    return ops.convert_to_tensor(x)


def quick(critic, real, **kw):
    return gp.cost(critic, real, **{"rounds": 1, "warmup": 0, "min_sample_s": 0.0, **kw})


def penalty_flops(s: int, f1: int, fk: int) -> int:
    """Matmul FLOPs of the penalty's part of a step, with Σf, f_1, f_k the forward FLOPs of
    the stack, of its first and of its last Dense layer (f_i = 2·B·in·out).

    All backends: the penalty's forward (Σf), the inner gradient with respect to the points
    (one input gradient per layer, Σf), and the backward through it: a weight gradient per
    inner matmul (Σf) and a gradient of its incoming g except the last layer's constant seed
    (Σf − f_k); 4Σf − f_k. Then per backend:

    - JAX drops the last layer's forward (only its input gradient is needed): − f_k; the
      derivative of LeakyReLU's mask is not differentiated (a select): 4Σf − 2f_k;
    - TensorFlow's gradient of LeakyReluGrad sends zeros back through the forward of every
      layer but the last: a weight gradient each and an input gradient each but the first
      layer's, whose points are not a variable: + 2(Σf − f_k) − f_1;
    - Keras on torch runs PyTorch's autograd, which does the same and also takes the points'
      gradient, a leaf that requires one: + 2(Σf − f_k).
    """
    base = 4 * s - fk
    return {"jax": base - fk, "tensorflow": base + 2 * (s - fk) - f1,
            "torch": base + 2 * (s - fk)}[BACKEND]


def test_flop_ratio_matches_the_closed_form():
    f = [2 * BATCH * a * b for a, b in itertools.pairwise(DIMS)]
    s, f1, fk = sum(f), f[0], f[-1]
    plain = 6 * s - 2 * f1  # two forwards; weight and input gradients but the first input's
    pen = penalty_flops(s, f1, fk)
    report = quick(mlp(), data(), penalties=["wgan_gp", "r1"], lazy=(4,), memory=False)
    assert report.plain.flops == plain
    for name in ("wgan_gp", "r1"):
        assert report.steps[name].flops == plain + pen, name
        assert report.steps[f"{name} alone"].flops == pen, name
        assert_allclose(report[name].flop_ratio, (plain + pen) / plain, rtol=1e-12)
    if BACKEND == "jax":  # XLA's own count also has the elementwise operations
        assert report.plain.flops_xla > report.plain.flops


class Conditional(keras.Model):
    """``call(self, x, labels)`` with a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = keras.layers.Embedding(3, DIMS[0])
        self.net = mlp((DIMS[0], 8, 1))

    def call(self, x, labels, scale=1.0):
        return {"adv": scale * self.net(x + self.embed(labels)), "extra": ops.sum(x)}


def test_report_with_conditioning_leaves_the_model_unchanged():
    critic = Conditional()
    labels = ops.convert_to_tensor(np.array([0, 1, 2, 1, 0], "int32"))
    critic(data(), labels)
    before = [np.array(ops.convert_to_numpy(v.value)) for v in critic.variables]
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    report = quick(critic, data(), penalties=["wgan_gp", "r1"], args=(labels,),
                   kwargs={"scale": 2.0}, output="adv", optimizer=opt, lazy=(4, 16))
    for v, b in zip(critic.variables, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(v.value), b)
    assert all(not np.any(ops.convert_to_numpy(v.value)) for v in opt.variables
               if "momentum" in v.path)  # its state is put back too
    assert report.info.framework == f"keras-{BACKEND}"
    assert report.info.optimizer == "SGD" and report.info.batch == BATCH
    assert set(report.steps) == {"plain", "wgan_gp", "r1", "wgan_gp alone", "r1 alone"}
    for p in report.penalties:
        assert set(p.lazy) == {4, 16} and p.reuse_saving is None
        assert p.ratio["min"] <= p.ratio["median"] <= p.ratio["max"]
    assert report["r1"].memory_ratio > 1  # the penalty's buffers come on top
    text = report.summary()
    assert "PyTorch-only" in text and "gpreg_torch.cost" in text
    assert f"keras-{BACKEND}" in text and "reading: wgan_gp makes a critic step" in text


def test_the_critic_must_be_a_keras_model():
    with pytest.raises(TypeError, match="must be the Keras model"):
        gp.cost(lambda x: ops.sum(x, axis=1), data())
