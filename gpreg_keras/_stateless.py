"""``stateless_critic``: a pure critic over given variable values (needed on JAX)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

from gpreg import _validation as v
from gpreg_keras._calling import arrange


def stateless_critic(
    model: Any,
    trainable_values: Sequence[Any] | None = None,
    non_trainable_values: Sequence[Any] | None = None,
    *,
    training: bool | None = None,
) -> Callable[..., Any]:
    r"""A pure critic function over given variable values, for penalties on the JAX backend.

    ``model`` is a Keras model or layer; the returned function maps the points (one array, or
    several for a multi-input model) and any further arguments to the model's output,
    computed with ``model.stateless_call(trainable_values, non_trainable_values, ...)``; the
    inputs reach the model by the same rule as in the penalties (a Functional model with
    several inputs gets them as one list; a model whose ``call`` takes several inputs, such as
    ``call(self, image, label)``, gets them positionally). Differentiate your
    loss with respect to ``trainable_values`` and the penalty's parameter gradient is in it.

    Non-trainable state is threaded, as the stateful backends update it: each call (yours and
    the penalty's) starts from the state the previous call left, and the function's
    ``non_trainable_values`` attribute holds the latest values (BatchNorm moving statistics,
    the seed state of Dropout layers). Return them from the function you differentiate
    (``has_aux=True``) and pass them to the next step; otherwise every jitted step starts
    from the same state: the same Dropout mask each step, BatchNorm statistics that never
    move.

    Args:
        model: the critic, a ``keras.Model`` or ``keras.Layer``.
        trainable_values: values for ``model.trainable_variables`` (default: their current
            values, which an outer ``jax.grad`` does not see). On JAX, values, never the
            Variables themselves (their gradient would be zero): a ``TypeError`` says so.
        non_trainable_values: values for ``model.non_trainable_variables`` (default: current).
        training: passed to the model's call when given (``None``: not passed, Keras's
            default: Dropout off, BatchNorm on its moving statistics). Penalties can pass it
            per call instead: ``kwargs={"training": True}``.

    Returns:
        ``critic(*points) -> scores``, with the attribute ``non_trainable_values``.

    Raises:
        TypeError: on JAX, ``trainable_values`` or ``non_trainable_values`` holds Variables.

    Example:
        >>> import keras, numpy as np, gpreg_keras as gp
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> values = [v.value for v in model.trainable_variables]
        >>> critic = gp.stateless_critic(model, values)
        >>> x = np.ones((2, 4), "float32")
        >>> same = np.allclose(keras.ops.convert_to_numpy(critic(x)),
        ...                    keras.ops.convert_to_numpy(model(x)))
        >>> bool(same)
        True

        On JAX, differentiate a loss with respect to the trainable values and return the
        updated non-trainable ones (``real``, ``fake`` your batches, ``key`` a fresh JAX key
        per step)::

            def d_loss(trainable, non_trainable, real, fake, key):
                D = gp.stateless_critic(model, trainable, non_trainable)
                loss = ops.mean(D(fake, training=True)) - ops.mean(D(real, training=True))
                loss += gp.wgan_gp(D, real, fake, seed=key, kwargs={"training": True})
                return loss, D.non_trainable_values

            (loss, non_trainable), grads = jax.value_and_grad(d_loss, has_aux=True)(
                trainable, non_trainable, real, fake, key)
    """
    if keras.backend.backend() == "jax":
        for which, given in (("trainable_values", trainable_values),
                             ("non_trainable_values", non_trainable_values)):
            if given is not None and any(isinstance(x, keras.Variable) for x in given):
                raise v.stateless_variables("gpreg_keras.stateless_critic", which)
    tv = [x.value for x in model.trainable_variables] if trainable_values is None else list(
        trainable_values
    )
    ntv = (
        [x.value for x in model.non_trainable_variables]
        if non_trainable_values is None
        else list(non_trainable_values)
    )
    takes_training = getattr(model, "_call_has_training_arg", True)

    def call(points: Sequence[Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        kw = dict(kwargs)
        if training is not None and takes_training and (
                kw.setdefault("training", training) != training):
            raise ValueError(
                f"gpreg_keras.stateless_critic: the critic was built with training={training} "
                f"and is called with training={kw['training']}; give the flag in one place "
                f"(kwargs={{'training': ...}} on the penalty)."
            )
        out, critic.non_trainable_values = model.stateless_call(
            tv, critic.non_trainable_values, *arrange(model, points, args), **kw)
        return out

    def critic(*inputs: Any, **kwargs: Any) -> Any:
        return call(inputs, (), kwargs)

    critic.non_trainable_values = list(ntv)  # type: ignore[attr-defined]  # the latest state
    critic._gpreg_model = model  # type: ignore[attr-defined]  # for gpreg's layer checks
    critic._gpreg_call = call  # type: ignore[attr-defined]  # points and args kept apart
    critic._gpreg_state = critic  # type: ignore[attr-defined]  # threaded through the penalty
    critic._gpreg_stateless = (model, tv, ntv, training)  # type: ignore[attr-defined]
    return critic
