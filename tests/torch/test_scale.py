"""Training at scale in PyTorch: mixed precision, forward reuse, lazy regularization,
global batch size, torch.compile'd and attention critics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gpreg_torch as gp
from gpreg import LazyRegularization
from gpreg._tolerances import assert_close


def mlp(seed=0, d=16, width=64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))


def rel(a, b):
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b) if y.norm() > 0)


def weight_grads(value, critic):
    """Gradients of ``value`` w.r.t. every parameter it reaches (zeros for the others)."""
    params = list(critic.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


# --- mixed precision ------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", ["wgan_gp", "r1", "dragan"])
def test_float16_autocast_with_scaler_matches_float32(penalty):
    critic = mlp()
    real, fake = torch.randn(32, 16), torch.randn(32, 16)
    kw = {"alpha": torch.rand(32)} if penalty != "r1" else {}
    if penalty == "dragan":
        kw["noise"] = torch.rand(32, 16)
    args = (real, fake) if penalty == "wgan_gp" else (real,)
    fn = gp.get_penalty(penalty)
    ref = fn(critic, *args, **kw)
    ref_grads = weight_grads(ref, critic)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=torch.float16):
        value = fn(critic, *args, **kw, scaler=scaler)
    assert value.dtype == torch.float32  # the norm and the penalty are float32
    grads = [g / scaler.get_scale() for g in weight_grads(scaler.scale(value), critic)]
    assert abs(value.item() / ref.item() - 1) < 1e-2
    assert rel(grads, ref_grads) < 1e-2


def test_unscaled_float16_is_wrong_for_a_small_critic_and_the_scaler_fixes_it():
    """A critic with small outputs (scores ~1e-6): its float16 input gradients underflow into
    subnormals without loss scaling; the penalty and its gradient are then off by ~30%."""
    base = mlp()

    def critic(x):
        return 1e-6 * base(x)

    real = torch.randn(32, 16)
    ref = gp.r1(critic, real, gamma=1e12)
    ref_grads = weight_grads(ref, base)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled = gp.r1(critic, real, gamma=1e12)
        scaled = gp.r1(critic, real, gamma=1e12, scaler=scaler)
    wrong = rel(weight_grads(unscaled, base), ref_grads)
    right = rel([g / scaler.get_scale() for g in weight_grads(scaler.scale(scaled), base)],
                ref_grads)
    assert wrong > 0.1 and right < 1e-2


def test_bfloat16_autocast_needs_no_scaler():
    critic = mlp()
    real, fake, alpha = torch.randn(32, 16), torch.randn(32, 16), torch.rand(32)
    ref = gp.wgan_gp(critic, real, fake, alpha=alpha)
    ref_grads = weight_grads(ref, critic)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = gp.wgan_gp(critic, real, fake, alpha=alpha)
    assert abs(value.item() / ref.item() - 1) < 1e-2
    assert rel(weight_grads(value, critic), ref_grads) < 3e-2


# --- forward reuse --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["r1", "r2"])
def test_from_scores_equals_the_standard_call_with_one_forward(name):
    critic = mlp().double()
    calls = []
    critic.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(8, 16, dtype=torch.float64)
    standard = gp.get_penalty(name)(critic, x, gamma=3.0)
    g_standard = weight_grads(standard, critic)
    calls.clear()
    pts = x.detach().requires_grad_()
    scores = critic(pts)
    reused = gp.from_scores(name, scores, pts, weight=3.0)
    assert len(calls) == 1
    assert_close(reused.item(), standard.item(), "float64")
    for a, b in zip(weight_grads(reused, critic), g_standard):
        assert_close(a.numpy(), b.numpy(), "float64")
    # gamma= is R1's and R2's own name for the weight
    by_gamma = gp.from_scores(name, critic(pts), pts, gamma=3.0)
    assert_close(by_gamma.item(), standard.item(), "float64")
    for a, b in zip(weight_grads(by_gamma, critic), g_standard):
        assert_close(a.numpy(), b.numpy(), "float64")


def test_from_scores_refuses_interpolates_and_unwatched_points():
    critic = mlp()
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="evaluated at interpolates"):
        gp.from_scores("wgan_gp", critic(x), x)
    with pytest.raises(ValueError, match="requires_grad=True set before the critic call"):
        gp.from_scores("r1", critic(x), x)
    pts = x.requires_grad_()
    with pytest.raises(ValueError, match="two names for one number; pass one of them"):
        gp.from_scores("r1", critic(pts), pts, weight=2.0, gamma=2.0)


# --- lazy regularization and global batch size ----------------------------------------------

def test_lazy_regularization_schedule_and_adam():
    lazy = LazyRegularization(16)
    assert [t for t in range(40) if lazy.active(t)] == [0, 16, 32]
    lr, (b1, b2) = lazy.adam(0.0025, (0.0, 0.99))
    assert lr == pytest.approx(0.0025 * 16 / 17) and b1 == 0.0
    assert b2 == pytest.approx(0.99 ** (16 / 17))
    with pytest.raises(ValueError, match="positive int"):
        LazyRegularization(0)


def test_lazy_r1_averages_to_the_every_step_penalty():
    """Over N steps on a fixed batch, N·R1 once equals R1 every step, summed."""
    critic = mlp().double()
    x = torch.randn(8, 16, dtype=torch.float64)
    lazy = LazyRegularization(4)
    lazy_sum = sum(lazy.gain * gp.r1(critic, x) for t in range(8) if lazy.active(t))
    every = sum(gp.r1(critic, x) for _ in range(8))
    assert_close(lazy_sum.item(), every.item(), "float64")


def test_global_batch_size_sums_to_the_global_mean():
    critic = mlp().double()
    real, fake = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    alpha = torch.rand(8, dtype=torch.float64)
    full = gp.wgan_gp(critic, real, fake, alpha=alpha)
    halves = sum(gp.wgan_gp(critic, real[s], fake[s], alpha=alpha[s], global_batch_size=8)
                 for s in (slice(0, 4), slice(4, 8)))
    assert_close(halves.item(), full.item(), "float64")
    with pytest.raises(ValueError, match="needs reduction='mean'"):
        gp.r1(critic, real, reduction="sum", global_batch_size=8)


# --- compiled and attention critics ---------------------------------------------------------

def test_compiled_critic_works_and_gives_eager_gradients():
    critic = mlp().double()
    compiled = torch.compile(critic, backend="aot_eager")
    real, fake = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    alpha, noise = torch.rand(8, dtype=torch.float64), torch.rand(8, 16, dtype=torch.float64)
    kwargs = {"wgan_gp": {"alpha": alpha}, "wgan_lp": {"alpha": alpha},
              "zero_gp": {"alpha": alpha}, "max_gp": {"alpha": alpha},
              "dragan": {"alpha": alpha, "noise": noise}, "r1": {}, "r2": {}}
    for name, kw in kwargs.items():
        args = (real, fake) if "alpha" in kw and name != "dragan" else (real,)
        loss_c = compiled(real).mean() + gp.get_penalty(name)(compiled, *args, **kw)
        loss_e = critic(real).mean() + gp.get_penalty(name)(critic, *args, **kw)
        for a, b in zip(weight_grads(loss_c, critic), weight_grads(loss_e, critic)):
            assert_close(a.numpy(), b.numpy(), "float64")


def test_compiled_module_itself_cannot_double_backward():
    """Why gpreg runs the penalty pass through _orig_mod."""
    compiled = torch.compile(mlp(), backend="aot_eager")
    x = torch.randn(4, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward|create_graph=False"):
        (g,) = torch.autograd.grad(compiled(x).sum(), x, create_graph=True)
        g.pow(2).sum().backward()


class AttentionCritic(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(4, 16)
        if kind == "sdpa":
            self.qkv = nn.Linear(16, 48)
        elif kind == "mha":
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        else:
            self.attn = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x):  # x: (B, tokens, 4)
        h = self.embed(x)
        if self.kind == "sdpa":
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            h = nn.functional.scaled_dot_product_attention(q, k, v)
        elif self.kind == "mha":
            h = self.attn(h, h, h, need_weights=False)[0]
        else:
            h = self.attn(h)
        return self.head(h).mean(dim=(1, 2))


def explicit_attention(q, k, v):
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


@pytest.mark.parametrize("kind", ["sdpa", "mha", "encoder"])
def test_attention_critics_work_on_cpu(kind):
    torch.manual_seed(0)
    critic = AttentionCritic(kind).eval()
    real, fake = torch.randn(4, 5, 4), torch.randn(4, 5, 4)
    value = gp.wgan_gp(critic, real, fake, alpha=torch.rand(4))
    value.backward()
    # biases right before a mean/normalization get no gradient; every weight does
    weights = [p for n, p in critic.named_parameters() if "weight" in n]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights)


def test_sdpa_critic_matches_an_explicit_softmax_reference(monkeypatch):
    torch.manual_seed(0)
    critic = AttentionCritic("sdpa").double()
    real = torch.randn(4, 5, 4, dtype=torch.float64)
    value = gp.r1(critic, real)
    grads = weight_grads(value, critic)
    monkeypatch.setattr(nn.functional, "scaled_dot_product_attention", explicit_attention)
    ref = gp.r1(critic, real)
    assert_close(value.item(), ref.item(), "float64")
    for a, b in zip(grads, weight_grads(ref, critic)):
        assert_close(a.numpy(), b.numpy(), "float64")


def test_fused_cpu_attention_has_no_double_backward():
    """Why gpreg runs the penalty forward under the math kernel: PyTorch's default CPU kernel
    for (B, heads, L, E) inputs has no derivative of its backward."""
    q = torch.randn(2, 2, 5, 8, requires_grad=True)
    out = nn.functional.scaled_dot_product_attention(q, q, q)
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="flash_attention_for_cpu_backward is not implemented"):
        g.pow(2).sum().backward()
    # the same critic through gpreg: fine
    value = gp.r1(lambda x: nn.functional.scaled_dot_product_attention(x, x, x).sum((1, 2, 3)),
                  q.detach())
    assert math.isfinite(value.item())


def test_default_grad_scaler_gives_a_finite_conv_critic_step_from_the_start():
    """GradScaler starts at 2**16, above float16's maximum: the penalty's inner backward is
    scaled by at most 2**15, so the first step of a float16 conv critic is already finite
    (it overflowed before). Whether the outer backward fits float16 at 2**16 is the
    scaler's business, as for any loss."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                           nn.Linear(16 * 8 * 8, 1))
    opt = torch.optim.SGD(critic.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu")
    real, fake = torch.randn(16, 3, 16, 16), torch.randn(16, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = critic(fake).mean() - critic(real).mean() + gp.wgan_gp(
            critic, real, fake, alpha=torch.rand(16), scaler=scaler)
    assert math.isfinite(loss.item())
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
