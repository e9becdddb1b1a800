"""Keras tests run once per backend, each in its own process (tools/run_tests.py sets
KERAS_BACKEND). A backend that was asked for must import: no silent skip."""

from __future__ import annotations

import os

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

if BACKEND == "jax":
    # two host devices for the data-parallel test (read when JAX starts)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 fixtures need it

if BACKEND == "tensorflow":
    import tensorflow as tf

    # two logical CPUs for the MirroredStrategy test (must precede any TensorFlow op)
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402

assert keras.backend.backend() == BACKEND, (
    f"KERAS_BACKEND={BACKEND} was requested but Keras runs {keras.backend.backend()}"
)
