"""Bad input gets a clear error: what was wrong, what was expected, what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gpreg_torch as gp
from gpreg import UnknownPenaltyError

critic = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
real = torch.randn(4, 3)
fake = torch.randn(4, 3)


def test_real_fake_shapes_differ_names_both():
    with pytest.raises(ValueError, match=r"real \(4, 3\) and fake \(5, 3\)"):
        gp.wgan_gp(critic, real, torch.randn(5, 3))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_points(dtype):
    with pytest.raises(TypeError, match="need floating-point points"):
        gp.r1(critic, torch.ones(4, 3, dtype=dtype))


def test_points_must_be_tensors():
    with pytest.raises(TypeError, match="torch.as_tensor"):
        gp.r1(critic, np.ones((4, 3), dtype=np.float32))


def test_mixed_dtypes():
    with pytest.raises(TypeError, match="different dtypes"):
        gp.wgan_gp(critic, real, fake.double())


@pytest.mark.parametrize("shape", [(3,), (4, 2), (1,), (2, 2)])
def test_alpha_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"alpha has shape .*expected one value per sample"):
        gp.wgan_gp(critic, real, fake, alpha=torch.rand(shape))


def test_noise_wrong_shape():
    with pytest.raises(ValueError, match="noise has shape"):
        gp.dragan(critic, real, noise=torch.rand(4, 2))


def test_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        gp.r1(critic, torch.empty(0, 3))


def test_scalar_points():
    with pytest.raises(ValueError, match="scalar"):
        gp.r1(lambda x: x, torch.tensor(1.0))


def test_output_not_led_by_batch():
    with pytest.raises(ValueError, match=r"output has shape \(\).*batch size 4"):
        gp.r1(lambda x: critic(x).mean(), real)
    with pytest.raises(ValueError, match=r"output has shape \(1, 4\)"):
        gp.r1(lambda x: critic(x).T, real)


def test_output_not_a_tensor():
    with pytest.raises(TypeError, match="returned a float"):
        gp.r1(lambda x: float(critic(x).detach().sum()), real)
    with pytest.raises(TypeError, match="returned a ndarray"):
        gp.r1(lambda x: critic(x).detach().numpy(), real)


def test_critic_detaching_its_input():
    with pytest.raises(RuntimeError, match="does not depend on its input.*detach"):
        gp.wgan_gp(lambda x: critic(x.detach()), real, fake)
    with pytest.raises(RuntimeError, match="does not depend on its input"):
        gp.r1(lambda x: critic(real), real)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="unknown reduction 'avg'.*'mean', 'sum', 'max', 'none'"):
        gp.wgan_gp(critic, real, fake, reduction="avg")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
@pytest.mark.parametrize(("name", "key"), [("wgan_gp", "weight"), ("r1", "gamma"),
                                           ("wgan_gp", "target"), ("dragan", "c")])
def test_bad_scalars(name, key, bad):
    fn = gp.get_penalty(name)
    args = (real, fake) if name == "wgan_gp" else (real,)
    with pytest.raises(ValueError, match=f"{key} must be a finite, non-negative number"):
        fn(critic, *args, **{key: bad})


def test_ratio_target_zero():
    with pytest.raises(ValueError, match="target must be a finite, positive number"):
        gp.wgan_gp(critic, real, fake, target=0.0, ratio=True)


def test_unknown_penalty_lists_known_names():
    with pytest.raises(UnknownPenaltyError, match="unknown penalty 'wgan'.*wgan_gp.*r1.*dragan"):
        gp.get_penalty("wgan")
    with pytest.raises(KeyError):
        gp.get_penalty("wgan")


def test_unknown_shape_in_generic_entry():
    with pytest.raises(ValueError, match="unknown shape 'cubic'"):
        gp.gradient_penalty(critic, real, shape="cubic")


def test_messages_name_the_function():
    with pytest.raises(ValueError, match=r"^gpreg_torch\.dragan: "):
        gp.dragan(critic, real, weight=-1.0)


def test_check_finite_names_the_penalty_and_the_samples():
    bad = real.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"gpreg_torch.wgan_gp: an evaluation point .* "
                                                 r"sample\(s\) 2\."):
        gp.wgan_gp(critic, bad, fake, check_finite=True)
    with pytest.raises(FloatingPointError, match=r"critic's output .* sample\(s\) 0, 3"):
        gp.r1(lambda x: critic(x) * torch.tensor([[float("inf")], [1], [1], [float("nan")]]),
              real, check_finite=True)
    assert torch.isnan(gp.wgan_gp(critic, bad, fake))  # off by default: NaN stays visible


def test_batchnorm_in_training_mode_warns_once_per_critic():
    import warnings

    from gpreg import BatchNormWarning

    bn_critic = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.warns(BatchNormWarning, match=r"batch normalization that uses batch "
                                              r"statistics \(1\).*LayerNorm or GroupNorm"):
        gp.r1(bn_critic, real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gp.r1(bn_critic, real)  # once per critic
        gp.r1(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).eval(), real)


def test_batchnorm_couples_samples():
    """Why the warning exists: in training mode sample 0's score depends on sample 1."""
    torch.manual_seed(0)
    bn_critic = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    x = torch.randn(4, 3, requires_grad=True)
    (g,) = torch.autograd.grad(bn_critic(x)[0, 0], x)
    assert g[1:].abs().sum() > 1e-6
    bn_critic.eval()
    (g,) = torch.autograd.grad(bn_critic(x)[0, 0], x)
    assert g[1:].abs().sum() == 0
