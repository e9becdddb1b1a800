"""JAX backend: the input gradient with ``jax.grad`` of a pure critic.

The critic must be a pure function of the points that closes over *traced* parameters —
typically ``model.stateless_call(trainable_values, non_trainable_values, x)`` — so that an
outer ``jax.grad`` with respect to those values sees the penalty. :func:`stateless_critic`
builds that closure from a Keras model.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.extend.core import Literal

from gpreg import _call, _math
from gpreg import _validation as v
from gpreg_keras import _ops as xp


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


# critic -> the signatures at which its output was shown to depend on the points (see
# input_gradients); weak keys: a critic that is gone takes its entries with it
_proven: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()
_PLAIN_LEAF = (type(None), bool, int, float, str)


def _signature(x: Any) -> Any:
    """The structure of ``x`` (nested tuples, lists and dicts) with each array by shape and
    dtype and each Python scalar by type and value; ``TypeError`` for anything else."""
    if isinstance(x, (jax.Array, jax.core.Tracer, np.ndarray)):
        return (tuple(x.shape), str(x.dtype))
    if type(x) in _PLAIN_LEAF:
        return (type(x), x)
    if type(x) in (tuple, list):
        return (type(x), tuple(map(_signature, x)))
    if type(x) is dict:
        return (dict, tuple((k, _signature(x[k])) for k in sorted(x)))
    raise TypeError(type(x).__name__)


def critic_identity(owner: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
    """What decides whether the critic's output depends on the points, apart from the
    points' own shapes and dtypes: the critic (the Keras model of a ``stateless_critic``,
    or the callable itself) and the signature of the extra arguments. ``None`` where those
    cannot be told (an argument of another kind)."""
    try:
        return owner, _signature((args, kwargs))
    except TypeError:
        return None


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
    try:
        # Whether the output depends on the points is a property of the critic and the
        # signatures of its inputs: once shown for a critic at a signature it is remembered,
        # and later calls read nothing. That matters without jax.jit, where dispatch is
        # asynchronous: reading a value waits for all the work queued before it (the
        # critic's forward and the input gradient), so the outer backward could not be
        # dispatched while that runs (4-6 % of an eager unit on an MLP critic).
        store = key = None
        identity = getattr(critic, "_gpreg_identity", None)
        if identity is not None and type(output) in _PLAIN_LEAF:
            try:
                store = _proven.setdefault(identity[0], set())
                key = (identity[1], output, tuple((tuple(p.shape), str(p.dtype))
                                                  for p in points))
            except TypeError:  # a critic without weak references or a hash
                store = None
        if store is None or key not in store:
            # a nonzero gradient shows the dependence; only all-zero gradients, or gradients
            # that are not values yet (under jax.jit: once per trace), pay for the
            # linearization
            values = [_concrete(g) for g in grads]
            known = all(c is not None for c in values) and any(
                bool(jnp.any(c)) for c in values)
            if not known and not _depends_on_inputs(lambda *pts: total(*pts)[0], points):
                raise v.independent_critic(where)
            if store is not None:
                if len(store) >= 64:
                    store.clear()
                store.add(key)
    finally:
        if state is not None:
            state.non_trainable_values = after
    if not create_graph:
        grads = tuple(jax.lax.stop_gradient(g) for g in grads)
    return tuple(grads), out


def _exact_norms(grads: tuple[Any, ...], lo: float, hi: float) -> Any:
    """Per sample: the square root of the sum of squares where that sum lies in [lo, hi]
    (where it is exact and nonzero), else the scaled, NaN-safe norm
    (:func:`gpreg._math.per_sample_norm`). The root's argument is 1 where the sample takes
    the scaled norm, so that neither branch has an infinite derivative there."""
    sq = _math.per_sample_sq_sum(grads, xp)
    inside = (sq >= lo) & (sq <= hi)
    plain = jnp.sqrt(jnp.where(inside, sq, jnp.ones_like(sq)))
    return jnp.where(inside, plain, _math.per_sample_norm(grads, xp))


_exact_norms_jit = jax.jit(_exact_norms, static_argnums=(1, 2))


def eager_norms(grads: Any, lo: float, hi: float) -> Any:
    """:func:`_exact_norms` as one jitted computation, for calls that run eagerly (no
    ``jax.jit`` around them; an eager outer ``jax.grad`` differentiates it as one op too).

    Dispatch is asynchronous there: deciding between the two norms on the host would read
    the sum of squares, which waits for all the work queued before it (the critic's forward
    and the input gradient), and the outer backward could not be dispatched while that runs
    (10-15 % of an eager WGAN-GP unit on an attention critic). Here the choice is made per
    sample inside the computation, and nothing is read. In range, the value is the plain
    norm's, as before."""
    return _exact_norms_jit(tuple(grads), lo, hi)
