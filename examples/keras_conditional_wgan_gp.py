"""A class-conditional WGAN-GP under ``fit()`` with gpreg, on any Keras 3 backend.

Run it with the backend of your choice::

    KERAS_BACKEND=jax python examples/keras_conditional_wgan_gp.py --steps 3000

The data are 8 Gaussians on a circle, the class of a point is its Gaussian; ``fit(points,
labels)`` feeds both. The critic is a subclassed model with ``call(self, points, label,
training=False)``, a projection discriminator (Miyato & Koyama 2018, arXiv:1802.05637):
D(x, y) = w·h(x) + <embed(y), h(x)>. The penalty takes the critic itself, the labels in
``args=`` (passed to ``critic(points, labels)``, never interpolated nor differentiated) and
``kwargs={"training": True}``, so that it runs the critic the way the adversarial terms do.
On JAX the same losses run through ``gp.stateless_critic`` inside a pure ``train_step``. The
random draws advance every step: a ``SeedGenerator`` on TensorFlow and torch, a key folded
with the optimizer's step counter on JAX. After 3000 steps (about a minute on a CPU with JAX)
every generated point lands nearest the centre of its own class (``on_class`` 1.0).
"""

from __future__ import annotations

import argparse
from typing import Any

import keras
import numpy as np
from _toy import labelled_ring, mode_accuracy
from keras import layers, ops

import gpreg_keras as gp

CLASSES = 8


class ProjectionCritic(keras.Model):
    """D(x, y) = w·h(x) + b + <embed(y), h(x)>, h an MLP with LayerNormalization (no
    BatchNormalization: it would couple the samples of a batch)."""

    def __init__(self, classes: int = CLASSES, width: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.body = keras.Sequential([
            layers.Dense(width), layers.LayerNormalization(), layers.LeakyReLU(0.2),
            layers.Dense(width), layers.LayerNormalization(), layers.LeakyReLU(0.2)])
        self.head = layers.Dense(1)
        self.embed = layers.Embedding(classes, width)

    def call(self, points: Any, label: Any, training: bool = False) -> Any:
        h = self.body(points, training=training)
        return self.head(h)[:, 0] + ops.sum(self.embed(label) * h, axis=1)


class Generator(keras.Model):
    """G(z, y): an MLP on the noise and a learned class embedding."""

    def __init__(self, classes: int = CLASSES, width: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed = layers.Embedding(classes, 8)
        self.net = keras.Sequential([layers.Dense(width, activation="relu"),
                                     layers.Dense(width, activation="relu"), layers.Dense(2)])

    def call(self, z: Any, label: Any, training: bool = False) -> Any:
        return self.net(ops.concatenate([z, self.embed(label)], axis=1), training=training)


class ConditionalWGANGP(keras.Model):
    """Generator + projection critic trained by ``fit(points, labels)``.

    Args:
        latent_dim: size of the generator's input noise.
        gp_weight: λ of the gradient penalty.
        seed: seed of the noise and of the penalty's interpolation weights.
    """

    def __init__(self, latent_dim: int = 2, gp_weight: float = 10.0, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latent_dim, self.gp_weight, self.base_seed = latent_dim, gp_weight, seed
        self.generator, self.critic = Generator(), ProjectionCritic()
        labels = np.zeros((1,), "int32")
        self.generator(np.zeros((1, latent_dim), "float32"), labels)  # build both
        self.critic(np.zeros((1, 2), "float32"), labels)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # every variable exists (fit() on JAX needs them all up front)

    def call(self, points: Any, label: Any) -> Any:
        """The critic's scores (generate with ``model.generator(z, label)``)."""
        return self.critic(points, label)

    # --- the losses, written once for every backend ---------------------------------------
    def losses_of(self, critic: Any, generator: Any, real: Any, labels: Any, z: Any,
                  seed: Any) -> Any:
        fake = generator(z, labels, training=True)
        d_fake = critic(ops.stop_gradient(fake), labels, training=True)
        d_loss = ops.mean(d_fake) - ops.mean(critic(real, labels, training=True))
        d_loss = d_loss + gp.wgan_gp(critic, real, fake, weight=self.gp_weight, seed=seed,
                                     args=(labels,), kwargs={"training": True})
        g_loss = -ops.mean(critic(fake, labels, training=True))
        return d_loss, g_loss

    # --- TensorFlow and torch: stateful models ------------------------------------------------
    def _stateful_step(self, real: Any, labels: Any) -> dict[str, Any]:
        z = keras.random.normal((ops.shape(real)[0], self.latent_dim), seed=self.seed_generator)
        d_vars, g_vars = self.critic.trainable_variables, self.generator.trainable_variables
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape(persistent=True) as tape:
                d_loss, g_loss = self.losses_of(self.critic, self.generator, real, labels, z,
                                                self.seed_generator)
            d_grads, g_grads = tape.gradient(d_loss, d_vars), tape.gradient(g_loss, g_vars)
            del tape
        else:
            import torch

            d_loss, g_loss = self.losses_of(self.critic, self.generator, real, labels, z,
                                            self.seed_generator)
            d_grads = torch.autograd.grad(d_loss, [v.value for v in d_vars], retain_graph=True)
            g_grads = torch.autograd.grad(g_loss, [v.value for v in g_vars])
        self.optimizer.apply(list(d_grads) + list(g_grads), d_vars + g_vars)
        return {"d_loss": d_loss, "g_loss": g_loss}

    # --- JAX: a pure step over the state that fit() threads through -------------------------
    def _stateless_step(self, state: Any, real: Any, labels: Any) -> tuple[dict[str, Any], Any]:
        import jax

        tv, ntv, opt_vars, metric_vars = state
        index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        d_idx = [index[id(v)] for v in self.critic.trainable_variables]
        g_idx = [index[id(v)] for v in self.generator.trainable_variables]
        step = opt_vars[0]  # the optimizer's iteration counter: a fresh key every step
        key = jax.random.fold_in(jax.random.key(self.base_seed), step)
        z = keras.random.normal((real.shape[0], self.latent_dim), seed=jax.random.fold_in(key, 1))
        penalty_key = jax.random.fold_in(key, 2)

        def objective(d_tv: Any, g_tv: Any, which: int) -> Any:
            critic = gp.stateless_critic(self.critic, d_tv)
            generator = gp.stateless_critic(self.generator, g_tv)
            return self.losses_of(critic, generator, real, labels, z, penalty_key)[which]

        d_loss, d_grads = jax.value_and_grad(objective)(
            [tv[i] for i in d_idx], [tv[i] for i in g_idx], 0)
        g_loss, g_grads = jax.value_and_grad(objective, argnums=1)(
            [tv[i] for i in d_idx], [tv[i] for i in g_idx], 1)
        by_index = dict(zip(d_idx + g_idx, [*d_grads, *g_grads]))
        grads = [by_index[i] for i in range(len(tv))]  # in the order of model.trainable_variables
        new_tv, new_opt_vars = self.optimizer.stateless_apply(opt_vars, grads, tv)
        return {"d_loss": d_loss, "g_loss": g_loss}, (new_tv, ntv, new_opt_vars, metric_vars)

    def train_step(self, *args: Any) -> Any:
        if keras.backend.backend() == "jax":
            state, (real, labels) = args
            return self._stateless_step(state, real, labels)
        ((real, labels),) = args
        return self._stateful_step(real, labels)


def train(steps: int = 3000, batch: int = 64, seed: int = 0,
          verbose: int = 0) -> tuple[ConditionalWGANGP, dict[str, list[float]]]:
    """Build, compile and ``fit`` the model for ``steps`` steps; returns it and the history."""
    keras.utils.set_random_seed(seed)
    model = ConditionalWGANGP(seed=seed)
    points, labels = labelled_ring(steps * batch, np.random.default_rng(seed))
    model.compile(optimizer=keras.optimizers.Adam(2e-3, beta_1=0.5, beta_2=0.9))
    history = model.fit(points, labels, batch_size=batch, epochs=1, shuffle=False,
                        verbose=verbose)
    return model, history.history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    model, hist = train(args.steps, verbose=1)
    labels = np.arange(512) % CLASSES
    z = keras.random.normal((512, model.latent_dim), seed=1)
    fake = ops.convert_to_numpy(model.generator(z, labels))
    print(f"{keras.backend.backend()}: final d_loss {hist['d_loss'][-1]:.4f}, "
          f"g_loss {hist['g_loss'][-1]:.4f}, on_class {mode_accuracy(fake, labels):.4f}")
