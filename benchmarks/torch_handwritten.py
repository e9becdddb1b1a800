"""Hand-written PyTorch penalties, written from the published formulas (the baselines).

Each takes explicit randomness (``alpha`` of shape (B,)) so that it can be checked against
gpreg on identical inputs before it is timed. The interpolation convention is gpreg's,
x̂ = α·real + (1 − α)·fake; the formulas are

- WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028): 10 · mean_i (‖∇ₓD(x̂_i)‖₂ − 1)²;
- R1 (Mescheder et al. 2018, arXiv:1801.04406): γ/2 · mean_i ‖∇ₓD(x_i)‖₂², γ = 10.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Critic = Callable[[torch.Tensor], torch.Tensor]


def _interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    return (a * real + (1 - a) * fake).detach().requires_grad_(True)


def canonical_wgan_gp(critic: Critic, real: torch.Tensor, fake: torch.Tensor,
                      alpha: torch.Tensor) -> torch.Tensor:
    """The per-sample snippet most PyTorch WGAN-GP code uses: ``grad.view(B, -1).norm(2, 1)``."""
    x = _interpolate(real, fake, alpha)
    out = critic(x)
    (grad,) = torch.autograd.grad(outputs=out, inputs=x, grad_outputs=torch.ones_like(out),
                                  create_graph=True, retain_graph=True)
    norms = grad.view(grad.size(0), -1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean() * 10


def studiogan_style_wgan_gp(critic: Critic, real: torch.Tensor, fake: torch.Tensor,
                            alpha: torch.Tensor) -> torch.Tensor:
    """Same math, the norm as the square root of a sum of squares (StudioGAN's formulation)."""
    x = _interpolate(real, fake, alpha)
    out = critic(x)
    (grad,) = torch.autograd.grad(outputs=out.sum(), inputs=x, create_graph=True)
    grad = grad.reshape(grad.size(0), -1)
    norms = torch.sqrt(torch.sum(grad**2, dim=1))
    return torch.mean((norms - 1) ** 2) * 10


def stylegan2_style_r1(critic: Critic, real: torch.Tensor, gamma: float = 10.0) -> torch.Tensor:
    """R1 as StyleGAN2-style code writes it: the squared norm straight from the sum of squares."""
    x = real.detach().requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(outputs=out.sum(), inputs=x, create_graph=True)
    return grad.square().sum(dim=list(range(1, grad.dim()))).mean() * (gamma / 2)


def nonsaturating_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic's logistic (non-saturating GAN) loss: softplus(D(fake)) + softplus(−D(real))."""
    return F.softplus(fake_scores).mean() + F.softplus(-real_scores).mean()


def r1_step_loss_reuse(critic: Critic, real: torch.Tensor, fake: torch.Tensor,
                       gamma: float = 10.0) -> torch.Tensor:
    """Critic loss + R1 from a single ``D(real)`` call (forward reuse, by hand).

    ``real`` is made a leaf that requires grad *before* the critic call, so the scores the
    adversarial loss uses also give ∇ₓD(real) (``create_graph=True``).
    """
    x = real.detach().requires_grad_(True)
    real_scores = critic(x)
    fake_scores = critic(fake.detach())
    (grad,) = torch.autograd.grad(real_scores.sum(), x, create_graph=True)
    r1 = grad.square().sum(dim=list(range(1, grad.dim()))).mean() * (gamma / 2)
    return nonsaturating_loss(real_scores, fake_scores) + r1


def _safe_norm(sq_sum: torch.Tensor) -> torch.Tensor:
    """The exact NaN-safe norm in gpreg's backend-generic form (``gpreg._math.safe_norm``):
    where(s > 0, sqrt(where(s > 0, s, 1)), 0) — six small ops instead of one norm kernel."""
    positive = sq_sum > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq_sum, 1.0)), 0.0)


def safe_norm_wgan_gp(critic: Critic, real: torch.Tensor, fake: torch.Tensor,
                      alpha: torch.Tensor) -> torch.Tensor:
    """The canonical snippet with its norm replaced by the generic six-op NaN-safe form.

    Not a baseline: it isolates what that formulation costs, apart from gpreg's Python layer
    (gpreg_torch used it until it switched to ``torch.linalg.vector_norm``).
    """
    x = _interpolate(real, fake, alpha)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    norms = _safe_norm(grad.reshape(grad.size(0), -1).square().sum(dim=1))
    return ((norms - 1) ** 2).mean() * 10


def safe_norm_r1(critic: Critic, real: torch.Tensor, gamma: float = 10.0) -> torch.Tensor:
    """R1 as the square of the six-op NaN-safe norm, written by hand (see above)."""
    x = real.detach().requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    norms = _safe_norm(grad.reshape(grad.size(0), -1).square().sum(dim=1))
    return (norms * norms).mean() * (gamma / 2)


def r1_step_loss_from_scores(critic: Critic, real: torch.Tensor,
                             fake: torch.Tensor) -> torch.Tensor:
    """Critic loss + R1 from a single ``D(real)`` call through ``gp.from_scores`` (gpreg's
    forward-reuse API, where the installed gpreg has it)."""
    import gpreg_torch as gp

    x = real.detach().requires_grad_(True)
    real_scores = critic(x)
    fake_scores = critic(fake.detach())
    return nonsaturating_loss(real_scores, fake_scores) + gp.from_scores("r1", real_scores, x)
