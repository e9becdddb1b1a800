"""Public Keras 3 penalties, the same surface as ``gpreg_torch`` (``seed=`` in place of
``generator=``). Each is a thin call into :func:`gpreg_keras._core.run`; the docstrings are the
specification, shared with ``gpreg_torch`` through ``gpreg._docs``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpreg._docs import render
from gpreg._specs import BUILTIN_NAMES, Shape, bind, get_spec
from gpreg_keras import _core

Tensor = Any  # a tensor of the active Keras backend
Critic = Callable[..., Tensor]
Points = Any  # a tensor, or a tuple/list of tensors for a multi-input critic
Output = int | str | Callable[[Any], Any] | None  # picks the scores out of a structured output

EXAMPLES: dict[str, str] = {
    "wgan_gp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)   # input gradient 2s, norm 4
        >>> real, fake = keras.ops.ones((3, 4)), keras.ops.zeros((3, 4))
        >>> float(gp.wgan_gp(critic, real, fake, alpha=keras.ops.full((3,), 0.5)))
        90.0""",
    "wgan_lp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 0.5 * keras.ops.sum(x, axis=1)  # norm 1 < target 2: no penalty
        >>> float(gp.wgan_lp(critic, keras.ops.ones((2, 4)), keras.ops.zeros((2, 4)), target=2.0,
        ...                  seed=0))
        0.0""",
    "zero_gp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.zero_gp(critic, keras.ops.ones((2, 4)), keras.ops.zeros((2, 4)), seed=0))
        160.0""",
    "max_gp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: keras.ops.sum(x ** 2, axis=1)   # gradient 2x: largest at x = 1
        >>> a = keras.ops.convert_to_tensor([1.0, 0.5])
        >>> float(gp.max_gp(critic, keras.ops.ones((2, 1)), keras.ops.zeros((2, 1)), alpha=a))
        40.0""",
    "r1": """        >>> import keras, gpreg_keras as gp
        >>> float(gp.r1(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.ones((2, 4))))
        80.0""",
    "r2": """        >>> import keras, gpreg_keras as gp
        >>> float(gp.r2(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.zeros((2, 4)),
        ...             gamma=1.0))
        8.0""",
    "dragan": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.dragan(critic, keras.random.normal((3, 4), seed=1), alpha=keras.ops.zeros(3),
        ...                 seed=0))
        90.0
        >>> float(gp.dragan(critic, keras.random.normal((3, 4), seed=1), shape="squared",
        ...                 perturbation="gaussian", seed=0))   # the norm is 4 everywhere
        160.0""",
    "wgan_div": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: keras.ops.sum(x, axis=1) / 2   # input gradient 1/2s, norm 1
        >>> real, fake = keras.ops.ones((3, 4)), keras.ops.zeros((3, 4))
        >>> float(gp.wgan_div(critic, real, fake, seed=0))   # k * 1 ** 6
        2.0
        >>> critic = lambda x: keras.ops.sum(x, axis=1)
        >>> float(gp.wgan_div(critic, real, fake, points="real_fake", p=2.0))
        8.0""",
    "gradient_penalty": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.gradient_penalty(critic, keras.ops.zeros((2, 4)), shape="squared"))
        16.0
    """,
    "grad_norm": """        >>> import keras, gpreg_keras as gp
        >>> norms = gp.grad_norm(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.zeros((2, 4)))
        >>> [float(n) for n in norms]
        [4.0, 4.0]
    """,
}

_SEED_RULE = (
    "            An int is a fixed draw, the same numbers on every call: for tests (inside\n"
    "            ``tf.function`` or ``jax.jit`` it warns once, ``gpreg.FixedSeedWarning``). In\n"
    "            training pass a ``SeedGenerator`` made once outside the step (TensorFlow,\n"
    "            torch) or a fresh JAX key per step (``jax.random.fold_in(key, step)``); under\n"
    "            ``jax.jit`` a ``SeedGenerator`` is refused unless Keras threads its state.\n"
)

_RNG = {
    "alpha": "        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draw of\n"
    "            ``alpha``; needed under ``jax.jit`` unless ``alpha`` is given.\n" + _SEED_RULE,
    "draws": "        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draws;\n"
    "            needed under ``jax.jit`` unless ``alpha`` and ``noise`` are given.\n"
    + _SEED_RULE,
    "name": "``seed``",
    "name_plain": "seed",
    "scaler": "        scaler: a ``keras.optimizers.LossScaleOptimizer`` for ``mixed_float16``:\n"
    "            the inner gradient is taken of the output times the current loss scale\n"
    "            and divided by it, and the norm is computed in float32. Under ``jax.jit``\n"
    "            call it inside ``keras.StatelessScope(state_mapping=list(zip(\n"
    "            optimizer.variables, optimizer_values)))`` so that the live scale is read\n"
    "            (outside a scope it would be frozen at trace time: a ``ValueError``).\n",
}


def _documented(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Attach the shared specification (``gpreg._docs``) with this adapter's example."""

    def attach(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        fn.__doc__ = render(name, example=EXAMPLES[name], rng=_RNG, tensor="tensor")
        return fn

    return attach


@_documented("wgan_gp")
def wgan_gp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    ratio: bool = False,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "wgan_gp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("wgan_lp")
def wgan_lp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    ratio: bool = False,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "wgan_lp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("zero_gp")
def zero_gp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "zero_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("max_gp")
def max_gp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "max",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "max_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("r1")
def r1(
    critic: Critic,
    real: Points,
    *,
    gamma: float = 10.0,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "r1", critic, real=real, weight=gamma,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("r2")
def r2(
    critic: Critic,
    fake: Points,
    *,
    gamma: float = 10.0,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "r2", critic, fake=fake, weight=gamma,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("dragan")
def dragan(
    critic: Critic,
    real: Points,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    c: float = 0.5,
    ratio: bool = False,
    shape: str | Shape = "two_sided",
    perturbation: str = "uniform",
    ddof: int = 0,
    alpha: Any = None,
    noise: Points | None = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "dragan", critic, real=real, weight=weight, target=target, ratio=ratio, c=c,
        shape=shape, perturbation=perturbation, ddof=ddof,
        alpha=alpha, noise=noise, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction,
        create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("wgan_div")
def wgan_div(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    k: float = 2.0,
    p: float = 6.0,
    points: str = "interpolates",
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.run(
        "wgan_div", critic, real=real, fake=fake, weight=k, shape_params={"p": p},
        points=points, alpha=alpha, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction,
        create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("gradient_penalty")
def gradient_penalty(
    critic: Critic,
    points: Points,
    *,
    shape: str | Shape = "two_sided",
    weight: float = 1.0,
    target: float = 1.0,
    ratio: bool = False,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    return _core.generic(
        "gpreg_keras.gradient_penalty", critic, points, shape=shape, weight=weight,
        target=target, ratio=ratio,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


@_documented("grad_norm")
def grad_norm(
    critic: Critic,
    points: Points,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    create_graph: bool = True,
) -> Tensor:
    return _core.grad_norm("gpreg_keras.grad_norm", critic, points, create_graph, args=args,
                           kwargs=kwargs, output=output)


_PUBLIC: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (wgan_gp, wgan_lp, zero_gp, r1, r2, dragan, max_gp, wgan_div)
}
assert set(_PUBLIC) == set(BUILTIN_NAMES)


def get_penalty(name: str) -> Callable[..., Tensor]:
    """The penalty function registered under ``name`` (for config-driven training code).

    Built-ins return the functions of this module; plugin penalties (entry-point group
    ``gpreg.penalties``) get a function with the same calling convention.

    Args:
        name: e.g. ``"wgan_gp"``, ``"r1"``, or a plugin's name.

    Returns:
        The penalty function.

    Raises:
        gpreg.UnknownPenaltyError: (a ``KeyError``) unknown name; the message lists the
            known names.

    Example:
        >>> import gpreg_keras as gp
        >>> gp.get_penalty("r1") is gp.r1
        True
    """
    if name in _PUBLIC:
        return _PUBLIC[name]
    return bind(get_spec(name), _core.run, "gpreg_keras")

