"""Property-based tests of gpreg_torch on random small critics (hypothesis, bounded).

Agreement with the independent float64 hyper-dual reference (value, per-sample values,
norms, every parameter gradient) and the invariants every gradient penalty must satisfy,
whatever the critic: per-sample independence, permutation equivariance, output scaling,
wgan_lp <= wgan_gp, R1/R2 as zero-GP at alpha = 1/0, and no gradient into the points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _property_support import (
    PENALTIES,
    REDUCTIONS,
    VARIANTS,
    bounded,
    cases,
    check_run,
    data_roles,
    penalty_options,
    problems,
    random_keys,
    reference_case,
    reference_norms,
    target_for,
)
from hypothesis import given
from hypothesis import strategies as st

import gpreg_torch as gp
from gpreg._tolerances import assert_close
from gpreg_torch._fixture import build_critic, run_case

DTYPES = st.sampled_from(("float64", "float32"))


def tensors(parts, dtype):
    return tuple(torch.as_tensor(p, dtype=getattr(torch, dtype)) for p in parts)


def one(parts):
    return parts[0] if len(parts) == 1 else parts


def call(name, critic, real, fake, **kw):
    """Any built-in with the data arguments its points need (``real``/``fake`` part tuples)."""
    data = {"real": one(real), "fake": one(fake)}
    return gp.get_penalty(name)(critic, *(data[r] for r in data_roles(name)), **kw)


def randomness(name, problem, dtype, options=None):
    """Explicit ``alpha`` (and ``noise``) keywords for ``name`` from the drawn problem."""
    draws = {"alpha": torch.as_tensor(problem.alpha, dtype=getattr(torch, dtype)),
             "noise": one(tensors(problem.noise, dtype))}
    return {k: draws[k] for k in random_keys(name, options or {})}


def resolved(name, problem, options):
    """``options`` with the target resolved against the reference norms (which also keeps
    kinked activations away from their kinks at the points ``name`` evaluates)."""
    options = dict(options)
    _, norms, _ = reference_norms(problem, name, options)
    if "target_factor" in options:
        options["target"] = target_for(norms, options.pop("target_factor"))
    return options


def param_grads(value, critic):
    grads = torch.autograd.grad(value, list(critic.parameters()), allow_unused=True)
    return [np.zeros(tuple(p.shape)) if g is None else g.double().numpy()
            for g, p in zip(grads, critic.parameters())]


# --- agreement with the float64 reference ---------------------------------------------------

@bounded(25)
@given(drawn=cases(), dtype=DTYPES)
def test_matches_reference(drawn, dtype):
    problem, case = drawn
    got = run_case(problem.fixture((case,)), case, getattr(torch, dtype))
    check_run(got, case, dtype, f"torch/{dtype}/{case.id}/{problem.describe()}")


@pytest.mark.parametrize(("name", "options"), VARIANTS,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for n, o in VARIANTS])
@bounded(6)
@given(problem=problems(), reduction=st.sampled_from(REDUCTIONS), dtype=DTYPES)
def test_variants_match_reference(name, options, problem, reduction, dtype):
    case = reference_case(problem, name, options, reduction)
    got = run_case(problem.fixture((case,)), case, getattr(torch, dtype))
    check_run(got, case, dtype, f"torch/{dtype}/{case.id}/{case.kwargs}/{problem.describe()}")


# --- invariants -----------------------------------------------------------------------------

@bounded(20)
@given(problem=problems(), data=st.data(), dtype=DTYPES)
def test_batch_is_the_per_sample_penalties(problem, data, dtype):
    """reduction="none" is the stack of the penalties of each sample alone; mean, sum and
    max reduce it; the parameter gradient of the mean is the mean of the samples' gradients.
    (Not DRAGAN: its sigma is a statistic of the whole batch.)"""
    name = data.draw(st.sampled_from([p for p in PENALTIES if p != "dragan"]), label="penalty")
    options = resolved(name, problem, data.draw(penalty_options(name)))
    critic = build_critic(problem.fixture(), getattr(torch, dtype))
    real, fake = tensors(problem.real, dtype), tensors(problem.fake, dtype)
    kw = {**options, **randomness(name, problem, dtype, options)}
    per_sample = call(name, critic, real, fake, **kw, reduction="none")
    assert per_sample.shape == (problem.batch,)
    singles = []
    single_grads = []
    for i in range(problem.batch):
        sample = problem.take([i])
        value = call(name, critic, tensors(sample.real, dtype), tensors(sample.fake, dtype),
                     **options, **randomness(name, sample, dtype, options), reduction="none")
        assert value.shape == (1,)
        singles.append(value.detach())
        single_grads.append(param_grads(value.sum(), critic))
    assert_close(torch.cat(singles), per_sample.detach(), dtype, err_msg="stacked samples")
    for reduction, reduce in (("mean", torch.mean), ("sum", torch.sum), ("max", torch.max)):
        value = call(name, critic, real, fake, **kw, reduction=reduction)
        assert value.shape == ()
        assert_close(value.detach(), reduce(per_sample.detach()), dtype, err_msg=reduction)
    mean_grads = param_grads(call(name, critic, real, fake, **kw, reduction="mean"), critic)
    for k, got in enumerate(mean_grads):
        expected = np.mean([g[k] for g in single_grads], axis=0)
        assert_close(got, expected, dtype, err_msg=f"gradient of the mean, parameter {k}")


@bounded(20)
@given(problem=problems(), data=st.data(), dtype=DTYPES)
def test_permuting_the_batch_permutes_the_samples(problem, data, dtype):
    name = data.draw(st.sampled_from(PENALTIES), label="penalty")
    options = resolved(name, problem, data.draw(penalty_options(name)))
    perm = np.array(data.draw(st.permutations(range(problem.batch)), label="permutation"))
    critic = build_critic(problem.fixture(), getattr(torch, dtype))
    before = call(name, critic, tensors(problem.real, dtype), tensors(problem.fake, dtype),
                  **options, **randomness(name, problem, dtype, options), reduction="none")
    moved = problem.take(perm)
    after = call(name, critic, tensors(moved.real, dtype), tensors(moved.fake, dtype),
                 **options, **randomness(name, moved, dtype, options), reduction="none")
    assert_close(after.detach(), before.detach()[torch.as_tensor(perm)], dtype,
                 err_msg=f"{name}: permuted batch")


@bounded(15)
@given(problem=problems(), scale=st.floats(-8.0, 8.0).filter(lambda a: abs(a) > 0.05),
       dtype=DTYPES)
def test_scaling_the_output_scales_every_norm(problem, scale, dtype):
    """grad_norm(a * D) = |a| grad_norm(D), sample by sample; zero_gp scales by a^2."""
    reference_norms(problem, "r1")  # keeps kinked activations away from their kinks
    critic = build_critic(problem.fixture(), getattr(torch, dtype))

    def scaled(*parts):
        return scale * critic(*parts)

    real = tensors(problem.real, dtype)
    norms = gp.grad_norm(critic, one(real), create_graph=False)
    assert norms.shape == (problem.batch,)
    assert_close(gp.grad_norm(scaled, one(real), create_graph=False), abs(scale) * norms, dtype)
    alpha = torch.ones(problem.batch, dtype=getattr(torch, dtype))
    fake = tensors(problem.fake, dtype)
    plain = gp.zero_gp(critic, one(real), one(fake), alpha=alpha, reduction="none").detach()
    assert_close(gp.zero_gp(scaled, one(real), one(fake), alpha=alpha,
                            reduction="none").detach(), scale**2 * plain, dtype)


@bounded(20)
@given(problem=problems(), factor=st.sampled_from((0.5, 0.75, 1.5, 2.0)),
       ratio=st.booleans(), dtype=DTYPES)
def test_wgan_lp_is_wgan_gp_above_the_target_and_zero_below(problem, factor, ratio, dtype):
    """wgan_lp <= wgan_gp sample by sample, equal where n >= target, zero where n < target."""
    _, ref_norms, _ = reference_norms(problem, "wgan_gp")
    target = target_for(ref_norms, factor)
    critic = build_critic(problem.fixture(), getattr(torch, dtype))
    real, fake = tensors(problem.real, dtype), tensors(problem.fake, dtype)
    kw = {"target": target, "ratio": ratio, "reduction": "none",
          **randomness("wgan_gp", problem, dtype)}
    lp = gp.wgan_lp(critic, one(real), one(fake), **kw).detach()
    two_sided = gp.wgan_gp(critic, one(real), one(fake), **kw).detach()
    assert torch.all(lp <= two_sided), (lp, two_sided)
    above = torch.as_tensor(ref_norms >= target)  # never within 2 % of the target
    assert_close(lp[above], two_sided[above], dtype, err_msg="n >= target")
    assert torch.all(lp[~above] == 0), lp


@bounded(15)
@given(problem=problems(), gamma=st.floats(0.1, 20.0), reduction=st.sampled_from(REDUCTIONS),
       dtype=DTYPES)
def test_r1_and_r2_are_zero_gp_at_alpha_one_and_zero(problem, gamma, reduction, dtype):
    """r1(gamma = 2 w) = zero_gp(w, alpha = 1) and r2(gamma = 2 w) = zero_gp(w, alpha = 0):
    the value and every parameter gradient."""
    reference_norms(problem, "r1")
    reference_norms(problem, "r2")
    critic = build_critic(problem.fixture(), getattr(torch, dtype))
    real, fake = one(tensors(problem.real, dtype)), one(tensors(problem.fake, dtype))
    for at_real, alpha in ((True, 1.0), (False, 0.0)):
        if at_real:
            reg = gp.r1(critic, real, gamma=gamma, reduction=reduction)
        else:
            reg = gp.r2(critic, fake, gamma=gamma, reduction=reduction)
        zero = gp.zero_gp(critic, real, fake, weight=gamma / 2, alpha=alpha, reduction=reduction)
        where = "r1" if at_real else "r2"
        assert_close(reg.detach(), zero.detach(), dtype, err_msg=f"{where}: value")
        for k, (a, b) in enumerate(zip(param_grads(reg, critic), param_grads(zero, critic))):
            assert_close(a, b, dtype, err_msg=f"{where}: gradient of parameter {k}")


@bounded(15)
@given(problem=problems(), name=st.sampled_from(PENALTIES), drawn=st.booleans(),
       dtype=DTYPES)
def test_points_never_receive_a_gradient(problem, name, drawn, dtype):
    """real and fake with requires_grad=True, fake made by a generator parameter: after
    backward the critic's parameters have gradients, the points and the generator none."""
    td = getattr(torch, dtype)
    critic = build_critic(problem.fixture(), td)
    real = tuple(r.requires_grad_() for r in tensors(problem.real, dtype))
    generator = torch.nn.Parameter(torch.ones((), dtype=td))
    fake = tuple(generator * f for f in tensors(problem.fake, dtype))
    kw = randomness(name, problem, dtype)
    if drawn and kw:  # alpha (and noise) from the penalty's own draw instead
        kw = {"generator": torch.Generator().manual_seed(0)}
    value = call(name, critic, real, fake, **kw)
    value.backward()
    assert all(r.grad is None for r in real)
    assert generator.grad is None
    assert any(p.grad is not None for p in critic.parameters())
