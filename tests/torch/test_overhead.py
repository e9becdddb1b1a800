"""What the per-call fast paths (issue 16) remember is honest: the checked options, the checked
points' signatures and the parameters the penalty does not reach are taken from an earlier call
only where nothing that decides them changed, and every check still fires on a call that
differs. Expected values are closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
