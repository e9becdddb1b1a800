"""Keras tests run once per backend, each in its own process (tools/run_tests.py sets
KERAS_BACKEND). A backend that was asked for must import: no silent skip."""

from __future__ import annotations

import os

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

if BACKEND == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 fixtures need it

import keras  # noqa: E402

assert keras.backend.backend() == BACKEND, (
    f"KERAS_BACKEND={BACKEND} was requested but Keras runs {keras.backend.backend()}"
)
