"""WGAN-GP in a TensorFlow custom training loop under ``tf.distribute.MirroredStrategy``.

    KERAS_BACKEND=tensorflow python examples/tf_mirrored_wgan_gp.py --steps 500

The machine's CPU is split into 2 logical devices, so the strategy has 2 replicas without a
GPU. Each replica gets half of every global batch; the Keras 3 optimizer *sums* the replicas'
gradients (an all-reduce SUM) before it applies them.

Getting the scale right: every per-replica loss must be the replica's share of the *global*
mean — sum over the replica's samples, divided by the global batch size — so that the sum
over replicas is the mean over the global batch. A per-replica ``mean`` is too large by the
number of replicas (``num_replicas_in_sync``); dividing it by that number is the same thing
when the replicas get equal shares. Here the adversarial loss goes through
``tf.nn.compute_average_loss`` and the penalty uses ``reduction="sum"`` divided by the global
batch size. ``--check`` verifies it: the summed replica gradients of one critic step equal
the gradient of the same loss computed on one device over the whole global batch.

Keep the critic free of BatchNormalization (the penalty is per sample; and under a strategy
its statistics would be per replica anyway).
"""

from __future__ import annotations

import argparse
import os

if os.environ.setdefault("KERAS_BACKEND", "tensorflow") != "tensorflow":
    raise SystemExit(f"tf_mirrored_wgan_gp.py: MirroredStrategy is TensorFlow's, so Keras must "
                     f"run on TensorFlow; KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}: "
                     f"unset it or set it to tensorflow")

import numpy as np
import tensorflow as tf
from _toy import ring_of_gaussians

REPLICAS = 2


def split_cpu(replicas: int = REPLICAS) -> list[str]:
    """Split the first CPU into ``replicas`` logical devices; must run before TensorFlow
    initializes its devices (before the first op)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def mlp(keras, inputs: int, outputs: int, width: int = 64):
    return keras.Sequential([keras.Input((inputs,)),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(outputs)])


class MirroredWGANGP:
    """Generator, critic and their optimizers created under ``strategy.scope()``."""

    def __init__(self, strategy: tf.distribute.Strategy, global_batch: int, latent: int = 2,
                 seed: int = 0) -> None:
        import keras

        import gpreg_keras as gp

        self.gp, self.keras = gp, keras
        self.strategy, self.global_batch, self.latent = strategy, global_batch, latent
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            self.generator = mlp(keras, latent, 2)
            self.critic = mlp(keras, 2, 1)
            self.opt_g = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
            self.opt_d = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
            self.opt_g.build(self.generator.trainable_variables)
            self.opt_d.build(self.critic.trainable_variables)

    # --- the critic's loss on one replica's share of the global batch -----------------------
    def critic_loss(self, real: tf.Tensor, z: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
        fake = tf.stop_gradient(self.generator(z))
        per_example = tf.squeeze(self.critic(fake) - self.critic(real), axis=1)
        # Σ_local (D(fake_i) − D(real_i)) / global batch: this replica's share of the mean
        wasserstein = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
        # the same for the penalty: Σ_local λ(‖g_i‖ − 1)² / global batch
        penalty = self.gp.wgan_gp(self.critic, real, fake, alpha=alpha,
                                  global_batch_size=self.global_batch)
        return wasserstein + penalty

    def generator_loss(self, z: tf.Tensor) -> tf.Tensor:
        scores = tf.squeeze(self.critic(self.generator(z)), axis=1)
        return tf.nn.compute_average_loss(-scores, global_batch_size=self.global_batch)

    # --- replica steps; the optimizer all-reduces (sums) the gradients -----------------------
    def _d_replica(self, real: tf.Tensor, z: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = self.critic_loss(real, z, alpha)
        grads = tape.gradient(loss, self.critic.trainable_variables)
        self.opt_d.apply(grads, self.critic.trainable_variables)
        return loss

    def _g_replica(self, z: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = self.generator_loss(z)
        grads = tape.gradient(loss, self.generator.trainable_variables)
        self.opt_g.apply(grads, self.generator.trainable_variables)
        return loss

    @tf.function
    def d_step(self, batch: tuple[tf.Tensor, ...]) -> tf.Tensor:
        losses = self.strategy.run(self._d_replica, args=batch)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    @tf.function
    def g_step(self, z: tf.Tensor) -> tf.Tensor:
        losses = self.strategy.run(self._g_replica, args=(z,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    # --- the scaling check ------------------------------------------------------------------
    @tf.function
    def summed_replica_grads(self, batch: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        """Σ over replicas of each replica's critic gradient: what the optimizer applies."""

        def replica(real: tf.Tensor, z: tf.Tensor, alpha: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                loss = self.critic_loss(real, z, alpha)
            return tape.gradient(loss, self.critic.trainable_variables)

        grads = self.strategy.run(replica, args=batch)
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]

    def single_device_grads(self, real: np.ndarray, z: np.ndarray,
                            alpha: np.ndarray) -> list[tf.Tensor]:
        """The critic gradient of the global-batch mean loss, on one device, no strategy."""
        with tf.GradientTape() as tape:
            fake = tf.stop_gradient(self.generator(z))
            loss = (tf.reduce_mean(self.critic(fake)) - tf.reduce_mean(self.critic(real))
                    + self.gp.wgan_gp(self.critic, tf.constant(real), fake,
                                      alpha=tf.constant(alpha)))
        return tape.gradient(loss, self.critic.trainable_variables)


def batches(strategy: tf.distribute.Strategy, global_batch: int, latent: int, n: int,
            seed: int) -> tf.distribute.DistributedDataset:
    """``n`` global batches of (real, z, alpha), split over the replicas by the strategy."""
    rng = np.random.default_rng(seed)
    rows = n * global_batch
    data = (ring_of_gaussians(rows, rng), rng.normal(size=(rows, latent)).astype("float32"),
            rng.uniform(size=rows).astype("float32"))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(global_batch, drop_remainder=True)
    return strategy.experimental_distribute_dataset(ds)


def check_scaling(model: MirroredWGANGP, seed: int = 1) -> float:
    """Largest relative difference between the summed replica gradients and the one-device
    gradient over the same global batch (same points, same alpha)."""
    rng = np.random.default_rng(seed)
    n = model.global_batch
    real = ring_of_gaussians(n, rng)
    z = rng.normal(size=(n, model.latent)).astype("float32")
    alpha = rng.uniform(size=n).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((real, z, alpha)).batch(n)
    batch = next(iter(model.strategy.experimental_distribute_dataset(ds)))
    summed = model.summed_replica_grads(batch)
    single = model.single_device_grads(real, z, alpha)
    return max(float(tf.norm(a - b) / tf.maximum(tf.norm(b), 1e-12))
               for a, b in zip(summed, single))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="generator steps")
    parser.add_argument("--batch", type=int, default=128, help="global batch size")
    parser.add_argument("--check", action="store_true",
                        help="first verify the per-replica scaling of the loss and penalty")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    devices = split_cpu()
    strategy = tf.distribute.MirroredStrategy(devices)
    print(f"{strategy.num_replicas_in_sync} replicas on {', '.join(devices)}")
    model = MirroredWGANGP(strategy, args.batch, seed=args.seed)
    if args.check:
        err = check_scaling(model)
        print(f"scaling check: summed replica gradients vs one-device gradient, "
              f"max relative difference {err:.1e}")
        if err > 1e-4:
            raise SystemExit("the per-replica losses are scaled wrongly")
    n_critic = 5
    it = iter(batches(strategy, args.batch, model.latent, args.steps * (n_critic + 1),
                      args.seed))
    d_loss = g_loss = float("nan")
    for step in range(args.steps):
        for _ in range(n_critic):
            d_loss = float(model.d_step(next(it)))
        _, z, _ = next(it)
        g_loss = float(model.g_step(z))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: critic loss {d_loss:.4f}, generator loss {g_loss:.4f}")
    print(f"final: critic loss {d_loss:.4f}, generator loss {g_loss:.4f}")


if __name__ == "__main__":
    main()
