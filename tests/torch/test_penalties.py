"""Closed forms, gradcheck/gradgradcheck, NaN safety and the training-time contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gpreg_torch as gp
from gpreg import BUILTIN_NAMES
from gpreg._tolerances import assert_close

INTERP = ("wgan_gp", "wgan_lp", "zero_gp", "max_gp", "wgan_div")  # real, fake and alpha


def call(name, critic, real, fake, **kw):
    """Call any built-in with the data arguments its points need."""
    fn = gp.get_penalty(name)
    if name in INTERP:
        return fn(critic, real, fake, **kw)
    if name == "r2":
        return fn(critic, fake, **kw)
    return fn(critic, real, **kw)


# --- TF-GAN's published unit case: D(x) = 2x on a 4-element input --------------------------

def two_x(x):
    return 2 * x  # output (B, 4): summed per sample, input gradient (2, 2, 2, 2), norm 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tfgan_unit_case(dtype):
    real = torch.ones(1, 4, dtype=dtype)
    fake = torch.zeros(1, 4, dtype=dtype)
    kw = {"alpha": torch.tensor([0.3], dtype=dtype)}
    assert gp.wgan_gp(two_x, real, fake, weight=1.0, **kw).item() == pytest.approx(9.0)
    assert gp.wgan_gp(two_x, real, fake, weight=1.0, target=2.0, ratio=True, **kw).item() == (
        pytest.approx(1.0)
    )
    assert gp.wgan_lp(two_x, real, fake, weight=1.0, **kw).item() == pytest.approx(9.0)
    assert gp.wgan_gp(two_x, real, fake, weight=2.3, **kw).item() == pytest.approx(2.3 * 9.0)


def test_ratio_form_equals_scaled_difference_form():
    real, fake = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    lin = nn.Linear(3, 1).double()
    a = torch.rand(5, dtype=torch.float64)
    ratio = gp.wgan_gp(lin, real, fake, target=3.0, ratio=True, alpha=a)
    diff = gp.wgan_gp(lin, real, fake, target=3.0, alpha=a)
    assert_close(ratio.item(), diff.item() / 9.0, "float64")


# --- gradcheck / gradgradcheck on a small float64 critic ------------------------------------

@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_gradcheck_parameters(name):
    torch.manual_seed(0)
    real = torch.randn(3, 4, dtype=torch.float64)
    fake = torch.randn(3, 4, dtype=torch.float64)
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    noise = torch.rand(3, 4, dtype=torch.float64)
    w1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)

    def penalty(w1, w2):
        def critic(x):
            return torch.tanh(x @ w1.T) @ w2.T

        kw = {"alpha": alpha} if name in INTERP else {}
        if name == "dragan":
            kw = {"alpha": alpha, "noise": noise}
        return call(name, critic, real, fake, **kw)

    assert torch.autograd.gradcheck(penalty, (w1, w2))
    assert torch.autograd.gradgradcheck(penalty, (w1, w2))


# --- NaN safety: exactly zero input gradients ---------------------------------------------

@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_zero_input_gradient_gives_finite_gradients(name):
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        critic[0].weight.copy_(torch.ones(4, 3))
        critic[0].bias.fill_(-100.0)  # every sample sits in the dead region: gradient exactly 0
    real = torch.rand(4, 3, dtype=torch.float64)
    fake = torch.rand(4, 3, dtype=torch.float64)
    value = call(name, critic, real, fake)
    assert math.isfinite(value.item())
    grads = torch.autograd.grad(value, list(critic.parameters()), allow_unused=True)
    for g in grads:
        assert g is None or torch.isfinite(g).all()


def test_naive_norm_is_nan_where_safe_norm_is_not():
    """The motivating bug: sqrt(sum(g**2)) has an infinite derivative at 0."""
    g = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    naive = ((g.pow(2).sum(1).sqrt() - 1) ** 2).mean()
    (naive_grad,) = torch.autograd.grad(naive, g)
    assert torch.isnan(naive_grad).all()
    safe = gp.gradient_penalty(lambda x: (x * g).sum(1), torch.ones(2, 3, dtype=torch.float64))
    (safe_grad,) = torch.autograd.grad(safe, g)
    assert torch.isfinite(safe_grad).all()


# --- training-time contract -----------------------------------------------------------------

def test_no_gradient_reaches_real_or_fake():
    gen = nn.Linear(2, 3).double()
    z = torch.randn(4, 2, dtype=torch.float64)
    fake = gen(z)
    real = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    for name in BUILTIN_NAMES:
        value = call(name, critic, real, fake)
        value.backward()
    assert real.grad is None
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None for p in critic[0].parameters())


def test_untouched_last_bias_gets_an_exact_zero_gradient():
    """As in StyleGAN2-ADA (``logits * 0``): a parameter of the forward that the penalty does
    not reach gets a zero gradient, not None, so that Adam steps it as theirs does."""
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    value = gp.r1(critic, torch.randn(4, 3, dtype=torch.float64))
    value.backward()
    assert critic[2].bias.grad is not None and torch.count_nonzero(critic[2].bias.grad) == 0
    assert critic[0].weight.grad is not None
    plain = nn.Linear(3, 1).double()  # behind a closure gpreg sees no module: None stays
    gp.r1(lambda x: plain(x), torch.randn(4, 3, dtype=torch.float64)).backward()
    assert plain.bias.grad is None


class _Offsets(nn.Module):
    """A linear score plus offsets that the input gradient does not depend on: of rank 0, 1
    (float32, in a float64 critic) and 2, holding NaN and Inf."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1, bias=False).double()
        self.b0 = nn.Parameter(torch.tensor(float("nan"), dtype=torch.float64))
        self.b1 = nn.Parameter(torch.tensor([float("inf")]))
        self.b2 = nn.Parameter(torch.tensor([[float("inf"), 1.0], [float("nan"), 2.0]],
                                            dtype=torch.float64))

    def forward(self, x):
        return self.lin(x)[:, 0] + self.b0 + self.b1.double() + self.b2.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "none"])
def test_unreached_parameters_of_every_rank_get_exact_zero_gradients(reduction):
    """Value gamma/2 |w|^2 per sample (closed form), untouched by the Inf and NaN the unreached
    offsets hold; a zero gradient of their shape for each, by backward and by autograd.grad
    (which would refuse a parameter the penalty does not use)."""
    torch.manual_seed(0)
    critic = _Offsets()
    x = torch.randn(4, 3, dtype=torch.float64)
    for _ in range(2):  # the general path, then the planned one
        value = gp.r1(critic, x, reduction=reduction)
        w = critic.lin.weight.detach()
        per_sample = 5.0 * float((w**2).sum())
        expected = [per_sample] * 4 if reduction == "none" else (
            4 * per_sample if reduction == "sum" else per_sample)
        assert_close(value.detach().numpy(), expected, "float64")
        grads = torch.autograd.grad(value.sum(), [critic.lin.weight, critic.b0, critic.b1,
                                                  critic.b2])
        assert_close(grads[0].numpy(), 10.0 * w.numpy() * (4 if reduction in ("sum", "none")
                                                             else 1), "float64")
        assert [g.shape for g in grads[1:]] == [(), (1,), (2, 2)]
        assert all(torch.count_nonzero(g) == 0 for g in grads[1:])
    critic.zero_grad(set_to_none=True)
    gp.r1(critic, x, reduction=reduction).sum().backward()
    assert critic.b0.grad == 0 and critic.b1.grad == 0
    assert torch.count_nonzero(critic.b2.grad) == 0


def test_create_graph_false_is_evaluation_only():
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(4, 3)
    with_graph = gp.r1(critic, x)
    without = gp.r1(critic, x, create_graph=False)
    assert with_graph.requires_grad and not without.requires_grad
    assert_close(without.item(), with_graph.item(), "float32")


def test_generator_reproduces_and_differs():
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    real, fake = torch.randn(6, 3), torch.randn(6, 3)
    for name in ("wgan_gp", "dragan"):
        a = call(name, critic, real, fake, generator=torch.Generator().manual_seed(1))
        b = call(name, critic, real, fake, generator=torch.Generator().manual_seed(1))
        c = call(name, critic, real, fake, generator=torch.Generator().manual_seed(2))
        assert a.item() == b.item()
        assert a.item() != c.item()


def test_generator_draw_order_is_alpha_then_noise():
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    real = torch.randn(6, 3)
    g = torch.Generator().manual_seed(7)
    alpha = torch.rand(6, generator=g)
    noise = torch.rand(6, 3, generator=g)
    drawn = gp.dragan(critic, real, generator=torch.Generator().manual_seed(7))
    explicit = gp.dragan(critic, real, alpha=alpha, noise=noise)
    assert drawn.item() == explicit.item()


@pytest.mark.parametrize("shape", [(4,), (4, 1), (4, 1, 1, 1)])
def test_alpha_shapes_accepted(shape):
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    alpha = torch.linspace(0, 1, 4)
    ref = gp.wgan_gp(critic, real, fake, alpha=alpha)
    assert_close(gp.wgan_gp(critic, real, fake, alpha=alpha.reshape(shape)).item(), ref.item(),
                 "float32")


def test_reductions_agree():
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    real, fake = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    a = torch.rand(6, dtype=torch.float64)
    per = gp.wgan_gp(critic, real, fake, alpha=a, reduction="none")
    assert per.shape == (6,)
    assert_close(gp.wgan_gp(critic, real, fake, alpha=a).item(), per.mean().item(), "float64")
    assert_close(gp.wgan_gp(critic, real, fake, alpha=a, reduction="sum").item(),
                 per.sum().item(), "float64")
    assert_close(gp.max_gp(critic, real, fake, alpha=a).item(),
                 gp.zero_gp(critic, real, fake, alpha=a, reduction="max").item(), "float64")


def test_bfloat16_points_accumulate_in_float32():
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(4, 3)
    ref = gp.r1(critic, x)
    low = gp.r1(critic.to(torch.bfloat16), x.to(torch.bfloat16))
    assert low.dtype == torch.float32
    assert_close(low.item(), ref.item(), "bfloat16")
    low.backward()
    assert critic[0].weight.grad is not None


def test_norm_spans_all_nonbatch_elements_of_nchw_input():
    """A norm over dim=1 only (channels) is a known bug; ours covers C, H and W."""
    w = torch.randn(1, 2, 3, 3)
    x = torch.randn(5, 2, 3, 3)
    norms = gp.grad_norm(lambda z: (z * w).sum(dim=(1, 2, 3)), x)
    assert_close(norms.numpy(), torch.full((5,), w.norm().item()).numpy(), "float32")


def test_multi_input_critic_uses_both_parts():
    w1, w2 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    def critic(a, b):
        return a @ w1.T + b @ w2.T
    real = (torch.randn(2, 2), torch.randn(2, 3))
    fake = (torch.randn(2, 2), torch.randn(2, 3))
    norms = gp.grad_norm(critic, real)
    assert_close(norms.numpy(), [5.0, 5.0], "float32")
    assert gp.wgan_gp(critic, real, fake, weight=1.0).item() == pytest.approx(16.0)
    assert gp.wgan_gp(critic, list(real), list(fake), weight=1.0).item() == pytest.approx(16.0)


def test_conditioning_through_closure():
    emb = nn.Embedding(3, 4)
    lin = nn.Linear(4, 1)
    labels = torch.tensor([0, 2, 1])
    value = gp.wgan_gp(lambda x: lin(x * emb(labels)), torch.randn(3, 4), torch.randn(3, 4))
    value.backward()
    assert emb.weight.grad is not None and lin.weight.grad is not None


def test_get_penalty_returns_public_functions():
    for name in BUILTIN_NAMES:
        assert gp.get_penalty(name) is getattr(gp, name)


def test_generic_entry_matches_named_penalties():
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert_close(gp.gradient_penalty(critic, x, shape="squared", weight=5.0).item(),
                 gp.r1(critic, x).item(), "float64")
    assert_close(gp.gradient_penalty(critic, x, weight=10.0).item(),
                 gp.wgan_gp(critic, x, x * 0, alpha=1.0).item(), "float64")
