"""WGAN-GP with Flax NNX networks, optax and ``jax.jit``: no Keras model anywhere.

    python examples/flax_wgan_gp.py --steps 2000

gpreg's Keras adapter computes the penalty of any pure-JAX critic on Keras's JAX backend
(``KERAS_BACKEND=jax``, set below before anything imports Keras): the critic is the Flax
module itself, rebuilt from its parameters with ``nnx.merge`` inside the function that
``jax.value_and_grad`` differentiates, so the penalty's parameter gradient (double backprop
through gpreg's inner ``jax.grad``) is in the gradient optax applies.

One ``jax.jit``-compiled function runs a whole generator step: 5 critic steps and one
generator step. Its random draws come from a JAX key split afresh for every step and passed in
as an argument — the penalty's ``seed=`` included. A fixed int seed inside a compiled step
would draw the same interpolation weights at every step.

The data are 8 Gaussians on a circle; hyperparameters follow Gulrajani et al. 2017
(arXiv:1704.00028): λ = 10, Adam with β = (0.5, 0.9), no normalization in the critic.
"""

from __future__ import annotations

import argparse
import os

if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
    raise SystemExit(f"flax_wgan_gp.py: Flax critics need Keras's JAX backend; KERAS_BACKEND is "
                     f"{os.environ['KERAS_BACKEND']!r}: unset it or set it to jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _toy import log, ring_of_gaussians
from flax import nnx

import gpreg_keras as gp

LATENT = 2


def mlp(inputs: int, outputs: int, rngs: nnx.Rngs, width: int = 64) -> nnx.Sequential:
    """Two hidden ReLU layers, no normalization (the penalty is per sample)."""
    return nnx.Sequential(nnx.Linear(inputs, width, rngs=rngs), nnx.relu,
                          nnx.Linear(width, width, rngs=rngs), nnx.relu,
                          nnx.Linear(width, outputs, rngs=rngs))


def make_step(g_def: nnx.GraphDef, d_def: nnx.GraphDef, d_opt: optax.GradientTransformation,
              g_opt: optax.GradientTransformation, batch: int, n_critic: int):
    """The compiled training step over (generator, critic, optimizer states)."""

    def critic_loss(d_params, g_params, real, key):
        k_z, k_penalty = jax.random.split(key)
        critic, generator = nnx.merge(d_def, d_params), nnx.merge(g_def, g_params)
        fake = generator(jax.random.normal(k_z, (batch, LATENT)))
        wasserstein = critic(fake).mean() - critic(real).mean()
        penalty = gp.wgan_gp(critic, real, fake, weight=10.0, seed=k_penalty)  # the line
        return wasserstein + penalty, (wasserstein, penalty)

    def generator_loss(g_params, d_params, key):
        critic, generator = nnx.merge(d_def, d_params), nnx.merge(g_def, g_params)
        return -critic(generator(jax.random.normal(key, (batch, LATENT)))).mean()

    @jax.jit
    def step(state, reals, key):
        g_params, d_params, g_state, d_state = state
        keys = jax.random.split(key, n_critic + 1)
        for i in range(n_critic):  # unrolled: n_critic is a Python int
            (_, (wasserstein, penalty)), grads = jax.value_and_grad(critic_loss, has_aux=True)(
                d_params, g_params, reals[i], keys[i])
            updates, d_state = d_opt.update(grads, d_state, d_params)
            d_params = optax.apply_updates(d_params, updates)
        loss_g, grads = jax.value_and_grad(generator_loss)(g_params, d_params, keys[-1])
        updates, g_state = g_opt.update(grads, g_state, g_params)
        g_params = optax.apply_updates(g_params, updates)
        losses = {"wasserstein": -wasserstein, "penalty": penalty, "loss_g": loss_g}
        return (g_params, d_params, g_state, d_state), losses

    return step


def train(steps: int, batch: int = 128, n_critic: int = 5, seed: int = 0,
          log_every: int = 100) -> dict[str, float]:
    """Train for ``steps`` generator steps; returns the last losses and the mean gradient
    norm of the trained critic at interpolates (WGAN-GP pulls it towards 1)."""
    rng = np.random.default_rng(seed)  # the data
    key = jax.random.key(seed)  # initial weights, latent codes and the penalty's alpha
    key, k_g, k_d = jax.random.split(key, 3)
    g_def, g_params = nnx.split(mlp(LATENT, 2, nnx.Rngs(k_g)))
    d_def, d_params = nnx.split(mlp(2, 1, nnx.Rngs(k_d)))
    g_opt = optax.adam(1e-3, b1=0.5, b2=0.9)
    d_opt = optax.adam(1e-3, b1=0.5, b2=0.9)
    state = (g_params, d_params, g_opt.init(g_params), d_opt.init(d_params))
    step = make_step(g_def, d_def, d_opt, g_opt, batch, n_critic)
    losses: dict[str, float] = {}
    for t in range(steps):
        reals = jnp.asarray(np.stack([ring_of_gaussians(batch, rng) for _ in range(n_critic)]))
        key, k_step = jax.random.split(key)  # a fresh key for every step
        state, out = step(state, reals, k_step)
        losses = {k: float(out[k]) for k in ("wasserstein", "penalty", "loss_g")}
        log(t + 1, losses, log_every)
    g_params, d_params = state[0], state[1]
    critic, generator = nnx.merge(d_def, d_params), nnx.merge(g_def, g_params)
    key, k_z, k_alpha = jax.random.split(key, 3)
    real = jnp.asarray(ring_of_gaussians(batch, rng))
    fake = generator(jax.random.normal(k_z, (batch, LATENT)))
    alpha = jax.random.uniform(k_alpha, (batch,))
    points = alpha[:, None] * real + (1 - alpha[:, None]) * fake
    losses["grad_norm"] = float(gp.grad_norm(critic, points).mean())
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    losses = train(args.steps, seed=args.seed)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    print("final: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
