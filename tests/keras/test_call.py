"""Real critics without closures on the active Keras backend: ``args=``, ``kwargs=``,
``output=`` and one multi-input call rule (a Functional model gets one list, a subclassed model
whose ``call`` takes several inputs gets them positionally), against a float64 torch twin."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from keras import layers, ops

import gpreg_keras as gp
from gpreg._tolerances import assert_close
from gpreg_keras._fixture import penalty_and_grads, tolerance_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import SHAPES, as64, penalty

BACKEND = keras.backend.backend()
TOL = tolerance_key("float64")
B = 5
DIMS = (3, 2, 4)
MODES = ["eager"] if BACKEND == "torch" else ["eager", "function"]


def dense(units: int, name: str) -> layers.Dense:
    return layers.Dense(units, dtype="float64", name=name)


class Parts(keras.Model):
    def __init__(self, n: int) -> None:
        super().__init__(dtype="float64")
        self.ins = [dense(4, f"in{i}") for i in range(n)]
        self.head = dense(1, "head")

    def combine(self, parts):
        h = self.ins[0](parts[0])
        for lay, p in zip(self.ins[1:], parts[1:]):
            h = h + lay(p)
        return self.head(ops.tanh(h))


class Two(Parts):
    """``call(self, a, b)``: one positional input per part."""

    def call(self, a, b):
        return self.combine([a, b])


class Three(Parts):
    def call(self, a, b, c):
        return self.combine([a, b, c])


class OneList(Parts):
    """``call(self, inputs)``: the parts as one list, the Keras way."""

    def call(self, inputs):
        return self.combine(inputs)


class Labelled(keras.Model):
    """``call(self, x, labels, training=None)``: a projection-conditional critic whose output
    also depends on the training flag."""

    def __init__(self) -> None:
        super().__init__(dtype="float64")
        self.body = dense(6, "body")
        self.head = dense(1, "head")
        self.embed = layers.Embedding(3, 6, dtype="float64", name="embed")

    def call(self, x, labels, training=None):
        h = ops.tanh(self.body(x))
        if training:
            h = h * 2.0
        return self.head(h)[:, 0] + ops.sum(self.embed(labels) * h, axis=1)


class DictOut(keras.Model):
    def __init__(self) -> None:
        super().__init__(dtype="float64")
        self.body = dense(6, "body")
        self.head = dense(1, "head")

    def call(self, x):
        h = ops.softplus(self.body(x))
        return {"features": h, "score": self.head(h)}


def functional(n: int) -> keras.Model:
    ins = [keras.Input((DIMS[i],), dtype="float64") for i in range(n)]
    h = layers.Add(dtype="float64")([dense(4, f"in{i}")(x) for i, x in enumerate(ins)])
    out = dense(1, "head")(layers.Activation("tanh", dtype="float64")(h))
    return keras.Model(ins, out)


def arrays(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return ([rng.normal(size=(B, DIMS[i])) for i in range(n)],
            [rng.normal(size=(B, DIMS[i])) for i in range(n)])


def tensors(xs):
    return [ops.convert_to_tensor(x, dtype="float64") for x in xs]


def weights(model) -> list[torch.Tensor]:
    return [as64(ops.convert_to_numpy(v)).requires_grad_(True)
            for v in model.trainable_variables]


def twin_dense(w, name):
    k, b = w[name + "/kernel"], w[name + "/bias"]
    return lambda x: x @ k + b


def named(model, leaves):
    out = {}
    for v, leaf in zip(model.trainable_variables, leaves):
        parts = v.path.split("/")
        out["/".join(parts[-2:])] = leaf
    return out


def check(name, model, real, fake, twin, mode, **kw):
    """gpreg_keras through penalty_and_grads vs the torch twin ``twin(w, *points)``."""
    rng = np.random.default_rng(11)
    alpha = rng.uniform(size=B)
    noise = [rng.uniform(size=r.shape) for r in real]
    where = SHAPES[name][0]
    one = (lambda xs: xs[0] if len(xs) == 1 else tuple(xs))  # noqa: E731
    if where == "interpolates":
        data = (one(tensors(real)), one(tensors(fake)))
        kw["alpha"] = ops.convert_to_tensor(alpha, dtype="float64")
    elif where == "fake":
        data = (one(tensors(fake)),)
    else:
        data = (one(tensors(real)),)
    if name == "dragan":
        kw["alpha"] = ops.convert_to_tensor(alpha, dtype="float64")
        kw["noise"] = one(tensors(noise))
    if name not in ("r1", "r2"):
        kw.setdefault("seed", 0)
    if name == "wgan_div":
        kw.setdefault("k", 10.0)  # the reference's weight
    value, grads = penalty_and_grads(model, gp.get_penalty(name), data, kw, mode)
    leaves = weights(model)
    w = named(model, leaves)
    ref_value, ref_grads, _ = penalty(
        name, lambda *pts: twin(w, *pts), leaves, [as64(r) for r in real],
        [as64(f) for f in fake], alpha=as64(alpha), noise=[as64(u) for u in noise])
    assert_close(float(ops.convert_to_numpy(value)), ref_value, TOL)
    for g, r in zip(grads, ref_grads):
        assert_close(ops.convert_to_numpy(g), r, TOL)


def parts_twin(n):
    def twin(w, *pts):
        h = sum(twin_dense(w, f"in{i}")(p) for i, p in enumerate(pts[:n]))
        return twin_dense(w, "head")(torch.tanh(h))

    return twin


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", ["subclassed", "functional", "list"])
@pytest.mark.parametrize("name", ["wgan_gp", "r1", "dragan"])
def test_multi_input_models(name, kind, n, mode):
    keras.utils.set_random_seed(n)
    real, fake = arrays(n, n)
    if kind == "functional":
        model = functional(n)
    elif kind == "list":
        model = OneList(n)
        model(tensors(real))
    else:
        model = (Two if n == 2 else Three)(n)
        model(*tensors(real))
    check(name, model, real, fake, parts_twin(n), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ["wgan_gp", "wgan_lp", "zero_gp", "max_gp", "r1", "r2",
                                  "dragan", "wgan_div"])
def test_conditional_critic_with_labels(name, training, mode):
    keras.utils.set_random_seed(4)
    model = Labelled()
    real, fake = arrays(1, 5)
    labels = np.arange(B) % 3
    model(tensors(real)[0], ops.convert_to_tensor(labels))
    y = torch.as_tensor(labels)

    def twin(w, x):
        h = torch.tanh(twin_dense(w, "body")(x)) * (2.0 if training else 1.0)
        return twin_dense(w, "head")(h)[:, 0] + (w["embed/embeddings"][y] * h).sum(dim=1)

    check(name, model, real, fake, twin, mode, args=(ops.convert_to_tensor(labels),),
          kwargs={"training": training})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["wgan_gp", "r1"])
def test_dict_output_critic(name, mode):
    keras.utils.set_random_seed(6)
    model = DictOut()
    real, fake = arrays(1, 7)
    model(tensors(real)[0])

    def twin(w, x):
        h = torch.nn.functional.softplus(twin_dense(w, "body")(x))
        return twin_dense(w, "head")(h)

    check(name, model, real, fake, twin, mode, output="score")


def direct(model):
    return gp.stateless_critic(model) if BACKEND == "jax" else model


def test_structured_output_without_output_names_its_keys():
    model = DictOut()
    x = tensors(arrays(1, 8)[0])[0]
    model(x)
    with pytest.raises(TypeError, match=r"gpreg_keras.r1: the critic returned a dict with keys "
                                        r"'features', 'score'.*output="):
        gp.r1(direct(model), x)


def test_args_batch_is_checked():
    model = Labelled()
    x = tensors(arrays(1, 9)[0])[0]
    labels = ops.convert_to_tensor(np.arange(B) % 3)
    model(x, labels)
    with pytest.raises(ValueError, match=r"args\[0\] has shape \(4,\), but the points have batch "
                                         r"size 5"):
        gp.r1(direct(model), x, args=(labels[:4],))
    with pytest.raises(TypeError, match=r"args must be a tuple"):
        gp.r1(direct(model), x, args=labels)


def test_stateless_critic_takes_args_like_the_model():
    model = Labelled()
    x = tensors(arrays(1, 10)[0])[0]
    labels = ops.convert_to_tensor(np.arange(B) % 3)
    want = ops.convert_to_numpy(model(x, labels, training=True))
    got = ops.convert_to_numpy(gp.stateless_critic(model)(x, labels, training=True))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="training=True and is called with training=False"):
        gp.stateless_critic(model, training=True)(x, labels, training=False)


class StyleD(keras.Model):
    """A StyleGAN2-ADA-shaped critic, ``call(self, img, c)``: image features projected on the
    mapped conditioning ``c`` (a float one-hot), channels-last."""

    def __init__(self) -> None:
        super().__init__(dtype="float64")
        self.conv = layers.Conv2D(4, 3, padding="same", dtype="float64", name="conv")
        self.fc = dense(8, "fc")
        self.mapping = dense(8, "mapping")
        self.out = dense(8, "out")

    def call(self, img, c):
        h = ops.tanh(self.fc(ops.reshape(ops.softplus(self.conv(img)), (-1, 4 * 4 * 4))))
        return ops.sum(self.out(h) * self.mapping(c), axis=1) / 8 ** 0.5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["wgan_gp", "r1", "r2", "dragan"])
def test_stylegan_critic_with_c_in_args(name, mode):
    keras.utils.set_random_seed(8)
    model = StyleD()
    rng = np.random.default_rng(9)
    real, fake = [rng.normal(size=(B, 4, 4, 2))], [rng.normal(size=(B, 4, 4, 2))]
    c = np.eye(3)[np.arange(B) % 3]
    model(tensors(real)[0], ops.convert_to_tensor(c, dtype="float64"))
    c64 = as64(c)

    def twin(w, img):
        k = w["conv/kernel"].permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        x = torch.nn.functional.conv2d(img.permute(0, 3, 1, 2), k, w["conv/bias"], padding=1)
        h = torch.nn.functional.softplus(x).permute(0, 2, 3, 1).reshape(B, -1)
        h = torch.tanh(twin_dense(w, "fc")(h))
        return (twin_dense(w, "out")(h) * twin_dense(w, "mapping")(c64)).sum(dim=1) / 8 ** 0.5

    check(name, model, real, fake, twin, mode,
          args=(ops.convert_to_tensor(c, dtype="float64"),))
