"""JAX backend: the input gradient with ``jax.grad`` of a pure critic.

The critic must be a pure function of the points that closes over *traced* parameters —
typically ``model.stateless_call(trainable_values, non_trainable_values, x)`` — so that an
outer ``jax.grad`` with respect to those values sees the penalty. :func:`stateless_critic`
builds that closure from a Keras model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
from jax.extend.core import Literal

from gpreg import _call
from gpreg import _validation as v


def keras_model_error(where: str) -> TypeError:
    return TypeError(
        f"{where}: on the JAX backend the critic must be a pure function of the points, not a "
        f"Keras model: jax.grad can only differentiate with respect to the values you trace, "
        f"and a model called directly uses its stored variables. Build the closure with "
        f"gpreg_keras.stateless_critic(model, trainable_values, non_trainable_values) inside "
        f"the function you differentiate (see its docstring)."
    )


def _depends_on_inputs(fn: Callable[..., Any], points: tuple[Any, ...]) -> bool:
    """Whether ``fn``'s output depends differentiably on ``points`` (its linearization is
    not a constant); ``stop_gradient`` inside ``fn`` cuts the dependence."""
    _, linear = jax.linearize(fn, *points)
    closed = jax.make_jaxpr(linear)(*points)
    live = {id(x) for x in closed.jaxpr.invars}
    for eqn in closed.jaxpr.eqns:
        if any(id(x) in live for x in eqn.invars if not isinstance(x, Literal)):
            live.update(id(o) for o in eqn.outvars)
    return any(id(x) in live for x in closed.jaxpr.outvars if not isinstance(x, Literal))


def _concrete(x: Any) -> Any:
    """``x``'s value, also where ``x`` is a tracer of an outer ``jax.grad`` (or ``vmap``) that
    runs eagerly; ``None`` while ``jax.jit`` (or any abstract trace) traces it."""
    if not isinstance(x, jax.core.Tracer):
        return x
    to_value = getattr(x, "to_concrete_value", None)  # JAX >= 0.4.36
    return None if to_value is None else to_value()


def input_gradients(
    where: str,
    critic: Callable[..., Any],
    points: tuple[Any, ...],
    create_graph: bool,
    scale: Any = None,
    output: _call.Output = None,
) -> tuple[tuple[Any, ...], Any]:
    """∂(Σ critic outputs)/∂points by ``jax.grad``, differentiable again by an outer grad,
    and the scores (``output`` picks them out of a structured output)."""
    if isinstance(critic, keras.Layer):
        raise keras_model_error(where)
    batch = int(points[0].shape[0])
    # A stateless critic threads its non-trainable state (BatchNorm statistics, Dropout seeds).
    # Inside jax.grad the new state is a value of the inner trace: it leaves through the aux
    # output, and every evaluation of ``total`` starts from the state of before the call.
    state = getattr(critic, "_gpreg_state", None)
    before = None if state is None else state.non_trainable_values

    def scores(*pts: Any) -> Any:
        try:
            raw = critic(*pts)
        except (ValueError, TypeError) as exc:
            raise v.critic_failed(where, [tuple(p.shape) for p in pts], exc) from exc
        except Exception as exc:
            if type(exc).__name__ != "TraceContextError":  # Flax's, without importing Flax
                raise
            raise RuntimeError(
                f"{where}: the critic updates its own state while the penalty differentiates "
                f"it ({exc}). A Flax NNX module cannot change its variables inside the "
                f"penalty's jax.grad: BatchNorm in training mode updates its statistics, "
                f"Dropout its random-number count. Evaluate the penalty in eval mode: "
                f"model.eval(), then the penalty, then model.train()."
            ) from exc
        if output is None and isinstance(raw, jax.Array):
            return raw
        return _call.pick_output(where, raw, output, lambda o: isinstance(o, jax.Array))

    def total(*pts: Any) -> Any:
        if state is not None:
            state.non_trainable_values = before
        out = scores(*pts)
        if not isinstance(out, jax.Array):
            raise v.bad_output_type(where, type(out).__name__, "JAX array")
        v.check_output_shape(where, tuple(out.shape), batch)
        summed = jnp.sum(out)
        after = None if state is None else state.non_trainable_values
        return (summed if scale is None else summed.astype(jnp.float32) * scale), (out, after)

    grads, (out, after) = jax.grad(total, argnums=tuple(range(len(points))),
                                   has_aux=True)(*points)
    values = [_concrete(g) for g in grads]
    try:
        # a nonzero gradient shows the dependence; only all-zero gradients, or gradients that
        # are not values yet (under jax.jit: once per trace), pay for the linearization
        known = all(c is not None for c in values) and any(bool(jnp.any(c)) for c in values)
        if not known and not _depends_on_inputs(lambda *pts: total(*pts)[0], points):
            raise v.independent_critic(where)
    finally:
        if state is not None:
            state.non_trainable_values = after
    if not create_graph:
        grads = tuple(jax.lax.stop_gradient(g) for g in grads)
    return tuple(grads), out
