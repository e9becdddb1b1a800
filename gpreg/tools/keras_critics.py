"""The built-in critics in Keras 3 (NHWC images): the same architectures as
:mod:`gpreg.tools.torch_critics`, for every Keras backend.

Strided 4×4 convolutions with ``padding="same"`` pad one pixel on each side at these sizes,
like PyTorch's ``padding=1``. The attention critic's LayerNorm is written with explicit
``keras.ops`` mean and variance, so that its second derivatives are exact on every backend
and no backend-specific normalization code takes part in the comparison.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from gpreg.tools.critics import CriticSpec


class LayerNorm(keras.layers.Layer):
    """Layer normalization over the last axis from explicit mean and variance."""

    def __init__(self, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape: Any) -> None:
        """Create the scale and offset."""
        d = input_shape[-1]
        self.gamma = self.add_weight(shape=(d,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(d,), initializer="zeros", name="beta")

    def call(self, x: Any) -> Any:
        """Normalize ``x`` over its last axis."""
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * ops.rsqrt(var + self.epsilon) * self.gamma + self.beta


class AddPosition(keras.layers.Layer):
    """Adds a learned position embedding of shape (1, tokens, dim)."""

    def build(self, input_shape: Any) -> None:
        """Create the embedding."""
        self.pos = self.add_weight(shape=(1, input_shape[1], input_shape[2]), name="pos",
                                   initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x: Any) -> Any:
        """``x + pos``."""
        return x + self.pos


class Block(keras.layers.Layer):
    """Pre-LayerNorm transformer block with explicit softmax attention."""

    def __init__(self, dim: int, heads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim, self.heads = dim, heads
        self.ln1, self.ln2 = LayerNorm(), LayerNorm()
        self.qkv = layers.Dense(3 * dim)
        self.proj = layers.Dense(dim)
        self.fc1 = layers.Dense(2 * dim)
        self.fc2 = layers.Dense(dim)

    def build(self, input_shape: Any) -> None:
        """Build the sub-layers for (B, T, dim) inputs."""
        t = input_shape[1]
        self.ln1.build(input_shape)
        self.ln2.build(input_shape)
        self.qkv.build(input_shape)
        self.proj.build((None, t, self.dim))
        self.fc1.build(input_shape)
        self.fc2.build((None, t, 2 * self.dim))

    def call(self, x: Any) -> Any:
        """(B, T, D) → (B, T, D)."""
        t, d, h = x.shape[1], self.dim, self.heads
        dh = d // h
        qkv = ops.transpose(ops.reshape(self.qkv(self.ln1(x)), (-1, t, 3, h, dh)),
                            (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(dh))
        out = ops.matmul(ops.softmax(scores, axis=-1), v)
        x = x + self.proj(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, t, d)))
        return x + self.fc2(ops.leaky_relu(self.fc1(self.ln2(x)), negative_slope=0.2))


def build(spec: CriticSpec, seed: int = 0) -> keras.Model:
    """Instantiate ``spec`` as a functional Keras model (float32, NHWC input)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(spec.input_shape_nhwc[1:])
    x = inp
    if spec.kind == "dcgan":
        channels, side = spec.width, spec.image
        while side > 4:
            x = layers.Conv2D(channels, 4, strides=2, padding="same")(x)
            x = layers.LeakyReLU(negative_slope=0.2)(x)
            channels, side = channels * 2, side // 2
        x = layers.Flatten()(x)
    elif spec.kind == "mlp":
        x = layers.Flatten()(x)
        for _ in range(spec.depth):
            x = layers.LeakyReLU(negative_slope=0.2)(layers.Dense(spec.width)(x))
    elif spec.kind == "attention":
        tokens = (spec.image // spec.patch) ** 2
        x = layers.Conv2D(spec.width, spec.patch, strides=spec.patch)(x)
        x = AddPosition()(layers.Reshape((tokens, spec.width))(x))
        for _ in range(spec.depth):
            x = Block(spec.width, spec.heads)(x)
        x = layers.GlobalAveragePooling1D()(LayerNorm()(x))
    else:
        raise ValueError(f"unknown critic kind {spec.kind!r}")
    return keras.Model(inp, layers.Dense(1)(x), name=spec.name)


def batch(spec: CriticSpec, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real and fake NHWC batches in [-1, 1] and alphas U[0, 1), as float32 NumPy arrays."""
    rng = np.random.default_rng(seed)
    real = np.clip(rng.standard_normal(spec.input_shape_nhwc), -1, 1).astype(np.float32)
    fake = np.clip(rng.standard_normal(spec.input_shape_nhwc), -1, 1).astype(np.float32)
    alpha = rng.random(spec.batch).astype(np.float32)
    return real, fake, alpha
