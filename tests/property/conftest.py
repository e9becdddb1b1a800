"""Property tests: the torch files always run; test_keras_agree.py runs only when
KERAS_BACKEND is set (once per backend, each in its own process, like tests/keras).

On JAX, float64 needs x64, which must be switched on before Keras starts.
"""

from __future__ import annotations

import os

if os.environ.get("KERAS_BACKEND") == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)
