"""Public PyTorch penalties. Each is a thin call into :func:`gpreg_torch._core.run` with its
core :class:`gpreg.PenaltySpec`; the docstrings are the specification."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from gpreg._specs import BUILTIN_NAMES, PenaltySpec, Shape, get_spec
from gpreg_torch import _core

Tensor = torch.Tensor
Critic = Callable[..., Tensor]
Points = Any  # a tensor, or a tuple/list of tensors for a multi-input critic

_COMMON = """The critic is called with the evaluation points (one tensor, or the parts of a tuple as
    separate positional arguments); its output keeps the batch as leading dimension and is
    summed per sample. :math:`n_i` is the Euclidean norm of the gradient of sample ``i``'s
    summed output with respect to all of sample ``i``'s input elements. The points are
    detached: no gradient reaches ``real`` or ``fake`` (nor the generator behind them)."""


def _documented(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Fill the shared paragraph into a public function's docstring."""
    fn.__doc__ = (fn.__doc__ or "").replace("<<common>>", "\n    " + _COMMON)
    return fn


@_documented
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
    r"""WGAN-GP: two-sided gradient penalty at random interpolates of real and fake.

    :math:`\lambda` is ``weight``, :math:`t` is ``target``, :math:`x` is ``real``,
    :math:`\tilde x` is ``fake``, :math:`\alpha` is ``alpha`` and :math:`D` is ``critic``:

    .. math::

        \hat x_i = \alpha_i x_i + (1 - \alpha_i)\,\tilde x_i, \qquad
        n_i = \lVert \nabla_{\hat x_i} D(\hat x_i) \rVert_2, \qquad
        \mathrm{GP} = \frac{\lambda}{B} \sum_{i=1}^{B} (n_i - t)^2 .

    With ``ratio=True`` the per-sample term is :math:`(n_i / t - 1)^2` (TF-GAN's and
    ProGAN's form, equal to :math:`(n_i - t)^2 / t^2`).
    <<common>>

    Args:
        critic: callable mapping the points to scores of shape ``(B,)`` or ``(B, ...)``.
        real: real batch (a tensor, or a tuple of tensors for a multi-input critic).
        fake: generated batch, same shape(s) as ``real``.
        weight: :math:`\lambda`, non-negative (default 10, as in the paper).
        target: :math:`t`, the gradient norm the penalty pulls towards (default 1).
        ratio: use the ratio form :math:`(n/t - 1)^2`.
        alpha: interpolation weights, shape ``(B,)`` (or ``(B, 1, ..., 1)``), or a number
            for all samples; ``None`` draws :math:`\alpha_i \sim U[0, 1)` per sample.
        generator: ``torch.Generator`` for the draw of ``alpha``.
        reduction: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"none"`` (the scaled
            per-sample vector of shape ``(B,)``).
        create_graph: keep the graph of the input gradient so the penalty is differentiable
            with respect to the critic's parameters (double backprop). ``False`` is for
            evaluation only.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``), float32 or wider.

    Raises:
        ValueError: shapes of ``real`` and ``fake`` differ, ``alpha`` has the wrong shape,
            the batch is empty, the critic's output does not lead with the batch, unknown
            ``reduction``, negative or non-finite ``weight``/``target``.
        TypeError: integer/bool points, or a critic returning something other than a tensor.
        RuntimeError: the critic's output does not depend on its input.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: 2 * x.sum(dim=1)          # input gradient (2, 2, 2, 2), norm 4
        >>> real, fake = torch.ones(3, 4), torch.zeros(3, 4)
        >>> gp.wgan_gp(critic, real, fake, alpha=torch.full((3,), 0.5))
        tensor(90.)

    .. warning::
        The paper evaluates the penalty without BatchNorm in the critic (it couples samples,
        making per-sample gradients wrong); use LayerNorm or none.

    References:
        Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville. Improved Training of Wasserstein
        GANs. NeurIPS 2017. arXiv:1704.00028.
    """
    return _core.run(
        "wgan_gp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, generator=generator, reduction=reduction, create_graph=create_graph,
    )


@_documented
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
    r"""WGAN-LP: one-sided Lipschitz penalty at random interpolates.

    Symbols as in :func:`wgan_gp`; only norms above the target are penalized:

    .. math::

        \mathrm{LP} = \frac{\lambda}{B} \sum_{i=1}^{B} \max(0,\, n_i - t)^2 .

    With ``ratio=True`` the term is :math:`\max(0, n_i / t - 1)^2`.
    <<common>>

    Args:
        critic, real, fake, weight, target, ratio, alpha, generator, reduction, create_graph:
            as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: 0.5 * x.sum(dim=1)        # norm 1 < target 2: no penalty
        >>> gp.wgan_lp(critic, torch.ones(2, 4), torch.zeros(2, 4), target=2.0)
        tensor(0.)

    References:
        Petzka, Fischer, Lukovnikov. On the Regularization of Wasserstein GANs. ICLR 2018.
        arXiv:1709.08894.
    """
    return _core.run(
        "wgan_lp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, generator=generator, reduction=reduction, create_graph=create_graph,
    )


@_documented
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
    r"""0-GP: zero-centred gradient penalty at random interpolates.

    Symbols as in :func:`wgan_gp`:

    .. math::

        \mathrm{0GP} = \frac{\lambda}{B} \sum_{i=1}^{B} n_i^2 .
    <<common>>

    Args:
        critic, real, fake, weight, alpha, generator, reduction, create_graph: as in
            :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> gp.zero_gp(lambda x: 2 * x.sum(dim=1), torch.ones(2, 4), torch.zeros(2, 4))
        tensor(160.)

    References:
        Thanh-Tung, Tran, Venkatesh. Improving Generalization and Stability of Generative
        Adversarial Networks. ICLR 2019. arXiv:1902.03984.
    """
    return _core.run(
        "zero_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        generator=generator, reduction=reduction, create_graph=create_graph,
    )


@_documented
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
    r"""Max-GP (LGAN): the largest squared gradient norm over the interpolates of the batch.

    Symbols as in :func:`wgan_gp`:

    .. math::

        \mathrm{MaxGP} = \lambda \max_{i} n_i^2 .

    ``reduction`` defaults to ``"max"``; ``"none"`` gives the per-sample
    :math:`\lambda n_i^2` and ``"mean"`` makes it :func:`zero_gp`.
    <<common>>

    Args:
        critic, real, fake, weight, alpha, generator, create_graph: as in :func:`wgan_gp`.
        reduction: ``"max"`` (default), ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: (x ** 2).sum(dim=1)         # gradient 2x: largest at x = 1
        >>> a = torch.tensor([1.0, 0.5])
        >>> float(gp.max_gp(critic, torch.ones(2, 1), torch.zeros(2, 1), alpha=a))
        40.0

    References:
        Zhou, Liang, Song, Yu, Zhang, Zha. Lipschitz Generative Adversarial Nets. ICML 2019.
        arXiv:1902.05687.
    """
    return _core.run(
        "max_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        generator=generator, reduction=reduction, create_graph=create_graph,
    )


@_documented
def r1(
    critic: Critic,
    real: Points,
    *,
    gamma: float = 10.0,
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    r"""R1: zero-centred gradient penalty on real data.

    :math:`\gamma` is ``gamma``, :math:`x` is ``real``, :math:`D` is ``critic``:

    .. math::

        R_1 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B}
              \lVert \nabla_{x_i} D(x_i) \rVert_2^2 .
    <<common>>

    Args:
        critic: as in :func:`wgan_gp`.
        real: real batch (tensor or tuple of tensors).
        gamma: :math:`\gamma`, non-negative (default 10; StyleGAN presets range from 0.01 to
            10 and grow with resolution squared).
        reduction, create_graph: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> gp.r1(lambda x: 2 * x.sum(dim=1), torch.ones(2, 4))    # 10/2 * 16
        tensor(80.)

    References:
        Mescheder, Geiger, Nowozin. Which Training Methods for GANs do actually Converge?
        ICML 2018. arXiv:1801.04406.
    """
    return _core.run(
        "r1", critic, real=real, weight=gamma, reduction=reduction, create_graph=create_graph
    )


@_documented
def r2(
    critic: Critic,
    fake: Points,
    *,
    gamma: float = 10.0,
    reduction: str = "mean",
    create_graph: bool = True,
) -> Tensor:
    r"""R2: zero-centred gradient penalty on generated data.

    :math:`\tilde x` is ``fake``, other symbols as in :func:`r1`:

    .. math::

        R_2 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B}
              \lVert \nabla_{\tilde x_i} D(\tilde x_i) \rVert_2^2 .

    R3GAN (NeurIPS 2024) uses R1 and R2 together.
    <<common>>

    Args:
        critic: as in :func:`wgan_gp`.
        fake: generated batch (tensor or tuple of tensors).
        gamma, reduction, create_graph: as in :func:`r1`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> gp.r2(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4), gamma=1.0)
        tensor(8.)

    References:
        Mescheder, Geiger, Nowozin. Which Training Methods for GANs do actually Converge?
        ICML 2018. arXiv:1801.04406.
    """
    return _core.run(
        "r2", critic, fake=fake, weight=gamma, reduction=reduction, create_graph=create_graph
    )


@_documented
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
    r"""DRAGAN: two-sided gradient penalty around perturbed real data.

    :math:`x` is ``real``, :math:`u` is ``noise``, :math:`\alpha` is ``alpha``, :math:`c` is
    ``c``, :math:`\lambda` is ``weight``, :math:`t` is ``target``; :math:`\sigma` is the
    population standard deviation of all elements of the real batch (a constant):

    .. math::

        \hat x_i = x_i + \alpha_i \, c \, \sigma \, u_i, \qquad
        \mathrm{DRAGAN} = \frac{\lambda}{B} \sum_{i=1}^{B} (n_i - t)^2 .
    <<common>>

    Args:
        critic: as in :func:`wgan_gp`.
        real: real batch (tensor or tuple of tensors; :math:`\sigma` is taken per part).
        weight, target, ratio, reduction, create_graph: as in :func:`wgan_gp`.
        c: perturbation scale relative to :math:`\sigma` (default 0.5).
        alpha: per-sample scale of the perturbation, shape ``(B,)``; ``None`` draws
            :math:`U[0, 1)`.
        noise: :math:`u`, shaped like ``real``; ``None`` draws :math:`U[0, 1)` elementwise
            (after ``alpha``, from the same ``generator``).
        generator: ``torch.Generator`` for the draws.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: as in :func:`wgan_gp`, or ``noise`` not shaped like ``real``.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> gp.dragan(lambda x: 2 * x.sum(dim=1), torch.randn(3, 4), alpha=torch.zeros(3))
        tensor(90.)

    .. warning::
        The paper perturbs with :math:`\delta \sim N(0, cI)`; this follows the authors'
        reference code (uniform noise scaled by :math:`0.5\,\sigma`, then a random fraction
        :math:`\alpha` of it), which is what "c = 0.5" in public code refers to.

    References:
        Kodali, Abernethy, Hays, Kira. On Convergence and Stability of GANs. 2017.
        arXiv:1705.07215.
    """
    return _core.run(
        "dragan", critic, real=real, weight=weight, target=target, ratio=ratio, c=c,
        alpha=alpha, noise=noise, generator=generator, reduction=reduction,
        create_graph=create_graph,
    )


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
    r"""Any built-in penalty shape at points you choose (custom recipes, no private API).

    :math:`\hat x` is ``points``, :math:`\phi` is ``shape``, :math:`\lambda` is ``weight``:

    .. math::

        \frac{\lambda}{B} \sum_{i=1}^{B} \phi(n_i), \qquad
        \phi \in \{(n - t)^2,\ \max(0, n - t)^2,\ n^2\} .

    The points are used as given (detached); draw them however your recipe needs.

    Args:
        critic: as in :func:`wgan_gp`.
        points: where to evaluate (a tensor or a tuple of tensors).
        shape: ``"two_sided"``, ``"one_sided"``, ``"squared"`` or a :class:`gpreg.Shape`.
        weight: :math:`\lambda` (default 1).
        target, ratio, reduction, create_graph: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: unknown ``shape``, and as in :func:`wgan_gp`.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> gp.gradient_penalty(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4), shape="squared")
        tensor(16.)
    """
    where = "gpreg_torch.gradient_penalty"
    from gpreg import _validation as v

    w = v.check_scalar(where, "weight", weight)
    t = v.check_target(where, target, bool(ratio))
    red = v.check_reduction(where, reduction)
    shape_obj = _core._shape(where, shape)
    pts = _core._parts(where, "points", points)
    _core._check_devices(where, [("points", p) for p in pts])
    grads = _core.input_gradients(where, critic, pts, create_graph)
    norms = _core.norms_from_gradients(grads)
    return _core.apply_shape(
        where, norms, shape_obj, weight=w, target=t, ratio=bool(ratio), reduction=red
    )


def grad_norm(critic: Critic, points: Points, *, create_graph: bool = False) -> Tensor:
    r"""Per-sample input-gradient norms :math:`n_i = \lVert \nabla_{x_i} D(x_i) \rVert_2`.

    For logging and diagnostics (e.g. the mean norm at interpolates). Exact, with a finite
    gradient where the input gradient is zero.

    Args:
        critic: as in :func:`wgan_gp`.
        points: a tensor or a tuple of tensors.
        create_graph: keep the graph (to differentiate the norms themselves).

    Returns:
        Tensor of shape ``(B,)``, float32 or wider.

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> gp.grad_norm(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4))
        tensor([4., 4.])
    """
    where = "gpreg_torch.grad_norm"
    pts = _core._parts(where, "points", points)
    _core._check_devices(where, [("points", p) for p in pts])
    return _core.norms_from_gradients(_core.input_gradients(where, critic, pts, create_graph))


_PUBLIC: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (wgan_gp, wgan_lp, zero_gp, r1, r2, dragan, max_gp)
}
assert set(_PUBLIC) == set(BUILTIN_NAMES)


def _bind(spec: PenaltySpec) -> Callable[..., Tensor]:
    """A public-style function for a plugin spec, with the signature its points imply."""
    wn = spec.weight_name

    def penalty(critic: Critic, *data: Points, **kwargs: Any) -> Tensor:
        roles = {"interpolates": ("real", "fake"), "real": ("real",), "fake": ("fake",),
                 "perturbed_real": ("real",)}[spec.points]
        if len(data) != len(roles):
            raise TypeError(
                f"gpreg_torch.{spec.name} takes critic, {', '.join(roles)}; got "
                f"{len(data)} data argument(s)"
            )
        if wn != "weight" and wn in kwargs:
            kwargs["weight"] = kwargs.pop(wn)
        return _core.run(spec, critic, **dict(zip(roles, data)), **kwargs)

    penalty.__name__ = penalty.__qualname__ = spec.name
    penalty.__doc__ = f"{spec.title or spec.name} (plugin penalty). {spec.paper} arXiv:{spec.arxiv}"
    return penalty


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
    return _bind(get_spec(name))


assert all(
    "critic" in inspect.signature(f).parameters for f in _PUBLIC.values()
)
