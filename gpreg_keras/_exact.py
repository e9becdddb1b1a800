"""``exact_moments``: public on every backend (a no-op outside TensorFlow)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


@contextlib.contextmanager
def exact_moments() -> Iterator[None]:
    r"""Exact normalization statistics for double backprop in your own TensorFlow code.

    gpreg's penalties already use it while they evaluate the critic. On Keras's TensorFlow
    backend (and for tf-keras and plain ``tf.nn.moments`` users), normalization layers get
    their variance from ``tf.nn.moments``, which stops the gradient through the mean: right
    to first order, wrong to second. Inside this context the statistics are computed exactly;
    on the JAX and torch backends it does nothing.

    Example:
        >>> import gpreg_keras as gp
        >>> with gp.exact_moments():
        ...     pass  # your own nested-tape code with LayerNormalization
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from gpreg_keras._tensorflow import exact_moments as tf_exact

    with tf_exact():
        yield
