"""gpreg_torch at the edges: no silent wrong result, no misleading error, no hidden sync.

One test (or a few) per numbered item of the issue "gpreg_torch at the edges". Expected
numbers come from closed forms or from ``tests/support/gp_reference.py`` (a hand-written
float64 autograd penalty), never from gpreg itself.
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gpreg_torch as gp
from gpreg import BatchNormWarning, LazyRegularization
from gpreg._tolerances import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import penalty as reference
from gp_reference import shape_of_norms

f64 = torch.float64


def mlp(d: int = 4, width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 1)).double()


def batch(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def param_grads(value: torch.Tensor, module: nn.Module) -> list[torch.Tensor]:
    params = list(module.parameters())
    got = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(got, params)]


def assert_matches_reference(value, module, ref_value, ref_grads):
    assert_close(value.item(), ref_value, "float64")
    for g, r in zip(param_grads(value, module), ref_grads):
        assert_close(g.numpy(), r, "float64")


class InfScore(nn.Module):
    """Scores with +Inf for sample 0 (a constant offset: the input gradient is finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.register_buffer("offset", torch.zeros(6, 1, dtype=f64))
        self.offset[0] = float("inf")

    def forward(self, x):
        return self.net(x) + self.offset


# --- 1. from_scores and the generator -------------------------------------------------------

def test_from_scores_refuses_points_the_generator_computed():
    torch.manual_seed(0)
    G = nn.Linear(2, 4).double()
    D = mlp()
    fake = G(batch(6, 2))
    with pytest.raises(ValueError, match=r"computed by other operations .*fake = fake\.detach\(\)"
                                         r"\.requires_grad_\(\)"):
        gp.from_scores("r2", D(fake), fake)
    assert all(p.grad is None for p in G.parameters())
    # the recipe of the message: the same penalty, and G gets nothing
    x = fake.detach().requires_grad_()
    value = gp.from_scores("r2", D(x), x, gamma=10.0)
    ref = reference("r2", D, list(D.parameters()), [x.detach()], [x.detach()], weight=10.0)
    assert_matches_reference(value, D, *ref[:2])
    value.backward()
    assert all(p.grad is None for p in G.parameters())


# --- 2. NaN stays visible in every shape ----------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "none"])
@pytest.mark.parametrize("shape", ["two_sided", "one_sided", "squared"])
def test_a_nan_input_gradient_shows_in_every_shape(shape, reduction):
    w = torch.tensor([[0.3, 0.4], [float("nan"), 1.0], [1.2, 0.5]], dtype=f64)

    def critic(x):  # input gradient of sample i: w[i], norms 0.5, NaN, 1.3
        return (x * w).sum(dim=1)

    value = gp.gradient_penalty(critic, torch.ones(3, 2, dtype=f64), shape=shape,
                                reduction=reduction)
    if reduction != "none":
        assert torch.isnan(value)
        return
    assert torch.isnan(value[1])
    assert_close(value[[0, 2]].numpy(), shape_of_norms(shape, [0.5, 1.3]), "float64")


def test_wgan_lp_no_longer_logs_zero_for_nan_gradients():
    w = torch.tensor([[float("nan"), 1.0]], dtype=f64, requires_grad=True)
    value = gp.wgan_lp(lambda x: (x * w).sum(dim=1), torch.ones(4, 2, dtype=f64),
                       torch.zeros(4, 2, dtype=f64), alpha=0.5)
    assert torch.isnan(value)  # was 0.0, with every parameter gradient NaN


# --- 3. mixed-dtype parts -------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, *parts):
        self.seen.append(tuple(p.detach().clone() for p in parts))
        return sum(p.to(f64).flatten(1).sum(dim=1) for p in parts)


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float16),
                                    (torch.float16, torch.float64)])
def test_every_part_keeps_its_dtype_at_interpolates(dtypes):
    g = torch.Generator().manual_seed(0)
    real = tuple(torch.randn(5, 3, generator=g).to(d) for d in dtypes)
    fake = tuple(torch.randn(5, 3, generator=g).to(d) for d in dtypes)
    alpha = torch.rand(5, generator=g, dtype=f64)
    critic = Recorder()
    gp.wgan_gp(critic, real, fake, alpha=alpha)
    for got, r, f in zip(critic.seen[0], real, fake):
        assert got.dtype == r.dtype
        a = alpha.to(r.dtype)[:, None]  # alpha rounded to this part's dtype only
        assert torch.equal(got, a * r + (1 - a) * f)
    # drawn alpha: in the widest dtype, so the float64 part is not float16-rounded
    critic = Recorder()
    gp.wgan_gp(critic, real, fake, generator=torch.Generator().manual_seed(3))
    drawn = torch.rand(5, generator=torch.Generator().manual_seed(3),
                       dtype=torch.promote_types(*dtypes))
    for got, r, f in zip(critic.seen[0], real, fake):
        a = drawn.to(r.dtype)[:, None]
        assert got.dtype == r.dtype and torch.equal(got, a * r + (1 - a) * f)


def test_every_part_keeps_its_dtype_at_dragan_points():
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g).half())
    noise = (torch.rand(5, 3, generator=g), torch.rand(5, 2, generator=g).half())
    alpha = torch.rand(5, generator=g)
    critic = Recorder()
    gp.dragan(critic, real, alpha=alpha, noise=noise)
    for got, r, u in zip(critic.seen[0], real, noise):
        assert got.dtype == r.dtype
        a = alpha.to(r.dtype)[:, None]
        assert torch.equal(got, r + a * (0.5 * torch.std(r, correction=0)) * u)


# --- 4. BatchNorm: batch statistics in eval mode, and modules added later -------------------

def test_eval_mode_batchnorm_without_running_stats_warns():
    D = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False),
                      nn.Linear(4, 1)).eval()
    with pytest.warns(BatchNormWarning, match=r"uses batch statistics \(1\)"):
        gp.r1(D, torch.randn(4, 3))


@pytest.mark.parametrize("change", ["insert", "setitem", "setattr", "append"])
def test_a_batchnorm_added_after_the_first_call_is_seen(change, recwarn):
    D = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(4, 3)
    gp.r1(D, x)
    assert not [w for w in recwarn if w.category is BatchNormWarning]
    if change == "insert":
        D.insert(1, nn.BatchNorm1d(4))
    elif change == "setitem":
        D[1] = nn.BatchNorm1d(4)
    elif change == "setattr":
        D[1] = nn.Sequential(nn.Tanh())
        gp.r1(D, x)
        D[1].norm = nn.BatchNorm1d(4)  # a grandchild
    else:
        D[2] = nn.Sequential(nn.Linear(4, 4))
        gp.r1(D, x)
        D[2].append(nn.BatchNorm1d(4)).append(nn.Linear(4, 1))
    with pytest.warns(BatchNormWarning):
        gp.r1(D, x)


# --- 5. norms exact across the float range --------------------------------------------------

@pytest.mark.parametrize(("dtype", "s"), [(torch.float32, 1e-25), (torch.float32, 1e19),
                                          (torch.float64, 1e-170), (torch.float64, 1e160)])
def test_norms_are_exact_for_tiny_and_huge_gradients(dtype, s):
    """Input gradient (s, s, s, s): norm 2s, d norm / dw = 1/2 per entry (closed forms).
    In float32 the plain sum of squares gave 0 for 1e-25 and Inf for 1e19."""
    w = torch.full((1, 4), s, dtype=dtype, requires_grad=True)
    norms = gp.grad_norm(lambda x: (x * w).sum(dim=1), torch.randn(3, 4, dtype=dtype))
    assert_close(norms.detach().numpy(), np.full(3, 2 * s), str(dtype))
    (dw,) = torch.autograd.grad(norms.sum(), w)
    assert_close(dw.numpy(), np.full((1, 4), 3 * 0.5), str(dtype))


def test_wgan_gp_gradient_is_exact_for_tiny_gradients():
    """Entries of 1e-25: value 10 (2s - 1)^2, d/dw_j = 10 (2s - 1) ~ -10 (it was 0)."""
    s = 1e-25
    w = torch.full((1, 4), s, requires_grad=True)
    value = gp.wgan_gp(lambda x: (x * w).sum(dim=1), torch.randn(3, 4), torch.randn(3, 4))
    (dw,) = torch.autograd.grad(value, w)
    assert_close(value.item(), 10 * (2 * s - 1) ** 2, "float32")
    assert_close(dw.numpy(), np.full((1, 4), 10 * (2 * s - 1)), "float32")


@pytest.mark.parametrize("s", [1e-30, 1e-25, 1e18])
def test_r1_gradient_is_exact_at_every_scale(s):
    """R1 of D(x) = x . w with entries s: value gamma/2 * 4 s^2 (0 in float32 below 1e-23),
    d/dw = gamma w = 10 s per entry (closed forms): the sum of squares needs no root."""
    w = torch.full((1, 4), s, requires_grad=True)
    value = gp.r1(lambda x: (x * w).sum(dim=1), torch.randn(3, 4))
    (dw,) = torch.autograd.grad(value, w)
    assert_close(value.item(), np.float32(5 * 4 * s**2), "float32")  # rounded as float32
    assert_close(dw.numpy(), np.full((1, 4), 10 * s), "float32")


def test_r1_is_stylegan2_adas_formula_bit_for_bit():
    """StyleGAN2-ADA's R1: ``r1_grads.square().sum([1, 2, 3]) * (r1_gamma / 2)``, then the
    mean: gpreg computes the same operations in the same order, so value and every
    parameter gradient are equal, not only close."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 36, 1))
    real = torch.randn(5, 3, 8, 8)
    x = real.detach().requires_grad_(True)
    logits = D(x)
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    ref = (g.square().sum([1, 2, 3]) * (2.0 / 2)).mean()
    ref_grads = torch.autograd.grad(ref, [D[0].weight, D[0].bias, D[3].weight])
    for _ in range(2):  # the general path, then the planned one
        mine = gp.r1(D, real, gamma=2.0)
        grads = torch.autograd.grad(mine, [D[0].weight, D[0].bias, D[3].weight])
        assert torch.equal(mine, ref)
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_norms_of_multi_part_critics_span_the_float_range():
    """Part 0 has entries 2e19 (their squares sum past float32's 3.4e38), part 1 entries 1:
    the norm is sqrt(8e38 + 3)."""
    w0 = torch.full((1, 2), 2e19)
    norms = gp.grad_norm(lambda a, b: (a * w0).sum(1) + b.sum(1),
                         (torch.randn(2, 2), torch.randn(2, 3)))
    assert_close(norms.detach().numpy(), np.full(2, math.sqrt(8e38 + 3)), "float32")


def test_zero_inf_and_nan_gradients_stay_what_they_are():
    w = torch.tensor([[0.0, 0.0], [float("inf"), 1.0], [float("nan"), 1.0]])
    n = gp.grad_norm(lambda x: (x * w).sum(dim=1), torch.ones(3, 2))
    assert n[0] == 0 and n[1] == float("inf") and torch.isnan(n[2])


# --- 6. lazy penalty-only steps and Adam: a StyleGAN2-style reference loop ------------------

def stylegan2_r1_step(D, real, gamma, gain):
    """StyleGAN2-ADA's regularization phase written out: R1 by hand, ``logits * 0`` added."""
    x = real.detach().requires_grad_(True)
    logits = D(x)
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    r1 = g.square().sum(dim=1) * (gamma / 2)
    (logits * 0 + r1[:, None]).mean().mul(gain).backward()


def lazy_training(D, use_gpreg):
    g = torch.Generator().manual_seed(1)
    lazy = LazyRegularization(2)
    lr, betas = lazy.adam(1e-2, (0.0, 0.99))
    opt = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    for step in range(6):
        real = torch.randn(8, 4, generator=g, dtype=f64) + 1
        fake = torch.randn(8, 4, generator=g, dtype=f64)
        opt.zero_grad()
        (F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()).backward()
        opt.step()
        if lazy.active(step):
            opt.zero_grad()
            if use_gpreg:
                (lazy.gain * gp.r1(D, real, gamma=10.0)).backward()
            else:
                stylegan2_r1_step(D, real, 10.0, lazy.gain)
            opt.step()
    return D


def test_lazy_r1_steps_with_adam_match_a_stylegan2_loop():
    """Three penalty-only steps among six: every parameter, the last bias included (which
    the penalty does not reach: an exact zero gradient, so Adam steps it), stays on the
    reference trajectory. With ``.grad = None`` Adam skipped that bias: 2.9% off."""
    ours = lazy_training(mlp(), use_gpreg=True)
    theirs = lazy_training(mlp(), use_gpreg=False)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), "float64", err_msg=name)


# --- 7. from_scores without a graph keeps the caller's graph --------------------------------

def test_from_scores_without_graph_leaves_the_forward_graph_usable():
    D = mlp()
    x = batch(6, 4).requires_grad_()
    scores = D(x)
    logged = gp.from_scores("r1", scores, x, create_graph=False)
    assert not logged.requires_grad
    assert_close(logged.item(), reference("r1", D, list(D.parameters()), [x.detach()])[0],
                 "float64")
    loss = F.softplus(-scores).mean()
    got = param_grads(loss, D)  # "backward through the graph a second time" before
    want = torch.autograd.grad(F.softplus(-D(x.detach())).mean(), list(D.parameters()))
    for a, b in zip(got, want):
        assert_close(a.numpy(), b.numpy(), "float64")


# --- 11. an Inf score and the zero term -----------------------------------------------------

@pytest.mark.parametrize("name", ["wgan_gp", "r1"])
def test_an_inf_score_leaves_the_penalty_of_a_module_exact(name):
    D = InfScore()
    real, fake = batch(6, 4, seed=2), batch(6, 4, seed=3)
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(4), dtype=f64)
    kw = {"alpha": alpha} if name == "wgan_gp" else {"gamma": 10.0}
    value = gp.get_penalty(name)(D, *((real, fake) if name == "wgan_gp" else (real,)), **kw)
    ref = reference(name, D, list(D.parameters()), [real], [fake], alpha=alpha)
    assert_matches_reference(value, D, *ref[:2])


# --- 12. the attention switches under threads -----------------------------------------------

def sdpa_flags():
    c = torch.backends.cuda
    return (c.flash_sdp_enabled(), c.mem_efficient_sdp_enabled(), c.cudnn_sdp_enabled(),
            c.math_sdp_enabled())


def test_overlapping_calls_in_two_threads_restore_the_attention_switches():
    """A enters, B enters, A leaves, B leaves: with a save/restore per call B restored A's
    "off" for good, and A's restore switched fused attention back on under B's pass."""
    before = sdpa_flags()
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def critic_a(x):
        a_inside.set()
        assert b_inside.wait(30)
        return x.sum(dim=1)

    def critic_b(x):
        b_inside.set()
        assert a_done.wait(30)
        seen["b"] = sdpa_flags()
        return x.sum(dim=1)

    x = torch.randn(4, 3)
    ta = threading.Thread(target=lambda: gp.r1(critic_a, x))
    tb = threading.Thread(target=lambda: gp.r1(critic_b, x))
    ta.start()
    assert a_inside.wait(30)
    tb.start()
    ta.join(30)
    a_done.set()
    tb.join(30)
    assert seen["b"] == (False, False, False, True)  # B's pass still on the math kernel
    assert sdpa_flags() == before


# --- 13. scaler= without a host-device sync -------------------------------------------------

class Syncs(TorchDispatchMode):
    """Counts the ops that copy a device value to the host (.item(), float(), bool())."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_scaler_costs_no_sync():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(6, 4)
    scaler.scale(torch.ones(()))  # the scaler's scale now lives on the device
    with Syncs() as probe:
        probe_item = torch.ones(1).item()  # the probe sees a sync
    assert probe.count == 1 and probe_item == 1.0
    with torch.autocast("cpu", dtype=torch.float16), Syncs() as probe:
        value = gp.r1(D, x, scaler=scaler)
        gp.wgan_gp(D, x, x.flip(0), scaler=scaler)
    assert probe.count == 0  # get_scale() was one per call
    assert math.isfinite(value.item())


# --- 14. float16 with GradScaler's default scale --------------------------------------------

def dcgan_like():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 4, 2, 1),
        nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
        nn.Linear(64 * 2 * 2, 1))


def relative(a, b):
    num = math.sqrt(sum(float((x - y).double().pow(2).sum()) for x, y in zip(a, b)))
    return num / math.sqrt(sum(float(y.double().pow(2).sum()) for y in b))


@pytest.mark.parametrize("kind", ["mlp", "dcgan"])
@pytest.mark.parametrize("name", ["wgan_gp", "r1"])
def test_float16_critics_work_from_the_first_step_with_the_default_scaler(kind, name):
    """GradScaler starts at 2**16, above float16's 65504: the inner backward's seed was Inf
    and the first penalties NaN. The inner scale is capped at 2**15."""
    if kind == "mlp":
        torch.manual_seed(0)
        D, shape = nn.Sequential(nn.Linear(16, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)), (32, 16)
    else:
        D, shape = dcgan_like(), (16, 3, 16, 16)
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    kw = {"alpha": torch.rand(shape[0], generator=g)} if name == "wgan_gp" else {}
    data = (real, fake) if name == "wgan_gp" else (real,)
    fn = gp.get_penalty(name)
    want = fn(D, *data, **kw)
    want_grads = param_grads(want, D)
    scaler = torch.amp.GradScaler("cpu")  # the default scale, 2**16
    with torch.autocast("cpu", dtype=torch.float16):
        value = fn(D, *data, **kw, scaler=scaler)
    assert math.isfinite(value.item())
    assert abs(value.item() / want.item() - 1) < 1e-2
    # parameter gradients, with an outer scale at which the outer backward does not overflow
    grads = [t / 2**10 for t in param_grads(value * 2**10, D)]
    assert relative(grads, want_grads) < 2e-2


def test_an_overflowing_inner_backward_still_shows_as_inf():
    """Capped or not, a critic whose scaled input gradient leaves float16's range gives an
    Inf or NaN penalty (never a silent 0), so GradScaler.step skips that update."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(16, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    with torch.no_grad():
        D[2].weight.mul_(1e3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    with torch.autocast("cpu", dtype=torch.float16):
        value = gp.r1(D, torch.randn(8, 16), scaler=scaler)
    assert not math.isfinite(value.item())


# --- 15. torch.no_grad() --------------------------------------------------------------------

def test_under_no_grad_the_penalty_is_a_plain_value_and_enable_grad_makes_it_trainable():
    D = mlp()
    real, fake = batch(6, 4, seed=2), batch(6, 4, seed=3)
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(4), dtype=f64)
    ref = reference("wgan_gp", D, list(D.parameters()), [real], [fake], alpha=alpha)
    with torch.no_grad():
        logged = gp.wgan_gp(D, real, fake, alpha=alpha)
        with torch.enable_grad():
            trainable = gp.wgan_gp(D, real, fake, alpha=alpha)
    assert not logged.requires_grad
    assert_close(logged.item(), ref[0], "float64")
    assert_matches_reference(trainable, D, *ref[:2])


# --- 16. torch.inference_mode() -------------------------------------------------------------

@pytest.mark.parametrize("name", ["wgan_gp", "r1"])
def test_inference_mode_is_named_with_the_fix(name):
    D = mlp()
    fn = gp.get_penalty(name)
    with torch.inference_mode():
        data = (batch(6, 4), batch(6, 4, seed=2))[: 2 if name == "wgan_gp" else 1]
        with pytest.raises(RuntimeError, match=r"under torch\.inference_mode\(\).*outside "
                                               r"inference_mode.*torch\.no_grad\(\)"):
            fn(D, *data)
    # tensors made under inference_mode are fine outside it
    value = fn(D, *data, **({"alpha": 0.3} if name == "wgan_gp" else {}))
    ref = reference(name, D, list(D.parameters()), [data[0].clone()],
                    [data[-1].clone()], alpha=torch.full((6,), 0.3, dtype=f64))
    assert_matches_reference(value, D, *ref[:2])


# --- 17. the critic's own errors ------------------------------------------------------------

class CodedError(RuntimeError):
    """A user's RuntimeError whose constructor is not ``(message)``: it came back as a
    ValueError, which ``except CodedError`` / ``except RuntimeError`` missed."""

    def __init__(self, code: int, layer: str) -> None:
        super().__init__(f"failure {code}")
        self.code, self.layer = code, layer


def test_the_critics_own_exception_comes_back_unchanged_with_a_note():
    err = CodedError(7, "head")

    def critic(x):
        raise err

    with pytest.raises(CodedError) as info:
        gp.r1(critic, torch.randn(4, 3))
    assert info.value is err and str(err) == "failure 7"  # the same object, type, message
    if sys.version_info >= (3, 11):
        (note,) = err.__notes__
        assert "gpreg_torch.r1" in note and "(4, 3)" in note and "layout" not in note


def test_out_of_memory_keeps_its_type_and_gets_no_layout_hint():
    def critic(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError) as info:
        gp.r1(critic, torch.randn(4, 3))
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "layout" not in notes
    if sys.version_info >= (3, 11):
        assert "part of the batch" in notes


def test_shape_errors_keep_the_layout_hint():
    with pytest.raises(RuntimeError, match=r"(?s)mat1 and mat2.*channels-first vs "
                                           r"channels-last.*args="):
        gp.r1(nn.Linear(5, 1), torch.randn(4, 3))


# --- 18. integer labels ---------------------------------------------------------------------

def test_integer_label_parts_point_to_args():
    with pytest.raises(TypeError, match=r"label or an index .*args=\(labels,\)"):
        gp.r1(lambda x, y: x.sum(dim=1), (torch.randn(4, 3), torch.arange(4)))


# --- 19. clear messages ---------------------------------------------------------------------

def test_from_scores_on_scores_without_a_graph():
    D = mlp()
    x = batch(6, 4).requires_grad_()
    with torch.no_grad():
        scores = D(x)
    with pytest.raises(RuntimeError, match=r"scores do not require grad.*torch\.no_grad\(\)"):
        gp.from_scores("r1", scores, x)


def test_a_number_as_scaler():
    with pytest.raises(TypeError, match=r"scaler must be the torch\.amp\.GradScaler .*got "
                                        r"float 1024\.0.*GradScaler\(init_scale="):
        gp.r1(mlp(), batch(6, 4), scaler=1024.0)


def test_dragan_check_finite_names_the_nan_sample_and_sigma():
    real = batch(6, 4)
    real[3, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"real is not finite .* sample\(s\) 3\. "
                                                 r"DRAGAN's sigma"):
        gp.dragan(mlp(), real, check_finite=True)


def test_lazy_active_accepts_an_integer_tensor():  # the core's checks: tests/core
    assert not LazyRegularization(4).active(torch.tensor(3))


# --- 20. grad_norm trains by default --------------------------------------------------------

def test_a_penalty_built_from_grad_norm_trains_by_default():
    D = mlp()
    x = batch(6, 4)
    norms = gp.grad_norm(D, x)
    custom = ((norms - 1) ** 2).mean()  # WGAN-GP's shape at the points x, weight 1
    ref = reference("wgan_gp", D, list(D.parameters()), [x], [x], alpha=torch.ones(6, dtype=f64),
                    weight=1.0)
    assert_matches_reference(custom, D, *ref[:2])
    assert not gp.grad_norm(D, x, create_graph=False).requires_grad  # logging: plain


# --- issue 15, item 4: what gpreg does for a bare module, through args= / output= -----------

class CondBN(nn.Module):
    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8) if bn else nn.Tanh())
        self.embed = nn.Embedding(3, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x, y, scale=1.0):
        h = self.body(x)
        return {"adv": scale * (self.head(h).squeeze(1) + (self.embed(y) * h).sum(1)),
                "feat": h}


def test_batchnorm_warning_through_args_kwargs_and_output():
    D = CondBN()
    y = torch.arange(6) % 3
    with pytest.warns(BatchNormWarning, match=r"body\.1"):
        gp.r1(D, torch.randn(6, 4), args=(y,), kwargs={"scale": 0.5}, output="adv")


def test_compiled_conditional_critic_through_args_and_output():
    torch.manual_seed(0)
    D = CondBN(bn=False).double()
    compiled = torch.compile(D, backend="aot_eager")
    real, fake = batch(6, 4, seed=2), batch(6, 4, seed=3)
    y = torch.arange(6) % 3
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(4), dtype=f64)
    value = gp.wgan_gp(compiled, real, fake, alpha=alpha, args=(y,), kwargs={"scale": 0.7},
                       output="adv")
    ref = reference("wgan_gp", lambda x: D(x, y, scale=0.7)["adv"], list(D.parameters()),
                    [real], [fake], alpha=alpha)
    assert_matches_reference(value, D, *ref[:2])


class CondRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 5, batch_first=True)
        self.embed = nn.Embedding(3, 5)

    def forward(self, x, y):
        return {"score": (self.rnn(x)[0][:, -1] * self.embed(y)).sum(dim=1)}


@pytest.mark.parametrize("wrap", ["module", "compiled"])
def test_rnn_critics_are_detected_through_args_and_output(monkeypatch, wrap):
    """cuDNN is switched off for an RNN critic's penalty pass on CUDA; on CPU the detection
    itself is what can be checked: the switch is asked for through args= and output=."""
    from gpreg_torch import _core

    asked = []
    original = _core._double_backward_kernels

    def spy(rnn, device):
        asked.append(rnn)
        return original(rnn, device)

    monkeypatch.setattr(_core, "_double_backward_kernels", spy)
    torch.manual_seed(0)
    D = CondRNN().double()
    critic = torch.compile(D, backend="aot_eager") if wrap == "compiled" else D
    x, y = batch(4, 6, 3), torch.arange(4) % 3
    value = gp.r1(critic, x, args=(y,), output="score")
    gp.r1(lambda x: D(x, y)["score"], x)  # behind a closure: not seen
    assert asked == [True, False]
    ref = reference("r1", lambda x: D(x, y)["score"], list(D.parameters()), [x])
    assert_matches_reference(value, D, *ref[:2])


def test_check_finite_through_args_and_output():
    D = CondBN(bn=False)
    y = torch.arange(6) % 3
    x = torch.randn(6, 4)
    x[4, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"evaluation point .* sample\(s\) 4\."):
        gp.r1(D, x, args=(y,), output="adv", check_finite=True)
    offset = torch.zeros(6)
    offset[2] = float("inf")
    with pytest.raises(FloatingPointError, match=r"critic's output .* sample\(s\) 2\."):
        gp.r1(D, torch.randn(6, 4), args=(y,), output=lambda o: o["adv"] + offset,
              check_finite=True)

