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
from gpreg_torch import check_critic


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


class Conditional(nn.Module):
    """A projection critic: h = tanh(norm(W x)), score = w·h + <embed(y), h> (Miyato &
    Koyama 2018), with a dict output when ``as_dict``."""

    def __init__(self, norm=None, fn=None, as_dict=False, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.out, self.embed = nn.Linear(3, 8), nn.Linear(8, 1), nn.Embedding(classes, 8)
        self.norm, self.fn, self.as_dict = norm or nn.Identity(), fn, as_dict

    def forward(self, x, labels, *, scale=1.0):
        h = self.norm(self.a(x))
        h = torch.tanh(h) if self.fn is None else self.fn.apply(h)
        score = scale * (self.out(h).squeeze(1) + (self.embed(labels) * h).sum(1))
        return {"adv": score, "features": h} if self.as_dict else score


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def test_conditional_and_dict_output_critics_through_args_kwargs_output():
    real, fake = data()
    report = check_critic(Conditional(nn.LayerNorm(8)), real, fake, args=(LABELS,),
                          kwargs={"scale": 0.5}, directions=2)
    assert report.ok, report.summary()
    assert "embed.weight" in report.groups
    assert max(max(g.values()) for g in report.errors.values()) < 1e-9
    as_dict = check_critic(Conditional(as_dict=True), real, fake, args=(LABELS,), output="adv",
                           penalties=["wgan_gp", "r1"])
    assert as_dict.ok, as_dict.summary()
    with pytest.raises(TypeError, match="output="):
        check_critic(Conditional(as_dict=True), real, fake, args=(LABELS,), penalties="r1")


def test_conditional_critic_findings_through_args():
    real, fake = data()
    detached = check_critic(Conditional(fn=TanhDetached), real, fake, args=(LABELS,),
                            penalties=["wgan_gp", "r1"])
    assert not detached.ok and detached.errors["r1"]["a.weight"] > 1e-3
    once = check_critic(Conditional(fn=TanhOnce), real, fake, args=(LABELS,), penalties="r1")
    assert once.penalties[0].status == "error" and "once_differentiable" in once.penalties[0].error
    coupled = check_critic(Conditional(nn.BatchNorm1d(8)), real, fake, args=(LABELS,),
                           penalties="wgan_gp", directions=1)
    assert coupled.coupling.coupled and "BatchNorm in training mode" in coupled.summary()


class StyleCond(nn.Module):
    """D(img, c) with a float conditioning vector c and a dict output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.proj = nn.Linear(3, 1), nn.Linear(2, 1)

    def forward(self, img, c):
        return {"adv": torch.tanh(self.lin(img)).squeeze(1) * self.proj(c).squeeze(1),
                "aux": c.sum(1)}


def test_check_finite_through_args_and_output():
    """check_finite names the sample whose score a non-finite row of args made non-finite,
    and the sample whose point is non-finite; the dict's other entries are not its business."""
    real, fake = data()
    c = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    critic, alpha = StyleCond(), torch.linspace(0.1, 0.9, 6)
    kw = {"args": (c,), "output": "adv", "alpha": alpha}
    plain = gp.wgan_gp(critic, real, fake, **kw)
    assert torch.equal(plain, gp.wgan_gp(critic, real, fake, check_finite=True, **kw))
    bad_c = c.clone()
    bad_c[4, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"output is not finite .*sample\(s\) 4\."):
        gp.wgan_gp(critic, real, fake, check_finite=True, **{**kw, "args": (bad_c,)})
    assert torch.isnan(gp.wgan_gp(critic, real, fake, **{**kw, "args": (bad_c,)}))
    bad_real = real.clone()
    bad_real[2, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"evaluation point .*sample\(s\) 2\."):
        gp.r1(critic, bad_real, args=(c,), output="adv", check_finite=True)
    report = check_critic(critic, real, fake, args=(c,), output="adv", penalties=["wgan_gp"])
    assert report.ok, report.summary()


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}


def test_a_batchnorm_critic_with_args_is_never_run_nor_changed():
    real, fake = data()
    critic = Conditional(nn.BatchNorm1d(8))
    before, rng = state(critic), torch.get_rng_state()
    check_critic(critic, real, fake, args=(LABELS,), penalties=["wgan_gp", "dragan"])
    compiled = torch.compile(critic, backend="aot_eager")  # unwrapped, never compiled
    check_critic(compiled, real, fake, args=(LABELS,), penalties="r1", training=False,
                 dtype="float32")
    after = state(critic)
    assert before.keys() == after.keys() and int(after["norm.num_batches_tracked"]) == 0
    for k in before:  # bit-identical, same dtype
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    assert critic.training and all(p.grad is None for p in critic.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_a_ddp_critic_is_checked_through_its_module(tmp_path):
    """One gloo process: the check copies DDP's inner module and leaves the wrapped one as
    it was (a DDP forward would also broadcast buffers and prepare a reduction)."""
    import torch.distributed as dist

    real, fake = data()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        critic = Conditional(nn.BatchNorm1d(8))
        before = state(critic)
        ddp = nn.parallel.DistributedDataParallel(critic)
        report = check_critic(ddp, real, fake, args=(LABELS,), penalties="r1", training=False)
        assert report.ok and report.groups[0] == "a.weight", report.summary()
        assert all(torch.equal(before[k], v) for k, v in state(critic).items())
    finally:
        dist.destroy_process_group()


def test_functions_are_refused_with_the_way_to_pass_the_module():
    """A closure over a trainer's module used to run ~25 forwards on the user's module itself
    (BatchNorm's counter 0 -> 79 here, running mean moved): now it is refused, untouched."""
    real, fake = data()
    critic = Conditional(nn.BatchNorm1d(8))
    trainer = types.SimpleNamespace(D=critic)
    before = state(critic)

    class Holder:
        def __call__(self, x):
            return trainer.D(x, LABELS)

    for fn in (lambda x: trainer.D(x, LABELS), functools.partial(critic, labels=LABELS),
               Holder(), critic.forward):
        with pytest.raises(TypeError, match=r"args=\(labels,\)") as err:
            check_critic(fn, real, fake, penalties="wgan_gp")
        assert "never run nor changed" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in state(critic).items())
    with pytest.raises(TypeError, match="critic must be callable"):
        check_critic(critic.a.weight, real, fake)


def test_parameters_out_of_reach_are_reported_unchecked():
    real, fake = data()
    hidden = torch.randn(3, 1, requires_grad=True)

    class Reaching(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return torch.tanh(self.lin(x) + x @ hidden)

    report = check_critic(Reaching(), real, fake, penalties=["r1"])
    assert not report.ok and report.groups == ("lin.weight", "lin.bias")
    assert report.unchecked == ("a (3, 1) float32 tensor",)
    assert "neither copied nor checked" in report.summary()


def test_a_critic_that_fails_in_float64_is_checked_in_float32():
    real, fake = data()

    class Float32Inside(nn.Module):  # a float32 constant made inside: float64 fails
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return torch.tanh(self.lin(x) + x @ torch.ones(3, 1))

    report = check_critic(Float32Inside(), real, fake, penalties=["wgan_gp"])
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


class SqrtAbs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1, bias=False)

    def forward(self, x):
        return self.lin(x).abs().sqrt()


def test_nonfinite_gradients_are_reported():
    real, _ = data()
    real[0] = 0.0
    report = check_critic(SqrtAbs(), real, penalties=["r1"])
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


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(2, 4), nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x, y):
        return self.head(torch.tanh(self.a(x) + self.b(y)))


def test_multi_input_critic():
    real = (torch.randn(5, 2), torch.randn(5, 3))
    fake = (torch.randn(5, 2), torch.randn(5, 3))
    report = check_critic(TwoInputs(), real, fake, penalties=["wgan_gp", "dragan"])
    assert report.ok, report.summary()
    assert set(report.groups) == {"a.weight", "a.bias", "b.weight", "b.bias", "head.weight",
                                  "head.bias"}
