"""``stateless_critic``: a pure critic over given variable values (needed on JAX)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def stateless_critic(
    model: Any,
    trainable_values: Sequence[Any] | None = None,
    non_trainable_values: Sequence[Any] | None = None,
    *,
    training: bool = False,
) -> Callable[..., Any]:
    r"""A pure critic function over given variable values, for penalties on the JAX backend.

    ``model`` is a Keras model or layer; the returned function maps the points (one array, or
    several for a multi-input model) to the model's output, computed with
    ``model.stateless_call(trainable_values, non_trainable_values, ...)``. Differentiate your
    loss with respect to ``trainable_values`` and the penalty's parameter gradient is in it.
    Updates of non-trainable state made during the penalty pass (BatchNorm statistics) are
    discarded.

    Args:
        model: the critic, a ``keras.Model`` or ``keras.Layer``.
        trainable_values: values for ``model.trainable_variables`` (default: their current
            values, which an outer ``jax.grad`` does not see).
        non_trainable_values: values for ``model.non_trainable_variables`` (default: current).
        training: passed to the model's call.

    Returns:
        ``critic(*points) -> scores``.

    Example:
        >>> import jax, keras, gpreg_keras as gp   # doctest: +SKIP
        >>> critic = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> def loss(tv, real, fake):
        ...     return gp.wgan_gp(gp.stateless_critic(critic, tv), real, fake, seed=0)
        >>> grads = jax.grad(loss)(critic.trainable_variables, real, fake)
    """
    tv = [x.value for x in model.trainable_variables] if trainable_values is None else list(
        trainable_values
    )
    ntv = (
        [x.value for x in model.non_trainable_variables]
        if non_trainable_values is None
        else list(non_trainable_values)
    )

    def critic(*points: Any) -> Any:
        x = points[0] if len(points) == 1 else list(points)
        out, _ = model.stateless_call(tv, ntv, x, training=training)
        return out

    return critic
