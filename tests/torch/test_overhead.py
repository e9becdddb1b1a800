"""What the per-call fast paths (issue 16) remember is honest: the checked options, the checked
points' signatures and the parameters the penalty does not reach are taken from an earlier call
only where nothing that decides them changed, and every check still fires on a call that
differs. Expected values are closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpreg
import gpreg_torch as gp
from gpreg._tolerances import assert_close

F64 = torch.float64


def _linear_critic(w: torch.Tensor):
    """D(x) = x·w: the input gradient is w for every sample, the norm ‖w‖."""
    return lambda x: x @ w[:, None]


def test_a_weight_array_that_changes_in_place_is_read_at_every_call():
    w = torch.tensor([3.0, 4.0], dtype=F64)  # ‖w‖ = 5: WGAN-GP = weight · (5 − 1)²
    x = torch.zeros(4, 2, dtype=F64)
    weight = np.array(10.0)
    first = gp.wgan_gp(_linear_critic(w), x, x, weight=weight, alpha=torch.full((4,), 0.5))
    weight[...] = 2.0
    second = gp.wgan_gp(_linear_critic(w), x, x, weight=weight, alpha=torch.full((4,), 0.5))
    assert_close(first.item(), 160.0, "float64")
    assert_close(second.item(), 32.0, "float64")


def test_a_value_that_failed_is_refused_again_and_one_that_passed_stays_checked():
    w = torch.tensor([3.0, 4.0], dtype=F64)
    x = torch.zeros(4, 2, dtype=F64)
    for _ in range(2):
        with pytest.raises(ValueError, match="gamma must be a finite, non-negative number"):
            gp.r1(_linear_critic(w), x, gamma=-1.0)
        with pytest.raises(TypeError, match="gamma must be a Python number"):
            gp.r1(_linear_critic(w), x, gamma=True)
        assert_close(gp.r1(_linear_critic(w), x, gamma=4.0).item(), 50.0, "float64")  # 2·25


def test_points_with_a_new_signature_are_checked_again():
    w = torch.tensor([3.0, 4.0], dtype=F64)
    real = torch.zeros(4, 2, dtype=F64)
    for _ in range(2):
        gp.wgan_gp(_linear_critic(w), real, real)
    with pytest.raises(TypeError, match="the points have different dtypes"):
        gp.wgan_gp(_linear_critic(w), real, real.float())
    with pytest.raises(TypeError, match="floating"):
        gp.r1(_linear_critic(w), real.long())
    with pytest.raises(ValueError, match="shape"):
        gp.wgan_gp(_linear_critic(w), real, torch.zeros(3, 2, dtype=F64))


def _penalty_only_grads(critic: torch.nn.Module, x: torch.Tensor) -> dict[str, object]:
    critic.zero_grad(set_to_none=True)
    gp.r1(critic, x).backward()
    return {n: p.grad for n, p in critic.named_parameters()}


def test_the_zero_gradients_follow_a_critic_that_changes():
    """Every parameter gets a gradient tensor from a penalty-only backward (a zero where the
    penalty does not reach it) also after the critic gains a layer, changes mode or gets
    inputs of another shape, i.e. the remembered set of unreached parameters is not stale."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    critic.double()
    x = torch.randn(5, 3, dtype=F64)
    for _ in range(2):
        grads = _penalty_only_grads(critic, x)
        assert all(g is not None for g in grads.values())
        assert torch.equal(grads["2.bias"], torch.zeros(1, dtype=F64))
    # a new last layer after a Tanh: its bias is the unreached one now
    critic.append(torch.nn.Tanh())
    critic.append(torch.nn.Linear(1, 1).double())
    grads = _penalty_only_grads(critic, x)
    assert all(g is not None for g in grads.values())
    assert torch.equal(grads["4.bias"], torch.zeros(1, dtype=F64))
    assert grads["2.bias"].abs().sum() > 0  # now inside the input gradient's graph
    critic.eval()
    assert all(g is not None for g in _penalty_only_grads(critic, x).values())
    assert all(g is not None for g in _penalty_only_grads(critic, x[:2]).values())


# --- planned calls: a call of a kind that passed the checks runs a straight-line plan -------

PLANNED = ["wgan_gp", "wgan_lp", "zero_gp", "max_gp", "r1", "r2", "wgan_div"]


@pytest.fixture
def planned_calls(monkeypatch):
    """Counts the calls that ran a plan (so a test cannot pass on the general path alone)."""
    from gpreg_torch import _core

    calls = []
    real = _core._planned

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_core, "_planned", spy)
    monkeypatch.setattr(_core, "_plans", {})
    return calls


def _small_critic(dtype=F64) -> torch.nn.Module:
    """Smooth (a piecewise-linear critic's input gradient would not see the points' last
    bits), with a last bias that the penalty does not reach."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 1)).to(dtype)


def _value_and_grads(critic, fn):
    critic.zero_grad(set_to_none=True)
    value = fn()
    value.sum().backward()
    return value.detach(), [None if p.grad is None else p.grad.clone()
                            for p in critic.parameters()]


@pytest.mark.parametrize("name", PLANNED)
@pytest.mark.parametrize("alpha", ["draw", "number", "tensor"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_a_planned_call_equals_the_general_path_bitwise(planned_calls, name, alpha, reduction,
                                                        dtype):
    critic = _small_critic(dtype)
    torch.manual_seed(1)
    real, fake = torch.randn(6, 5, dtype=dtype), torch.randn(6, 5, dtype=dtype)
    penalty = getattr(gp, name)
    data = {"r1": (real,), "r2": (fake,)}.get(name, (real, fake))
    options = {"reduction": reduction}
    if name not in ("r1", "r2"):
        options["alpha"] = {"draw": None, "number": 0.25,
                            "tensor": torch.linspace(0.1, 0.9, 6, dtype=dtype)}[alpha]

    def call(**extra):
        generator = torch.Generator().manual_seed(7)
        return penalty(critic, *data, generator=generator, **options, **extra) if (
            name not in ("r1", "r2")) else penalty(critic, *data, **options, **extra)

    general = _value_and_grads(critic, lambda: call(kwargs={}))  # kwargs: never planned
    assert planned_calls == []
    _value_and_grads(critic, call)  # passes the checks: the plan is made
    planned = _value_and_grads(critic, call)
    assert planned_calls == [True]
    assert torch.equal(planned[0], general[0])
    for a, b in zip(planned[1], general[1]):
        assert a is not None and b is not None and torch.equal(a, b)


def test_a_planned_call_still_checks_what_the_critic_returns(planned_calls):
    critic = _small_critic()
    x = torch.randn(4, 5, dtype=F64)
    for _ in range(2):
        gp.r1(critic, x)
    assert planned_calls == [True]
    where = "gpreg_torch.r1"
    with pytest.raises(ValueError, match=f"{where}: the critic's output has shape \\(\\)"):
        gp.r1(lambda t: critic(t).sum(), x)
    with pytest.raises(TypeError, match="a dict with keys 'adv', 'cls'"):
        gp.r1(lambda t: {"adv": critic(t), "cls": critic(t)}, x)
    with pytest.raises(RuntimeError, match="does not depend on its input"):
        gp.r1(lambda t: critic(t.detach()), x)
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        gp.r1(critic, x)
    with pytest.raises(RuntimeError, match="mat1 and mat2") as info:
        gp.r1(critic, torch.randn(4, 5, dtype=F64)[:, :4].contiguous())
    assert any("(4, 4)" in n for n in getattr(info.value, "__notes__", []))
    with torch.no_grad():
        assert not gp.r1(critic, x).requires_grad
    assert not gp.r1(critic, x, create_graph=False).requires_grad
    assert gp.r1(critic, x).requires_grad
    critic.insert(1, torch.nn.BatchNorm1d(7).double())  # a BatchNorm after the plan was made
    with pytest.warns(gpreg.BatchNormWarning, match="1"):
        gp.r1(critic, x)
    assert planned_calls[-1] is True  # the BatchNorm was seen by a planned call


def test_a_plan_is_made_only_for_values_that_passed(planned_calls):
    critic = _small_critic()
    x = torch.randn(4, 5, dtype=F64)
    for _ in range(3):
        with pytest.raises(ValueError, match="reduction"):
            gp.wgan_gp(critic, x, x, reduction="avg")
        with pytest.raises(ValueError, match="alpha"):
            gp.wgan_gp(critic, x, x, alpha=torch.rand(3, dtype=F64))
        with pytest.raises(TypeError, match="alpha"):
            gp.wgan_gp(critic, x, x, alpha=True)
    assert planned_calls == []
    weight = np.float64(10.0)  # a NumPy option: read at every call, never planned
    for _ in range(3):
        gp.wgan_gp(critic, x, x, weight=weight)
    assert planned_calls == []


@pytest.mark.parametrize("name", ["wgan_gp", "wgan_lp", "zero_gp", "max_gp", "wgan_div"])
def test_a_planned_call_gives_the_generator_nothing(planned_calls, name):
    """Points from a generator's graph (fake = G(z)) and an alpha that requires grad: the
    planned call cuts both, as the general path does, with the same value and gradients."""
    critic = _small_critic()
    torch.manual_seed(2)
    z = torch.randn(6, 5, dtype=F64, requires_grad=True)
    real = torch.randn(6, 5, dtype=F64)
    alpha = torch.linspace(0.2, 0.8, 6, dtype=F64, requires_grad=True)
    penalty = getattr(gp, name)
    general = _value_and_grads(critic, lambda: penalty(critic, real, 2.0 * z, alpha=alpha,
                                                       kwargs={}))
    _value_and_grads(critic, lambda: penalty(critic, real, 2.0 * z, alpha=alpha))
    planned = _value_and_grads(critic, lambda: penalty(critic, real, 2.0 * z, alpha=alpha))
    assert planned_calls == [True]
    assert z.grad is None and alpha.grad is None
    assert torch.equal(planned[0], general[0])
    assert all(torch.equal(a, b) for a, b in zip(planned[1], general[1]))


@pytest.mark.parametrize("batch", [16, 300])
def test_a_nan_sample_leaves_the_others_norms_alike_wherever_it_is(planned_calls, batch):
    """One NaN input gradient: the other samples' norms are the same whether the NaN is the
    first sample or the sixth, and on a planned call as on the general path (the range check
    leaves NaN out at every batch size; before, a batch above 256 and a NaN first changed
    the others' last bits)."""
    torch.manual_seed(4)
    w = torch.randn(8, dtype=torch.float32)
    critic = lambda x: (x * x * w).sum(1)  # noqa: E731  (a gradient that depends on x)
    base = torch.randn(batch, 8)

    def norms(at: int, **kw):
        x = base.clone()
        x[at, 0] = float("nan")
        out = gp.r1(critic, x, reduction="none", **kw)
        return torch.cat([out[:at], out[at + 1:]])

    general = norms(5, kwargs={})
    norms(5)
    assert torch.equal(norms(5), general)
    assert planned_calls[-1] is True
    first = gp.r1(critic, torch.cat([base[5:6].clone().fill_(float("nan")), base[:5],
                                     base[6:]]), reduction="none", kwargs={})[1:]
    assert torch.equal(first, general)


def test_a_shape_parameter_is_checked_by_type_too(planned_calls):
    critic = _small_critic()
    real, fake = torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    for _ in range(2):
        gp.wgan_div(critic, real, fake, p=1)
    assert planned_calls == [True]
    for p in (True, np.float64(1.0)):
        if p is True:
            with pytest.raises(TypeError, match="p must be a Python number; got bool"):
                gp.wgan_div(critic, real, fake, p=p)
        else:  # a NumPy number passes the check; it is read at every call, never planned
            gp.wgan_div(critic, real, fake, p=p)
    with pytest.raises(ValueError, match="reduction"):
        gp.wgan_gp(critic, real, fake, reduction=np.str_("avg"))


def test_the_batchnorm_warning_points_at_the_callers_line(planned_calls):
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=F64)
    for general in (True, False):
        critic = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7),
                                     torch.nn.Linear(7, 1)).double()
        extra = {"kwargs": {}} if general else {}
        if not general:
            with pytest.warns(gpreg.BatchNormWarning):
                gp.r1(critic, x)  # makes the plan (the warning is once per critic)
            critic = torch.nn.Sequential(*critic).double()
        with pytest.warns(gpreg.BatchNormWarning) as record:
            gp.r1(critic, x, **extra)
        assert record[0].filename == __file__
    assert planned_calls[-1] is True


# --- the input gradient calls the autograd engine directly where nothing can differ ---------


@pytest.mark.parametrize("name", ["wgan_gp", "r1"])
@pytest.mark.parametrize("planned", [True, False])
def test_the_direct_engine_call_equals_torch_autograd_grad_bitwise(monkeypatch, name, planned):
    """The input gradient's direct engine call (``_core._vjp``) gives what
    ``torch.autograd.grad`` gives, bit for bit, in value and every parameter gradient, on
    the planned and on the general path."""
    from gpreg_torch import _core

    def run():
        critic = _small_critic(torch.float32)
        torch.manual_seed(1)
        real, fake = torch.randn(6, 5), torch.randn(6, 5)
        extra = {} if planned else {"kwargs": {}}
        if name == "wgan_gp":
            extra["alpha"] = torch.linspace(0.1, 0.9, 6)
        data = (real, fake) if name == "wgan_gp" else (real,)
        out = [_value_and_grads(critic, lambda: getattr(gp, name)(critic, *data, **extra))
               for _ in range(3)]  # the second and third calls run the plan
        return out[-1]

    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*a, **k):
        calls.append(1)
        return real_grad(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    direct = run()
    assert calls == []  # the engine was called directly
    monkeypatch.setattr(_core, "_run_backward", None)  # as on a PyTorch without it
    through_grad = run()
    assert len(calls) == 3
    assert torch.equal(direct[0], through_grad[0])
    for a, b in zip(direct[1], through_grad[1]):
        assert a is not None and b is not None and torch.equal(a, b)


def test_a_torch_function_mode_sees_the_input_gradient_as_torch_autograd_grad():
    """Under a ``TorchFunctionMode`` (and so for tensor subclasses) the input gradient goes
    through ``torch.autograd.grad``, which hands it to the mode: nothing bypasses it."""
    from torch.overrides import TorchFunctionMode

    seen = []

    class Recording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    critic = _small_critic()
    torch.manual_seed(1)
    x = torch.randn(4, 5, dtype=F64)
    expected = _value_and_grads(critic, lambda: gp.r1(critic, x))
    for _ in range(2):  # the general path, then the plan
        with Recording():
            got = _value_and_grads(critic, lambda: gp.r1(critic, x))
    assert torch.autograd.grad in seen
    assert torch.equal(got[0], expected[0])
    for a, b in zip(got[1], expected[1]):
        assert torch.equal(a, b)
