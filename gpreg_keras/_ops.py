"""The array namespace the core formulas run on under Keras: ``keras.ops`` with two fixes.

``keras.ops.mean`` (and ``std``, built on it) lose float64 precision on Keras's JAX backend
(a float64 mean comes back rounded to float32). Both are rebuilt here from ``sum``, which is
exact (on TensorFlow, ``tf.reduce_mean`` is that sum and division in one op, and its
gradient takes fewer ops than a division's; on JAX, ``jnp.mean`` in float32 and float64);
everything else is ``keras.ops`` itself.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

where = ops.where
sqrt = ops.sqrt
sum = ops.sum
max = ops.max
abs = ops.abs
stop_gradient = ops.stop_gradient
reshape = ops.reshape
zeros_like = ops.zeros_like
ones_like = ops.ones_like
square = ops.square

# The ops on every call's path, as the backend's own functions: the same kernels, without
# keras.ops' Python layer (its symbolic-tensor and dtype checks cost more than the op itself
# in eager TensorFlow and JAX; gpreg's arrays are never symbolic, and always floating).
if keras.backend.backend() == "tensorflow":
    import tensorflow as _tf

    sqrt, square, reshape = _tf.sqrt, _tf.square, _tf.reshape

    def sum(x: Any, axis: Any = None) -> Any:
        return _tf.reduce_sum(x, axis=axis)

elif keras.backend.backend() == "jax":
    import jax as _jax
    import jax.numpy as _jnp

    sqrt, square, reshape = _jnp.sqrt, _jnp.square, _jnp.reshape

    def sum(x: Any, axis: Any = None) -> Any:
        return _jnp.sum(x, axis=axis)

    _Tracer = _jax.core.Tracer
    _jax_stop = _jax.lax.stop_gradient

    def stop_gradient(x: Any) -> Any:
        """``stop_gradient`` of a traced array; a concrete array as it is (nothing can
        differentiate through one: only values that a ``jax.grad``, ``jit`` or ``vmap``
        traces are tracers), so an eager call binds no primitive for it."""
        return _jax_stop(x) if isinstance(x, _Tracer) else x


_TENSORFLOW = keras.backend.backend() == "tensorflow"
if _TENSORFLOW:
    import tensorflow as tf

    _tf_mean = tf.math.reduce_mean


_JAX = keras.backend.backend() == "jax"
if _JAX:
    _JAX_MEAN_DTYPES = (np.dtype("float32"), np.dtype("float64"))


def mean(x: Any) -> Any:
    """Mean of all elements, exact in float64 on every backend (one sum and one division by
    the element count where the shape is known; under a trace with an unknown dimension, the
    count is a tensor)."""
    if _TENSORFLOW and (x.dtype is tf.float32 or x.dtype is tf.float64):
        return _tf_mean(x)  # bitwise the sum divided by the count, as below
    if _JAX and x.dtype in _JAX_MEAN_DTYPES:
        # one jitted op where a sum and a division took two eager ones; and the numbers
        # jax.jit gives: under jit, XLA turns the division by the count into a product with
        # its reciprocal (an ulp off the eager division for some counts), so an eager call
        # and a jitted one now agree bit for bit
        return _jnp.mean(x)
    dims = tuple(x.shape)
    if all(isinstance(d, int) for d in dims):
        return sum(x) / math.prod(dims)
    flat = ops.reshape(x, (-1,))
    return ops.sum(flat) / ops.cast(ops.shape(flat)[0], x.dtype)


def std(x: Any, ddof: int = 0) -> Any:
    """Standard deviation of all elements (population for ``ddof=0``, unbiased for 1), exact
    in float64 on every backend."""
    d = x - mean(x)
    if ddof == 0:
        return ops.sqrt(mean(d * d))
    flat = ops.reshape(d * d, (-1,))
    return ops.sqrt(ops.sum(flat) / (ops.cast(ops.shape(flat)[0], x.dtype) - ddof))
