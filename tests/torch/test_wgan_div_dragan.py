"""WGAN-div and DRAGAN's variants in PyTorch beyond the fixtures: exact and NaN-free at a zero
input gradient for every allowed p (where the public s ** (p / 2) form is NaN), the real+fake
points, the paper's Gaussian DRAGAN, ddof, any shape at DRAGAN's points, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gpreg
import gpreg_torch as gp
from gpreg._tolerances import assert_close

F64 = torch.float64


def dead_relu_critic():
    """Every sample of U[0, 1)^3 sits where each ReLU is off: the input gradient is exactly 0,
    but the gradient's parameter derivative is not (the first layer's bias)."""
    critic = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        critic[0].weight.copy_(torch.ones(4, 3))
        critic[0].bias.fill_(-100.0)
    return critic


@pytest.mark.parametrize("points", ["interpolates", "real_fake"])
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 6.0])
def test_wgan_div_is_exact_and_finite_at_a_zero_gradient(p, points):
    critic = dead_relu_critic()
    real, fake = torch.rand(4, 3, dtype=F64), torch.rand(4, 3, dtype=F64)
    value = gp.wgan_div(critic, real, fake, p=p, points=points)
    assert value.item() == 0.0
    grads = torch.autograd.grad(value, list(critic.parameters()), allow_unused=True)
    for g in grads:
        assert g is None or torch.all(g == 0), g


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_the_public_sum_of_squares_form_is_nan_there(p):
    """PyTorch-GAN's ``g.pow(2).sum(1) ** (p / 2)``: for p < 2 its derivative at 0 is inf * 0."""
    g = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    naive = (g.pow(2).sum(1) ** (p / 2)).mean()
    (naive_grad,) = torch.autograd.grad(naive, g)
    assert torch.isnan(naive_grad).all()
    safe = gp.gradient_penalty(lambda x: (x * g).sum(1), torch.ones(2, 3, dtype=F64),
                               shape=gpreg.SHAPES["power"].with_params(p=p))
    (safe_grad,) = torch.autograd.grad(safe, g)
    assert torch.all(safe_grad == 0)


def test_near_zero_the_power_is_the_closed_form():
    """D(x) = s * sum(x): the norm is |s| sqrt(F); the value k (|s| sqrt F)^p and its
    derivative in s, k p |s|^(p-1) F^(p/2) sign(s), for tiny s."""
    for p in (1.0, 1.5, 6.0):
        for s0 in (1e-3, 1e-8):
            s = torch.tensor(s0, dtype=F64, requires_grad=True)
            x = torch.rand(5, 4, dtype=F64)
            value = gp.wgan_div(lambda z, s=s: s * z.sum(1), x, x, k=3.0, p=p)
            (ds,) = torch.autograd.grad(value, s)
            assert_close(value.item(), 3.0 * (s0 * 2.0) ** p, "float64")
            assert_close(ds.item(), 3.0 * p * s0 ** (p - 1) * 2.0**p, "float64")


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1).double()
        self.calls = []

    def forward(self, x, scale=1.0):
        self.calls.append(x.detach().clone())
        return scale * (self.lin(x) ** 2)


def test_real_fake_evaluates_the_critic_at_both_batches_with_k_half_each():
    critic = Recorder()
    real, fake = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    per_sample = gp.wgan_div(critic, real, fake, points="real_fake", k=4.0, p=3.0,
                             kwargs={"scale": 0.5}, reduction="none")
    assert len(critic.calls) == 2
    torch.testing.assert_close(critic.calls[0], real, rtol=0, atol=0)
    torch.testing.assert_close(critic.calls[1], fake, rtol=0, atol=0)
    n_real = gp.grad_norm(critic, real, kwargs={"scale": 0.5}, create_graph=False)
    n_fake = gp.grad_norm(critic, fake, kwargs={"scale": 0.5}, create_graph=False)
    assert_close(per_sample.detach(), 2.0 * (n_real**3 + n_fake**3), "float64")
    assert_close(gp.wgan_div(critic, real, fake, points="real_fake", k=4.0, p=3.0,
                             kwargs={"scale": 0.5}).item(),
                 2.0 * (n_real**3).mean().item() + 2.0 * (n_fake**3).mean().item(), "float64")


def test_wgan_div_defaults_and_interpolates():
    critic = Recorder()
    real, fake = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    a = torch.rand(4, dtype=F64)
    value = gp.wgan_div(critic, real, fake, alpha=a)
    x = a[:, None] * real + (1 - a[:, None]) * fake
    torch.testing.assert_close(critic.calls[0], x, rtol=0, atol=0)
    assert_close(value.item(), 2.0 * (gp.grad_norm(critic, x) ** 6).mean().item(), "float64")
    assert_close(value.item(), gp.gradient_penalty(
        critic, x, shape="power", weight=2.0).item(), "float64")


def test_dragan_gaussian_is_real_plus_sqrt_c_noise():
    critic = Recorder()
    real, z = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    gp.dragan(critic, real, perturbation="gaussian", c=0.25, noise=z)
    torch.testing.assert_close(critic.calls[0], real + 0.5 * z, rtol=1e-15, atol=0)


def test_dragan_gaussian_draws_standard_normal_noise():
    shape = (20000, 3)
    real = torch.zeros(shape, dtype=F64)
    critic = Recorder()
    gp.dragan(critic, real, perturbation="gaussian", c=4.0,
              generator=torch.Generator().manual_seed(3))
    delta = critic.calls[0].numpy() / 2.0  # sqrt(c) = 2
    assert abs(delta.mean()) < 0.01 and abs(delta.std() - 1.0) < 0.01
    assert abs(np.mean(delta**4) - 3.0) < 0.1  # a normal's fourth moment, not a uniform's
    assert (delta < 0).mean() == pytest.approx(0.5, abs=0.01)  # zero-mean, not U[0, 1)


def test_dragan_ddof_one_is_torch_std():
    critic = Recorder()
    real = torch.randn(4, 3, dtype=F64)
    a, u = torch.rand(4, dtype=F64), torch.rand(4, 3, dtype=F64)
    gp.dragan(critic, real, ddof=1, alpha=a, noise=u, c=0.5)
    torch.testing.assert_close(critic.calls[0], real + a[:, None] * 0.5 * real.std() * u,
                               rtol=1e-15, atol=1e-15)
    gp.dragan(critic, real, alpha=a, noise=u, c=0.5)
    torch.testing.assert_close(critic.calls[1],
                               real + a[:, None] * 0.5 * real.std(correction=0) * u,
                               rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("shape", ["two_sided", "one_sided", "squared", "power"])
def test_dragan_shape_is_gradient_penalty_at_dragans_points(shape):
    critic = Recorder()
    real = torch.randn(5, 3, dtype=F64)
    a, u = torch.rand(5, dtype=F64), torch.rand(5, 3, dtype=F64)
    value = gp.dragan(critic, real, shape=shape, target=0.3, alpha=a, noise=u)
    x = real + a[:, None] * 0.5 * real.std(correction=0) * u
    assert_close(value.item(), gp.gradient_penalty(critic, x, shape=shape, weight=10.0,
                                                   target=0.3).item(), "float64")


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda D, r, f: gp.wgan_div(D, r, f, p=0.5), ValueError, "p must be at least 1"),
        (lambda D, r, f: gp.wgan_div(D, r, f, p="6"), TypeError, "p must be a Python number"),
        (lambda D, r, f: gp.wgan_div(D, r, f, k=-1.0), ValueError, "k must be a finite"),
        (lambda D, r, f: gp.wgan_div(D, r, f, points="real"), ValueError,
         "unknown points 'real'; expected one of 'interpolates', 'real_fake'"),
        (lambda D, r, f: gp.wgan_div(D, r, f, points="real_fake", alpha=0.5), ValueError,
         "alpha is not used with points='real_fake'"),
        (lambda D, r, f: gp.wgan_div(D, r, f[:2], points="real_fake"), ValueError,
         "same shape"),
        (lambda D, r, f: gp.dragan(D, r, perturbation="normal"), ValueError,
         "unknown perturbation 'normal'"),
        (lambda D, r, f: gp.dragan(D, r, perturbation="gaussian", alpha=0.5), ValueError,
         "alpha is not used with perturbation='gaussian'"),
        (lambda D, r, f: gp.dragan(D, r, ddof=2), ValueError, "ddof must be 0"),
        (lambda D, r, f: gp.dragan(D, r[:1, :1], ddof=1), ValueError,
         "needs more than 1 element"),
        (lambda D, r, f: gp.dragan(D, r, shape="cubic"), ValueError, "unknown shape 'cubic'"),
        (lambda D, r, f: gp.dragan(D, r, shape="one_sided", target=-1.0), ValueError,
         "target must be a finite"),
    ],
)
def test_errors(call, exc, pattern):
    critic = nn.Linear(3, 1).double()
    real, fake = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    with pytest.raises(exc, match=pattern) as info:
        call(critic, real, fake)
    assert "gpreg_torch." in str(info.value)


def test_spec_and_registry():
    spec = gpreg.get_spec("wgan_div")
    assert spec.shape_params == {"p": 6.0} and spec.default_weight == 2.0
    assert gp.get_penalty("wgan_div") is gp.wgan_div
    assert math.isfinite(gp.get_penalty("wgan_div")(nn.Linear(3, 1), torch.randn(2, 3),
                                                    torch.randn(2, 3)).item())
