"""Public PyTorch penalties. Each is a thin call into :func:`gpreg_torch._core.run` with its
core :class:`gpreg.PenaltySpec`; the docstrings are the specification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gpreg._docs import render
from gpreg._specs import BUILTIN_NAMES, Shape, bind, get_spec
from gpreg_torch import _core

Tensor = torch.Tensor
Critic = Callable[..., Tensor]
Points = Any  # a tensor, or a tuple/list of tensors for a multi-input critic
Output = int | str | Callable[[Any], Any] | None  # picks the scores out of a structured output

EXAMPLES: dict[str, str] = {
    "wgan_gp": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: 2 * x.sum(dim=1)          # input gradient (2, 2, 2, 2), norm 4
        >>> real, fake = torch.ones(3, 4), torch.zeros(3, 4)
        >>> gp.wgan_gp(critic, real, fake, alpha=torch.full((3,), 0.5))
        tensor(90.)""",
    "wgan_lp": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: 0.5 * x.sum(dim=1)        # norm 1 < target 2: no penalty
        >>> gp.wgan_lp(critic, torch.ones(2, 4), torch.zeros(2, 4), target=2.0)
        tensor(0.)""",
    "zero_gp": """        >>> import torch, gpreg_torch as gp
        >>> gp.zero_gp(lambda x: 2 * x.sum(dim=1), torch.ones(2, 4), torch.zeros(2, 4))
        tensor(160.)""",
    "max_gp": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: (x ** 2).sum(dim=1)         # gradient 2x: largest at x = 1
        >>> a = torch.tensor([1.0, 0.5])
        >>> float(gp.max_gp(critic, torch.ones(2, 1), torch.zeros(2, 1), alpha=a))
        40.0""",
    "r1": """        >>> import torch, gpreg_torch as gp
        >>> gp.r1(lambda x: 2 * x.sum(dim=1), torch.ones(2, 4))    # 10/2 * 16
        tensor(80.)""",
    "r2": """        >>> import torch, gpreg_torch as gp
        >>> gp.r2(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4), gamma=1.0)
        tensor(8.)""",
    "dragan": """        >>> import torch, gpreg_torch as gp
        >>> gp.dragan(lambda x: 2 * x.sum(dim=1), torch.randn(3, 4), alpha=torch.zeros(3))
        tensor(90.)
        >>> critic = lambda x: 2 * x.sum(dim=1)          # the norm is 4 everywhere
        >>> gp.dragan(critic, torch.randn(3, 4), shape="squared", perturbation="gaussian")
        tensor(160.)""",
    "wgan_div": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: x.sum(dim=1) / 2          # input gradient (1/2, ...), norm 1
        >>> real, fake = torch.ones(3, 4), torch.zeros(3, 4)
        >>> gp.wgan_div(critic, real, fake)                # k * 1 ** 6
        tensor(2.)
        >>> gp.wgan_div(lambda x: x.sum(dim=1), real, fake, points="real_fake", p=2.0)
        tensor(8.)""",
    "gradient_penalty": """        >>> import torch, gpreg_torch as gp
        >>> gp.gradient_penalty(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4), shape="squared")
        tensor(16.)
    """,
    "grad_norm": """        >>> import torch, gpreg_torch as gp
        >>> gp.grad_norm(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4))
        tensor([4., 4.])
    """,
}

_RNG = {
    "alpha": "        generator: ``torch.Generator`` for the draw of ``alpha``.\n",
    "draws": "        generator: ``torch.Generator`` for the draws.\n",
    "name": "``generator``",
    "name_plain": "generator",
    "scaler": "        scaler: a ``torch.amp.GradScaler`` for float16 mixed precision: the inner\n"
    "            gradient is taken of the scaled output (its current scale, read without a\n"
    "            device sync and capped at 2**15, below float16's maximum) and unscaled out\n"
    "            of place, and the norm is computed in float32. Then\n"
    "            ``scaler.scale(loss).backward()`` as usual. Also an object that holds the\n"
    "            scaler as ``.scaler``: an ``accelerate.Accelerator`` (then\n"
    "            ``accelerator.backward(loss)``) or a Lightning precision plugin\n"
    "            (``self.trainer.precision_plugin``, then ``self.manual_backward(loss)``);\n"
    "            under their bf16 or 32-bit precision there is no scaler, and none is used.\n",
}


def _documented(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Attach the shared specification (``gpreg._docs``) with this adapter's example."""

    def attach(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        fn.__doc__ = render(name, example=EXAMPLES[name], rng=_RNG, tensor="torch.Tensor")
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
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
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
        alpha=alpha, generator=generator,
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
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
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
        alpha=alpha, generator=generator,
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
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
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
        generator=generator,
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
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
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
        generator=generator,
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
    alpha: Tensor | float | None = None,
    noise: Points | None = None,
    generator: torch.Generator | None = None,
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
        alpha=alpha, noise=noise, generator=generator,
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
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
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
        points=points, alpha=alpha, generator=generator,
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
        critic, points, shape=shape, weight=weight, target=target, ratio=ratio,
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
    return _core.grad_norm(critic, points, create_graph=create_graph,
                           where="gpreg_torch.grad_norm", args=args, kwargs=kwargs,
                           output=output)


def from_scores(
    penalty: str,
    scores: Tensor,
    points: Points,
    *,
    weight: float | None = None,
    gamma: float | None = None,
    target: float | None = None,
    ratio: bool = False,
    reduction: str | None = None,
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""Forward reuse: R1 or R2 from the scores your adversarial loss already computed.

    :math:`s` is ``scores`` (the critic's output at ``points``), :math:`x` is ``points``:
    the penalty named ``penalty`` is applied to
    :math:`n_i = \lVert \nabla_{x_i} s_i \rVert_2`
    without a second forward pass, so one critic forward serves both the loss and R1:

    .. math::

        R_1 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B} n_i^2 .

    ``points`` must be the tensor(s) the scores were computed from, created as the critic's
    input with ``requires_grad_()`` set before the critic call (``x.detach().requires_grad_()``:
    detached from the generator). Same value and gradients as :func:`r1` (tested); what the
    saved forward buys is measured in the benchmarks. Your forward's graph is kept for your
    own backward, also with ``create_graph=False``; with a graph, the scores times zero join
    the value, so every parameter that produced them gets a gradient (DDP needs one).

    Args:
        penalty: ``"r1"``, ``"r2"`` or a plugin evaluated at ``"real"``/``"fake"``.
        scores: critic output at ``points``, batch first.
        points: the input tensor(s), ``requires_grad=True``.
        weight: the penalty's weight (default: the penalty's default).
        gamma: the same as ``weight``, under R1's and R2's name for it (as in :func:`r1`);
            give one of the two.
        target, ratio, reduction, create_graph, scaler, global_batch_size: as in
            :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: a penalty evaluated elsewhere (interpolates, DRAGAN), points without
            ``requires_grad`` or computed by other operations (``fake = G(z)``: the penalty
            would reach the generator), or scores not led by the batch.
        RuntimeError: scores without a graph (computed under ``torch.no_grad()``).
        TypeError: a ``scaler`` that is not a ``GradScaler``.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> critic = torch.nn.Linear(4, 1)
        >>> real = torch.randn(8, 4).requires_grad_()
        >>> scores = critic(real)
        >>> loss = torch.nn.functional.softplus(-scores).mean() + gp.from_scores("r1", scores, real)
        >>> loss.backward()

    Note:
        PyTorch only: TensorFlow and JAX cannot differentiate scores after the fact without
        the tape or function that produced them.
    """
    if gamma is not None:
        if weight is not None:
            raise ValueError(
                f"gpreg_torch.from_scores({penalty!r}): got weight={weight!r} and "
                f"gamma={gamma!r}, two names for one number; pass one of them."
            )
        weight = gamma
    return _core.from_scores(
        penalty, scores, points, weight=weight, target=target, ratio=ratio,
        reduction=reduction, create_graph=create_graph, scaler=scaler,
        global_batch_size=global_batch_size, check_finite=check_finite,
    )


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
        >>> import gpreg_torch as gp
        >>> gp.get_penalty("r1") is gp.r1
        True
    """
    if name in _PUBLIC:
        return _PUBLIC[name]
    return bind(get_spec(name), _core.run, "gpreg_torch")

