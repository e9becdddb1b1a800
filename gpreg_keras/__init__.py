"""gpreg for Keras 3 (TensorFlow, JAX and torch backends) — not implemented yet.

The public surface will match ``gpreg_torch`` name for name. Until it lands, importing this
package works but exposes nothing; use ``gpreg_torch`` for PyTorch.
"""

__all__: list[str] = []
