"""gpreg for Keras 3: the same penalties on the TensorFlow, JAX and torch backends.

    >>> import gpreg_keras as gp
    >>> # loss_d = ops.mean(fake_scores) - ops.mean(real_scores) + gp.wgan_gp(critic, real, fake)

The backend is Keras's (``KERAS_BACKEND``). On JAX, pass a pure critic — see
:func:`stateless_critic`.
"""

from gpreg._lazy import LazyRegularization as LazyRegularization
from gpreg._specs import _load_plugins
from gpreg_keras._cost import cost as cost
from gpreg_keras._exact import exact_moments as exact_moments
from gpreg_keras._penalties import check_critic as check_critic
from gpreg_keras._penalties import dragan as dragan
from gpreg_keras._penalties import get_penalty as get_penalty
from gpreg_keras._penalties import grad_norm as grad_norm
from gpreg_keras._penalties import gradient_penalty as gradient_penalty
from gpreg_keras._penalties import max_gp as max_gp
from gpreg_keras._penalties import r1 as r1
from gpreg_keras._penalties import r2 as r2
from gpreg_keras._penalties import wgan_div as wgan_div
from gpreg_keras._penalties import wgan_gp as wgan_gp
from gpreg_keras._penalties import wgan_lp as wgan_lp
from gpreg_keras._penalties import zero_gp as zero_gp
from gpreg_keras._stateless import stateless_critic as stateless_critic

# Read the plugin entry points now, eagerly: a first lookup inside tf.function would make
# AutoGraph try (and fail, noisily) to convert importlib.metadata's machinery.
_load_plugins()
del _load_plugins

__all__ = [
    "LazyRegularization",
    "check_critic",
    "cost",
    "dragan",
    "exact_moments",
    "get_penalty",
    "grad_norm",
    "gradient_penalty",
    "max_gp",
    "r1",
    "r2",
    "stateless_critic",
    "wgan_div",
    "wgan_gp",
    "wgan_lp",
    "zero_gp",
]
