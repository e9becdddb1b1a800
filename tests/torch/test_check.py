"""check_critic in PyTorch: flags what double backprop gets wrong, passes what it gets right.

The finite differences inside check_critic are the independent reference here; where a
critic is exact by construction (torch's own layers) the check must pass to round-off, and
where double backprop is known to fail (a Function marked @once_differentiable, a backward
written with detached tensors, batch statistics) it must say so without raising.
"""

from __future__ import annotations

import functools
import math
import types

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import gpreg_torch as gp
from gpreg import BUILTIN_NAMES
from gpreg._check import CheckReport
from gpreg_torch._check import check_critic


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only contend on a shared machine (20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def data(batch=6, features=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, features, generator=g), torch.randn(batch, features, generator=g)


def mlp(norm=None, act=None, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 8)]
    if norm is not None:
        layers.append(norm)
    layers += [act or nn.LeakyReLU(0.2), nn.Linear(8, 1)]
    return nn.Sequential(*layers)


class TanhOnce(torch.autograd.Function):
    """tanh whose backward is marked @once_differentiable (not differentiable again)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class TanhDetached(torch.autograd.Function):
    """tanh whose backward computes its derivative from detached tensors: no error, and a
    penalty gradient that silently misses the derivative of tanh'."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y.detach() ** 2)


class WithFunction(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(3, 8), nn.Linear(8, 1), fn

    def forward(self, x):
        return self.b(self.fn.apply(self.a(x)))


def test_clean_critic_passes_every_penalty_to_round_off():
    real, fake = data()
    report = check_critic(mlp(nn.LayerNorm(8)), real, fake)
    assert isinstance(report, CheckReport)
    assert report.ok, report.summary()
    assert report.dtype == "float64" and report.framework == "torch"
    assert [p.penalty for p in report.penalties] == list(BUILTIN_NAMES)
    assert report.groups == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
    for penalty, per_group in report.errors.items():
        assert max(per_group.values()) < 1e-9, (penalty, per_group)
    assert not report.coupling.coupled and report.deterministic
    assert report.nonfinite == [] and report.failures() == []
    assert str(report).startswith("check_critic: OK")


@pytest.mark.parametrize("norm", [
    lambda: nn.LayerNorm(8),
    lambda: nn.GroupNorm(2, 8),
    lambda: nn.BatchNorm1d(8).eval(),
    lambda: nn.Sequential(nn.Unflatten(1, (2, 4)), nn.InstanceNorm1d(2, affine=True),
                          nn.Flatten()),
], ids=["LayerNorm", "GroupNorm", "BatchNorm1d-eval", "InstanceNorm1d"])
def test_torch_normalization_layers_are_exact(norm):
    real, fake = data()
    report = check_critic(mlp(norm()), real, fake, penalties=["wgan_gp", "r1"])
    assert report.ok, report.summary()
    assert max(max(g.values()) for g in report.errors.values()) < 1e-9


def test_once_differentiable_function_is_a_clear_failure_not_a_crash():
    real, fake = data()
    torch.manual_seed(0)
    report = check_critic(WithFunction(TanhOnce), real, fake, penalties=["wgan_gp", "r1"])
    assert not report.ok
    for p in report.penalties:
        assert p.status == "error"
        assert "once_differentiable" in p.error and "drop the decorator" in p.error
    text = report.summary()
    assert "FAILED" in text and "could not be computed" in text and "once_differentiable" in text


def test_once_differentiable_is_found_even_where_autograd_grad_would_skip_it():
    """torch.autograd.grad(penalty, params) skips the node that raises (its inputs are not
    among params) and returns None or, for a module critic, the zero of gpreg's zero term:
    silently missing gradients. loss.backward() raises."""
    real, _ = data()
    torch.manual_seed(0)
    critic = WithFunction(TanhOnce)
    value = gp.r1(critic, real)
    grads = torch.autograd.grad(value, [critic.a.bias, critic.b.weight], allow_unused=True)
    # what a functional training step would see
    assert all(g is None or not g.any() for g in grads)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gp.r1(critic, real).backward()


def test_backward_built_from_detached_tensors_is_flagged():
    real, fake = data()
    torch.manual_seed(0)
    report = check_critic(WithFunction(TanhDetached), real, fake, penalties=["wgan_gp", "r1"])
    assert not report.ok
    errs = report.errors["wgan_gp"]
    assert errs["a.weight"] > 1e-3 and errs["a.bias"] > 1e-3
    assert errs["b.bias"] == 0.0  # the last bias never reaches the input gradient
    assert "a.weight" in report.summary() and "disagrees with finite differences" in str(report)


def test_batchnorm_in_training_mode_reports_coupling():
    real, fake = data()
    critic = mlp(nn.BatchNorm1d(8), nn.Tanh())
    report = check_critic(critic, real, fake, penalties=["wgan_gp"])
    assert report.coupling.coupled and report.coupling.ratio > 1e-3
    assert not report.ok
    assert "BatchNorm in training mode" in report.summary()
    assert critic.training  # the user's module keeps its mode
    evaluated = check_critic(critic, real, fake, penalties=["wgan_gp"], training=False)
    assert evaluated.ok and not evaluated.coupling.coupled


def test_the_users_critic_is_not_changed():
    real, fake = data()
    critic = mlp(nn.BatchNorm1d(8), nn.Dropout(0.5))
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    rng = torch.get_rng_state()
    report = check_critic(critic, real, fake, penalties=["wgan_gp", "r2"])
    assert report.deterministic, report.summary()  # the same dropout mask at every call
    after = critic.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.dtype == torch.float32 and p.grad is None for p in critic.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_plain_callables_are_copied_through_closures_partials_and_methods():
    real, fake = data()
    net = mlp(nn.LayerNorm(8))
    w = torch.randn(3, 1, requires_grad=True)
    labels = torch.ones(6, 1)
    for critic, first in [
        (lambda x: net(x) * labels, "net.0.weight"),
        (functools.partial(lambda x, d: d(x), d=net), "d.0.weight"),
        (net.forward, "self.0.weight"),
        (lambda x: torch.tanh(x @ w), "w"),
    ]:
        report = check_critic(critic, real, fake, penalties=["wgan_gp"], directions=1)
        assert report.ok, report.summary()
        assert report.groups[0] == first
    assert w.grad is None and w.dtype == torch.float32


def test_parameters_out_of_reach_are_reported_unchecked():
    real, fake = data()
    hidden = types.SimpleNamespace(w=torch.randn(3, 1, requires_grad=True))
    report = check_critic(lambda x: torch.tanh(x @ hidden.w), real, fake, penalties=["r1"])
    assert not report.ok
    assert report.unchecked == ("a (3, 1) float32 tensor",)
    assert "could not copy" in report.summary()


def test_a_critic_that_fails_in_float64_is_checked_in_float32():
    real, fake = data()
    torch.manual_seed(0)
    lin = nn.Linear(3, 1)

    def critic(x):  # a float32 constant made inside: float64 inputs fail in the matmul
        return torch.tanh(lin(x) + x @ torch.ones(3, 1))

    report = check_critic(critic, real, fake, penalties=["wgan_gp"])
    assert report.dtype == "float32" and report.ok, report.summary()
    assert report.rtol == 5e-3 and "failed in float64" in report.summary()
    assert check_critic(mlp(), real, fake, penalties="r1", dtype="float32").dtype == "float32"


def test_parametrizations():
    """weight_norm is a plain reparameterization: exact. spectral_norm in training mode runs
    one power-iteration step per call under no_grad, by design: the check sees the step's
    dependence on the weight (small, gone at convergence); in eval mode it is exact."""
    real, fake = data()
    torch.manual_seed(0)
    wn = nn.Sequential(parametrizations.weight_norm(nn.Linear(3, 8)), nn.Tanh(), nn.Linear(8, 1))
    assert check_critic(wn, real, fake, penalties=["wgan_gp"]).ok
    sn = nn.Sequential(parametrizations.spectral_norm(nn.Linear(3, 8)), nn.Tanh(),
                       nn.Linear(8, 1))
    assert check_critic(sn, real, fake, penalties=["wgan_gp"], training=False).ok
    train = check_critic(sn, real, fake, penalties=["wgan_gp"], training=True)
    assert train.deterministic
    assert train.errors["wgan_gp"]["0.parametrizations.weight.original"] > 1e-6


def test_nonfinite_gradients_are_reported():
    real, _ = data()
    real[0] = 0.0
    lin = nn.Linear(3, 1, bias=False)
    report = check_critic(lambda x: lin(x).abs().sqrt(), real, penalties=["r1"])
    assert not report.ok
    assert report.nonfinite and report.nonfinite[0].startswith("r1")
    assert not math.isfinite(report.penalties[0].value)


def test_arguments_and_reproducibility():
    real, fake = data()
    critic = mlp(nn.LayerNorm(8), nn.Tanh())
    only_real = check_critic(critic, real)
    assert [p.penalty for p in only_real.penalties] == ["r1", "dragan"]
    with pytest.raises(ValueError, match="wgan_gp is evaluated at interpolates and needs fake"):
        check_critic(critic, real, penalties=["wgan_gp"])
    with pytest.raises(ValueError, match="directions must be a positive int"):
        check_critic(critic, real, fake, directions=0)
    with pytest.raises(ValueError, match="eps must be a number between 0 and 1"):
        check_critic(critic, real, fake, eps=2.0)
    with pytest.raises(ValueError, match="dtype must be None, 'float64' or 'float32'"):
        check_critic(critic, real, fake, dtype="float16")
    with pytest.raises(TypeError, match="critic must be callable"):
        check_critic("critic", real, fake)
    a = check_critic(critic, real, fake, penalties="r2", generator=torch.Generator().manual_seed(3))
    b = check_critic(critic, real, fake, penalties="r2", generator=torch.Generator().manual_seed(3))
    assert a.errors == b.errors and a.seed == b.seed


def test_multi_input_critic():
    torch.manual_seed(0)
    a, b = nn.Linear(2, 4), nn.Linear(3, 4)
    head = nn.Linear(4, 1)

    def critic(x, y):
        return head(torch.tanh(a(x) + b(y)))

    real = (torch.randn(5, 2), torch.randn(5, 3))
    fake = (torch.randn(5, 2), torch.randn(5, 3))
    report = check_critic(critic, real, fake, penalties=["wgan_gp", "dragan"])
    assert report.ok, report.summary()
    assert set(report.groups) == {"a.weight", "a.bias", "b.weight", "b.bias", "head.weight",
                                  "head.bias"}
