"""Sampling checks for gpreg_torch: alpha is U[0, 1) per sample, DRAGAN's noise is U[0, 1)
elementwise with real's shape and enters as alpha_i * c * sigma * noise, and a seed
reproduces a penalty.

A recording critic recovers the evaluation points exactly (real = 1, fake = 0 gives the point
alpha_i). The statistical bounds are deterministic: the seeds are fixed, and the bounds (KS
statistic < 0.02 for 20000 draws, against a 0.1 % critical value of 0.0138) fail only for a
wrong distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _property_support import check_normal, check_uniform, dragan_ddof_case, plus_minus_one

import gpreg_torch as gp
from gpreg import fixtures
from gpreg._tolerances import assert_close
from gpreg_torch._fixture import build_critic, tensors

N = 20000
DTYPES = [torch.float32, torch.float64]


class Recorder:
    """A critic that records the points it is called with: D(x) = sum of all elements."""

    def __init__(self):
        self.calls = []

    def __call__(self, *parts):
        self.calls.append([p.detach().double().numpy().copy() for p in parts])
        return sum(p.reshape(p.shape[0], -1).sum(dim=1) for p in parts)

    @property
    def points(self):
        assert len(self.calls) == 1, f"critic called {len(self.calls)} times"
        return self.calls[0]


def generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["wgan_gp", "wgan_lp", "zero_gp", "max_gp", "wgan_div"])
def test_alpha_is_uniform_per_sample(name, dtype):
    rec = Recorder()
    fn = gp.get_penalty(name)
    fn(rec, torch.ones(N, 1, dtype=dtype), torch.zeros(N, 1, dtype=dtype),
       generator=generator(2024))
    (alpha,) = rec.points
    check_uniform(alpha, f"{name} alpha ({dtype})")


@pytest.mark.parametrize("batch", [2, 3, 8, 64])
def test_one_alpha_per_sample_shared_by_every_element_and_part(batch):
    """Images and multi-part inputs: sample i's point is alpha_i in every element of every
    part (no alpha per element, none per batch)."""
    for seed in range(5):
        rec = Recorder()
        real = (torch.ones(batch, 3, 4, 2), torch.ones(batch, 5))
        fake = (torch.zeros(batch, 3, 4, 2), torch.zeros(batch, 5))
        gp.wgan_gp(rec, real, fake, generator=generator(seed))
        image, vector = rec.points
        alpha = image[:, 0, 0, 0]
        assert np.all(image == alpha[:, None, None, None])
        assert np.all(vector == alpha[:, None])
        assert np.all((alpha >= 0) & (alpha < 1))
        assert len(np.unique(alpha)) == batch, f"alpha repeats within a batch: {alpha}"


def test_alpha_from_the_global_generator_is_reproducible():
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        rec = Recorder()
        gp.wgan_gp(rec, torch.ones(1000, 2), torch.zeros(1000, 2))
        draws.append(rec.points[0][:, 0])
    np.testing.assert_array_equal(draws[0], draws[1])
    check_uniform(draws[0], "alpha (global generator)", n_min=1000)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dragan_noise_is_uniform_elementwise_with_reals_shape(dtype):
    """alpha = 1, c = 1 and a real batch with mean 0 and population std exactly 1: the
    perturbation x - real is the noise itself."""
    shape = (1000, 2, 3, 4)
    real = torch.as_tensor(plus_minus_one(shape), dtype=dtype)
    rec = Recorder()
    gp.dragan(rec, real, c=1.0, alpha=torch.ones(shape[0], dtype=dtype),
              generator=generator(99))
    (points,) = rec.points
    noise = points - real.double().numpy()
    assert noise.shape == shape
    eps = float(torch.finfo(dtype).eps)
    check_uniform(np.clip(noise, 0.0, 1.0 - eps), f"dragan noise ({dtype})")
    assert np.all(noise > -2 * eps) and np.all(noise < 1 + 2 * eps)
    # one draw per element: it varies within every sample and along every axis
    flat = noise.reshape(shape[0], -1)
    assert np.all(flat.std(axis=1) > 0.1)
    for axis in range(1, 4):
        assert np.all(noise.std(axis=axis) > 0)


def test_dragan_alpha_is_uniform_per_sample():
    """noise = 1, c = 1, sigma = 1: the perturbation of sample i is alpha_i everywhere."""
    shape = (N, 2)
    real = torch.as_tensor(plus_minus_one(shape))
    rec = Recorder()
    gp.dragan(rec, real, c=1.0, noise=torch.ones(shape, dtype=real.dtype),
              generator=generator(5))
    delta = rec.points[0] - real.numpy()
    np.testing.assert_allclose(delta[:, 0], delta[:, 1], rtol=0, atol=1e-15)
    check_uniform(np.clip(delta[:, 0], 0.0, 1.0 - 1e-16), "dragan alpha")


def test_dragan_draws_alpha_and_noise_independently():
    """Both drawn: the perturbation alpha_i * u_ij has mean 1/4 overall and in every column
    (1/3 in a column whose noise repeated the alpha stream)."""
    shape = (N, 3)
    real = torch.as_tensor(plus_minus_one(shape))
    rec = Recorder()
    gp.dragan(rec, real, c=1.0, generator=generator(11))
    delta = rec.points[0] - real.numpy()
    assert abs(delta.mean() - 0.25) < 0.01
    for column in range(shape[1]):
        assert abs(delta[:, column].mean() - 0.25) < 0.01, column
        corr = np.corrcoef(delta[:, column], delta[:, (column + 1) % shape[1]])[0, 1]
        assert 0.3 < corr < 0.5  # shared alpha_i: 3/7 for independent uniforms


@pytest.mark.parametrize("c", [0.1, 0.5, 2.0])
def test_dragan_perturbation_is_alpha_c_sigma_noise(c):
    """x_i = real_i + alpha_i * c * sigma * noise_i with sigma the population std (ddof 0)
    of the whole real batch (samples of very different scales tell it from per-sample or
    ddof-1 statistics), for every part separately."""
    rng = np.random.default_rng(3)
    scales = np.array([0.5, 1.0, 4.0])[:, None, None]
    real = (scales * rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 4)))
    noise = (rng.uniform(size=(3, 2, 3)), rng.uniform(size=(3, 4)))
    alpha = rng.uniform(size=3)
    rec = Recorder()
    gp.dragan(rec, tensors(real, torch.float64), c=c, alpha=torch.as_tensor(alpha),
              noise=tensors(noise, torch.float64))
    for got, r, u in zip(rec.points, real, noise):
        a = alpha.reshape((-1,) + (1,) * (r.ndim - 1))
        assert_close(got, r + a * c * np.std(r) * u, "float64")


@pytest.mark.parametrize("ddof", [0, 1])
def test_dragan_sigma_has_the_requested_degrees_of_freedom(ddof):
    real, noise, alpha, expected = dragan_ddof_case(ddof)
    rec = Recorder()
    gp.dragan(rec, torch.as_tensor(real), ddof=ddof, alpha=torch.as_tensor(alpha),
              noise=torch.as_tensor(noise))
    assert_close(rec.points[0], expected, "float64")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dragan_gaussian_noise_is_normal_with_variance_c(dtype):
    """The paper's delta ~ N(0, c I): zero real batch and c = 0.25, so the points are delta,
    with standard deviation sqrt(c) = 0.5 (a KS test of N(0, c))."""
    rec = Recorder()
    gp.dragan(rec, torch.zeros((N, 2), dtype=dtype), perturbation="gaussian", c=0.25,
              generator=generator(8))
    check_normal(rec.points[0], 0.5, f"dragan gaussian delta ({dtype})")


def test_wgan_div_real_fake_evaluates_real_then_fake():
    """points="real_fake": two critic calls, at real and at fake exactly; no alpha drawn."""
    calls = []

    def critic(x):
        calls.append(x.detach().numpy().copy())
        return (x * x).sum(dim=1)

    real, fake = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    g = generator(1)
    state = g.get_state()
    gp.wgan_div(critic, real, fake, points="real_fake", generator=g)
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0], real.numpy())
    np.testing.assert_array_equal(calls[1], fake.numpy())


# --- the same seed reproduces the penalty ---------------------------------------------------

def _mlp():
    fixture = next(f for f in fixtures.load() if f.name == "mlp_tanh")
    critic = build_critic(fixture)
    real = torch.as_tensor(fixture.real[0])
    fake = torch.as_tensor(fixture.fake[0])
    return critic, real, fake


@pytest.mark.parametrize("name", ["wgan_gp", "wgan_lp", "zero_gp", "max_gp", "dragan",
                                  "wgan_div"])
def test_same_seed_same_penalty_other_seed_other_penalty(name):
    critic, real, fake = _mlp()
    fn = gp.get_penalty(name)
    args = (real,) if name == "dragan" else (real, fake)
    kw = {"target": 0.5} if name == "wgan_lp" else {}

    def value(seed):
        v = fn(critic, *args, **kw, generator=generator(seed), reduction="none")
        grads = torch.autograd.grad(v.sum(), list(critic.parameters()), allow_unused=True)
        return v.detach().numpy(), [None if g is None else g.numpy() for g in grads]

    first, again, other = value(1), value(1), value(2)
    np.testing.assert_array_equal(first[0], again[0])
    for a, b in zip(first[1], again[1]):
        np.testing.assert_array_equal(a, b)
    changed = first[0] != other[0]
    both_zero = (first[0] == 0) & (other[0] == 0)  # wgan_lp below its target
    assert changed.any() and np.all(changed | both_zero), (first[0], other[0])
