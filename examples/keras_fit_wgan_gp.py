"""A WGAN-GP as a ``keras.Model`` whose ``train_step`` uses gpreg; ``fit()`` on any backend.

Run it with the backend of your choice::

    KERAS_BACKEND=jax python examples/keras_fit_wgan_gp.py --steps 200

One optimizer holds both networks' variables; each step computes the critic's loss
(Wasserstein estimate + gradient penalty) for the critic's variables and the generator's loss
for the generator's, and applies both gradients at once. Adam's state is per variable, so this
is the same as two Adam optimizers with one learning rate. The data are a ring of 8 Gaussians.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import keras
import numpy as np
from keras import ops

import gpreg_keras as gp


def ring_of_gaussians(n: int, seed: int = 0, radius: float = 2.0, std: float = 0.05):
    """``n`` 2-D points from 8 Gaussians evenly spaced on a circle."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, size=n)
    angles = 2 * math.pi * k / 8
    centres = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return (centres + std * rng.normal(size=(n, 2))).astype("float32")


def mlp(out: int, width: int = 64, name: str = "") -> keras.Model:
    return keras.Sequential([keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(out)], name=name)


class WGANGP(keras.Model):
    """Generator + critic trained by ``fit(real_data)`` with a WGAN-GP critic loss.

    Args:
        latent_dim: size of the generator's input noise.
        data_dim: size of a sample.
        gp_weight: λ of the gradient penalty (0 turns it off).
        seed: seed of the noise and of the penalty's interpolation weights.
    """

    def __init__(self, latent_dim: int = 8, data_dim: int = 2, gp_weight: float = 10.0,
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latent_dim, self.gp_weight, self.base_seed = latent_dim, gp_weight, seed
        self.generator = mlp(data_dim, name="generator")
        self.critic = mlp(1, name="critic")
        self.generator.build((None, latent_dim))
        self.critic.build((None, data_dim))
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x: Any) -> Any:
        """The critic's scores of data ``x`` (generate with ``model.generator(z)``)."""
        return self.critic(x)

    # --- the losses, written once for every backend ---------------------------------------
    def losses_of(self, critic: Any, generator: Any, real: Any, z: Any, seed: Any) -> Any:
        # ``seed`` moves every step: the SeedGenerator (TensorFlow, torch) or a key per step
        # (JAX). The critic runs in training mode everywhere, the penalty pass included.
        train = {"training": True}
        fake = generator(z, **train)
        d_fake = critic(ops.stop_gradient(fake), **train)
        d_loss = ops.mean(d_fake) - ops.mean(critic(real, **train))
        d_loss = d_loss + gp.wgan_gp(critic, real, fake, weight=self.gp_weight, seed=seed,
                                     kwargs=train)
        g_loss = -ops.mean(critic(fake, **train))
        return d_loss, g_loss

    def _variables(self) -> tuple[list[Any], list[Any]]:
        return self.critic.trainable_variables, self.generator.trainable_variables

    # --- TensorFlow and torch: stateful models ------------------------------------------------
    def _stateful_step(self, real: Any) -> dict[str, Any]:
        batch = ops.shape(real)[0]
        z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
        d_vars, g_vars = self._variables()
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape(persistent=True) as tape:
                d_loss, g_loss = self.losses_of(self.critic, self.generator, real, z,
                                                self.seed_generator)
            d_grads = tape.gradient(d_loss, d_vars)
            g_grads = tape.gradient(g_loss, g_vars)
            del tape
        else:
            import torch

            d_loss, g_loss = self.losses_of(self.critic, self.generator, real, z,
                                            self.seed_generator)
            d_grads = torch.autograd.grad(d_loss, [v.value for v in d_vars], retain_graph=True)
            g_grads = torch.autograd.grad(g_loss, [v.value for v in g_vars])
        self.optimizer.apply(list(d_grads) + list(g_grads), d_vars + g_vars)
        return {"d_loss": d_loss, "g_loss": g_loss}

    # --- JAX: a pure step over the state that fit() threads through -------------------------
    def _stateless_step(self, state: Any, real: Any) -> tuple[dict[str, Any], Any]:
        import jax

        tv, ntv, opt_vars, metric_vars = state
        index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        d_vars, g_vars = self._variables()
        d_idx = [index[id(v)] for v in d_vars]
        g_idx = [index[id(v)] for v in g_vars]
        nt_index = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        d_nt = [nt_index[id(v)] for v in self.critic.non_trainable_variables]
        step = opt_vars[0]  # the optimizer's iteration counter: a fresh key every step
        key = jax.random.fold_in(jax.random.key(self.base_seed), step)
        z = keras.random.normal((real.shape[0], self.latent_dim), seed=jax.random.fold_in(key, 1))

        def generator_of(g_tv: Any) -> Any:
            g_ntv = [ntv[nt_index[id(v)]] for v in self.generator.non_trainable_variables]
            return gp.stateless_critic(self.generator, g_tv, g_ntv)

        def d_objective(d_tv: Any) -> Any:
            critic = gp.stateless_critic(self.critic, d_tv, [ntv[i] for i in d_nt])
            g_tv = [tv[i] for i in g_idx]
            d_loss = self.losses_of(critic, generator_of(g_tv), real, z, key)[0]
            return d_loss, critic.non_trainable_values  # BatchNorm / Dropout state, threaded

        def g_objective(g_tv: Any) -> Any:
            critic = gp.stateless_critic(self.critic, [tv[i] for i in d_idx],
                                         [ntv[i] for i in d_nt])
            g_loss = self.losses_of(critic, generator_of(g_tv), real, z, key)[1]
            return g_loss, critic.non_trainable_values

        def thread(values: list[Any]) -> None:  # the critic's state, for the next call
            for i, value in zip(d_nt, values):
                ntv[i] = value

        ntv = list(ntv)
        (d_loss, d_ntv), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
            [tv[i] for i in d_idx])
        thread(d_ntv)
        (g_loss, g_ntv), g_grads = jax.value_and_grad(g_objective, has_aux=True)(
            [tv[i] for i in g_idx])
        thread(g_ntv)
        grads = [None] * len(tv)
        for i, g in zip(d_idx + g_idx, list(d_grads) + list(g_grads)):
            grads[i] = g
        new_tv, new_opt_vars = self.optimizer.stateless_apply(opt_vars, grads, tv)
        return {"d_loss": d_loss, "g_loss": g_loss}, (new_tv, ntv, new_opt_vars, metric_vars)

    def train_step(self, *args: Any) -> Any:
        if keras.backend.backend() == "jax":
            state, data = args
            return self._stateless_step(state, data)
        (data,) = args
        return self._stateful_step(data)


def train(steps: int = 200, batch: int = 64, gp_weight: float = 10.0, seed: int = 0,
          verbose: int = 0) -> tuple[WGANGP, dict[str, list[float]]]:
    """Build, compile and ``fit`` the model for ``steps`` steps; returns it and the history."""
    keras.utils.set_random_seed(seed)
    model = WGANGP(gp_weight=gp_weight, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-4, beta_1=0.5, beta_2=0.9))
    data = ring_of_gaussians(steps * batch, seed=seed)
    history = model.fit(data, batch_size=batch, epochs=1, shuffle=False, verbose=verbose)
    return model, history.history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gp-weight", type=float, default=10.0)
    args = parser.parse_args()
    _, hist = train(args.steps, gp_weight=args.gp_weight, verbose=1)
    print(f"{keras.backend.backend()}: final d_loss {hist['d_loss'][-1]:.4f}, "
          f"g_loss {hist['g_loss'][-1]:.4f}")
