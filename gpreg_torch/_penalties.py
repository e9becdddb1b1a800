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
        tensor(90.)""",
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
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "wgan_gp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, generator=generator, reduction=reduction, create_graph=create_graph,
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
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "wgan_lp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, generator=generator, reduction=reduction, create_graph=create_graph,
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
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "zero_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        generator=generator, reduction=reduction, create_graph=create_graph,
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
    reduction: str = "max",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "max_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        generator=generator, reduction=reduction, create_graph=create_graph,
    )


@_documented("r1")
def r1(
    critic: Critic,
    real: Points,
    *,
    gamma: float = 10.0,
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "r1", critic, real=real, weight=gamma, reduction=reduction, create_graph=create_graph
    )


@_documented("r2")
def r2(
    critic: Critic,
    fake: Points,
    *,
    gamma: float = 10.0,
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "r2", critic, fake=fake, weight=gamma, reduction=reduction, create_graph=create_graph
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
    alpha: Tensor | float | None = None,
    noise: Points | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.run(
        "dragan", critic, real=real, weight=weight, target=target, ratio=ratio, c=c,
        alpha=alpha, noise=noise, generator=generator, reduction=reduction,
        create_graph=create_graph,
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
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    return _core.generic(
        critic, points, shape=shape, weight=weight, target=target, ratio=ratio,
        reduction=reduction, create_graph=create_graph,
    )


@_documented("grad_norm")
def grad_norm(critic: Critic, points: Points, *, create_graph: bool = False) -> Tensor:
    return _core.grad_norm(critic, points, create_graph=create_graph,
                           where="gpreg_torch.grad_norm")


_PUBLIC: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (wgan_gp, wgan_lp, zero_gp, r1, r2, dragan, max_gp)
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

