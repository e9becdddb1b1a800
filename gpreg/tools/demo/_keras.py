"""The ``gpreg demo`` training loop in Keras 3, through ``gpreg_keras``, on the backend that
``KERAS_BACKEND`` names: a ``tf.function`` step on TensorFlow, a ``jax.jit`` step over the
variables' values on JAX, an eager step on torch.

Keras is imported on first use (:func:`_load`), so importing this module (``pytest
--doctest-modules gpreg``) neither needs Keras nor starts a backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpreg.tools.demo._common import (
    Batches,
    Config,
    ProgressFn,
    Run,
    evaluate,
    loss_kind,
    penalty_term,
)

keras: Any = None
ops: Any = None
gp: Any = None


def _load() -> None:
    """Import Keras, ``keras.ops`` and gpreg_keras into this module (ImportError if absent)."""
    global keras, ops, gp
    if keras is None:
        import keras as keras_module
        from keras import ops as ops_module

        import gpreg_keras

        keras, ops, gp = keras_module, ops_module, gpreg_keras


def _one_thread() -> None:
    """One intra-op thread, as in the torch demo (tiny networks; see ``_torch.deterministic``).
    TensorFlow accepts this only before its runtime starts, so a process that already ran
    TensorFlow ops keeps its setting."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    elif backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass


def versions() -> str:
    _load()
    return f"keras {keras.__version__} on {keras.backend.backend()}"


def mlp(inputs: int, outputs: int, width: int) -> Any:
    return keras.Sequential([keras.Input((inputs,)),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(outputs)])


def critic_loss(penalty: str, critic: Any, real: Any, fake: Any, seed: Any) -> tuple[Any, Any]:
    """The critic's adversarial loss and its penalty (0 for "none"); ``seed`` drives the
    penalty's random draws."""
    d_real, d_fake = ops.squeeze(critic(real), 1), ops.squeeze(critic(fake), 1)
    if loss_kind(penalty) == "ns":
        loss = ops.mean(ops.softplus(d_fake)) + ops.mean(ops.softplus(-d_real))
    else:
        loss = ops.mean(d_fake) - ops.mean(d_real)
    reg = penalty_term(gp, penalty, critic, real, fake, {"seed": seed})
    return loss, ops.zeros((), dtype=loss.dtype) if reg is None else reg


def generator_loss(penalty: str, scores: Any) -> Any:
    scores = ops.squeeze(scores, 1)
    return ops.mean(ops.softplus(-scores)) if loss_kind(penalty) == "ns" else -ops.mean(scores)


def _adam(cfg: Config, variables: list[Any]) -> Any:
    opt = keras.optimizers.Adam(cfg.lr, beta_1=cfg.betas[0], beta_2=cfg.betas[1])
    opt.build(variables)
    return opt


def _tensorflow_steps(penalty: str, cfg: Config, gen: Any, critic: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    opt_g, opt_d = _adam(cfg, gen.trainable_variables), _adam(cfg, critic.trainable_variables)
    seed = keras.random.SeedGenerator(cfg.seed)

    @tf.function
    def d_step(real: Any, z: Any) -> Any:
        fake = gen(z)
        with tf.GradientTape() as tape:
            loss, reg = critic_loss(penalty, critic, real, fake, seed)
            total = loss + reg
        grads = tape.gradient(total, critic.trainable_variables)
        opt_d.apply(grads, critic.trainable_variables)
        return loss

    @tf.function
    def g_step(z: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = generator_loss(penalty, critic(gen(z)))
        opt_g.apply(tape.gradient(loss, gen.trainable_variables), gen.trainable_variables)
        return loss

    return d_step, g_step


def _torch_steps(penalty: str, cfg: Config, gen: Any, critic: Any) -> tuple[Any, Any]:
    import torch

    opt_g, opt_d = _adam(cfg, gen.trainable_variables), _adam(cfg, critic.trainable_variables)
    seed = keras.random.SeedGenerator(cfg.seed)

    def d_step(real: Any, z: Any) -> Any:
        fake = ops.stop_gradient(gen(z))
        loss, reg = critic_loss(penalty, critic, real, fake, seed)
        params = [v.value for v in critic.trainable_variables]
        opt_d.apply(torch.autograd.grad(loss + reg, params), critic.trainable_variables)
        return loss

    def g_step(z: Any) -> Any:
        loss = generator_loss(penalty, critic(gen(z)))
        params = [v.value for v in gen.trainable_variables]
        opt_g.apply(torch.autograd.grad(loss, params), gen.trainable_variables)
        return loss

    return d_step, g_step


class _JaxSteps:
    """Pure, jitted steps over the variables' values; ``finish`` writes them back."""

    def __init__(self, penalty: str, cfg: Config, gen: Any, critic: Any) -> None:
        import jax

        self.gen, self.critic = gen, critic
        opt_g, opt_d = _adam(cfg, gen.trainable_variables), _adam(cfg, critic.trainable_variables)
        self.g_tv = [v.value for v in gen.trainable_variables]
        self.d_tv = [v.value for v in critic.trainable_variables]
        self.g_ov = [v.value for v in opt_g.variables]
        self.d_ov = [v.value for v in opt_d.variables]
        self.key = jax.random.key(cfg.seed)
        self.count = 0

        def d_objective(d_tv: Any, g_tv: Any, real: Any, z: Any, key: Any) -> Any:
            fake = jax.lax.stop_gradient(gp.stateless_critic(gen, g_tv)(z))
            loss, reg = critic_loss(penalty, gp.stateless_critic(critic, d_tv), real, fake, key)
            return loss + reg, loss

        def d_step(d_tv: Any, d_ov: Any, g_tv: Any, real: Any, z: Any, key: Any) -> Any:
            (_, loss), grads = jax.value_and_grad(d_objective, has_aux=True)(
                d_tv, g_tv, real, z, key)
            d_tv, d_ov = opt_d.stateless_apply(d_ov, grads, d_tv)
            return d_tv, d_ov, loss

        def g_objective(g_tv: Any, d_tv: Any, z: Any) -> Any:
            scores = gp.stateless_critic(critic, d_tv)(gp.stateless_critic(gen, g_tv)(z))
            return generator_loss(penalty, scores)

        def g_step(g_tv: Any, g_ov: Any, d_tv: Any, z: Any) -> Any:
            loss, grads = jax.value_and_grad(g_objective)(g_tv, d_tv, z)
            g_tv, g_ov = opt_g.stateless_apply(g_ov, grads, g_tv)
            return g_tv, g_ov, loss

        self._d, self._g = jax.jit(d_step), jax.jit(g_step)

    def d_step(self, real: Any, z: Any) -> Any:
        import jax

        self.count += 1
        key = jax.random.fold_in(self.key, self.count)
        self.d_tv, self.d_ov, loss = self._d(self.d_tv, self.d_ov, self.g_tv, real, z, key)
        return loss

    def g_step(self, z: Any) -> Any:
        self.g_tv, self.g_ov, loss = self._g(self.g_tv, self.g_ov, self.d_tv, z)
        return loss

    def finish(self) -> None:
        for v, x in zip(self.gen.trainable_variables, self.g_tv):
            v.assign(x)
        for v, x in zip(self.critic.trainable_variables, self.d_tv):
            v.assign(x)


def _np(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def train(penalty: str, cfg: Config, data: Any, progress: ProgressFn) -> Run:
    """Train one GAN with ``penalty`` and evaluate it."""
    _load()
    backend = keras.backend.backend()
    _one_thread()
    keras.utils.set_random_seed(cfg.seed)  # the same initial networks for every penalty
    gen, critic = mlp(cfg.latent, 2, cfg.width), mlp(2, 1, cfg.width)
    finish: Callable[[], None] = lambda: None  # noqa: E731
    if backend == "jax":
        jax_steps = _JaxSteps(penalty, cfg, gen, critic)
        d_step, g_step, finish = jax_steps.d_step, jax_steps.g_step, jax_steps.finish
    elif backend == "tensorflow":
        d_step, g_step = _tensorflow_steps(penalty, cfg, gen, critic)
    else:
        d_step, g_step = _torch_steps(penalty, cfg, gen, critic)
    batches = Batches(cfg, data)
    d_loss: Any = 0.0
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        for _ in range(cfg.n_critic):
            real = ops.convert_to_tensor(batches.real())
            d_loss = d_step(real, ops.convert_to_tensor(batches.z()))
        g_step(ops.convert_to_tensor(batches.z()))
        progress(step + 1, time.perf_counter() - t0)
    finish()
    d_loss = float(_np(d_loss))  # waits for the last step (JAX dispatches asynchronously)
    wall = time.perf_counter() - t0
    evaluated = gp.stateless_critic(critic) if backend == "jax" else critic
    return evaluate(
        penalty, cfg, data,
        generate=lambda z: _np(gen(ops.convert_to_tensor(z))),
        score=lambda x: _np(critic(ops.convert_to_tensor(x)))[:, 0],
        grad_norms=lambda x: _np(gp.grad_norm(evaluated, ops.convert_to_tensor(x))),
        wall_s=wall, d_loss=d_loss)
