"""Every row of docs/sampling-modes.md: the documented gpreg call against a float64 PyTorch
reference of the public code's own formula (LynnHo's twelve modes, StudioGAN, StyleGAN2-ADA,
R3GAN, keras-io, TF-GAN, WGAN-div and DRAGAN codes).

The references below are written from each code's formula, with plain ``torch.autograd.grad``
and no gpreg code. Both sides get the same random draws; the value and the gradient with
respect to every critic parameter must agree to float64 round-off. The calls are read from
the page itself, so the page cannot show a call that was not checked here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import gpreg
import gpreg_torch as gp
from gpreg._tolerances import assert_close

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sampling-modes.md"
B, SHAPE = 6, (2, 3, 3)  # image batches (B, C, H, W)
N_CLASSES, COND = 3, 4
DT = torch.float64


def documented_calls() -> list[str]:
    """The gpreg call in the last column of every table row of the page."""
    calls = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|.*\|\s*`(gp\.[^`]+)`\s*\|\s*$", line)
        if m:
            calls.append(m.group(1))
    return calls


# ------------------------------------------------------------------------------------------
# Critics in the calling conventions of the codes (all the same small smooth network)
# ------------------------------------------------------------------------------------------


class Net(nn.Module):
    """flatten -> linear(12) (+ conditioning) -> tanh -> linear(1), float64."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        features = 1
        for s in SHAPE:
            features *= s
        self.body = nn.Linear(features, 12)
        self.embed = nn.Embedding(N_CLASSES, 12)
        self.cond = nn.Linear(COND, 12)
        self.head = nn.Linear(12, 1)
        with torch.no_grad():
            self.head.weight.mul_(4.25)  # gradient norms on both sides of 1
        self.to(DT)

    def score(self, x: torch.Tensor, labels=None, c=None) -> torch.Tensor:
        h = self.body(x.reshape(x.shape[0], -1))
        if labels is not None:
            h = h + self.embed(labels)
        if c is not None:
            h = h + self.cond(c)
        return self.head(torch.tanh(h))


class Plain(Net):
    def forward(self, x):
        return self.score(x)


class StudioGANCritic(Net):
    """``D(x, labels, eval=False)`` returning a dict with the score under ``"adv_output"``."""

    def forward(self, x, labels, eval=False):
        assert eval is False
        out = self.score(x, labels=labels)
        return {"adv_output": out.squeeze(1), "h": out.detach()}


class StyleGANCritic(Net):
    """``D(img, c)``, ``c`` the conditioning vector."""

    def forward(self, img, c):
        return self.score(img, c=c)


class KerasIOCritic(Net):
    """A Keras-style call, ``D(x, training=True)``."""

    def forward(self, x, training=None):
        assert training is True
        return self.score(x)


class TFGANCritic(Net):
    """``discriminator_fn(x, generator_inputs)``."""

    def forward(self, x, generator_inputs):
        return self.score(x, c=generator_inputs)


class ACGANCritic(TFGANCritic):
    """TF-GAN's ACGAN case: a tuple whose first element is the score."""

    def forward(self, x, generator_inputs):
        return super().forward(x, generator_inputs), self.embed.weight.sum() * x[:, :1, 0, 0]


# ------------------------------------------------------------------------------------------
# Their formulas, written out in float64 torch
# ------------------------------------------------------------------------------------------


def per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def grads_at(call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Their ``autograd.grad(D(x), x, grad_outputs=ones, create_graph=True)``, flattened."""
    x = x.detach().requires_grad_(True)
    out = call(x)
    (g,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), create_graph=True)
    return g.reshape(g.shape[0], -1)


def norm_of(g: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    return torch.sqrt((g**2).sum(dim=1) + epsilon)


def lynnho(gp_mode: str, sample_mode: str) -> Callable[..., torch.Tensor]:
    def reference(ns):
        real, fake, a, beta, w, D = (ns[k] for k in ("real", "fake", "a", "beta", "w", "D"))
        if sample_mode == "line":
            x = real + per_sample(a) * (fake - real)
        elif sample_mode == "dragan":
            x_p = real + 0.5 * real.std() * beta  # torch's std: unbiased
            x = real + per_sample(a) * (x_p - real)
        else:
            x = {"real": real, "fake": fake}[sample_mode]
        n = norm_of(grads_at(D, x))
        shapes = {"1-gp": (n - 1) ** 2, "0-gp": n**2, "lp": torch.clamp(n - 1, min=0) ** 2}
        return shapes[gp_mode].mean() * w

    return reference


def studiogan(kind: str) -> Callable[..., torch.Tensor]:
    def reference(ns):
        real, fake, a, u, labels, D = (ns[k] for k in ("real", "fake", "a", "u", "labels", "D"))

        def critic(x):
            return D(x, labels, eval=False)["adv_output"]

        if kind in ("gp", "maxgp"):
            x = per_sample(a) * real + (1 - per_sample(a)) * fake
        elif kind == "dra":
            x = real + per_sample(a) * (0.5 * real.std() * u)
        else:
            x = real
        g = grads_at(critic, x)
        if kind == "r1":
            return 0.5 * (g**2).sum(dim=1).mean() * ns["r1_lambda"]
        n = norm_of(g)
        if kind == "maxgp":
            return torch.max(n**2) * ns["maxgp_lambda"]
        return ((n - 1) ** 2).mean() * ns[f"{kind}_lambda"]

    return reference


def stylegan2_r1(ns):
    D, real, c = ns["D"], ns["real"], ns["c"]
    r1_penalty = (grads_at(lambda x: D(x, c), real) ** 2).sum(dim=1)
    return (r1_penalty * (ns["r1_gamma"] / 2)).mean()


def r3gan(ns):
    D, c = ns["D"], ns["c"]
    r1 = (grads_at(lambda x: D(x, c), ns["real"]) ** 2).sum(dim=1)
    r2 = (grads_at(lambda x: D(x, c), ns["fake"]) ** 2).sum(dim=1)
    return ((ns["Gamma"] / 2) * (r1 + r2)).mean()


def keras_io(ns):
    D, real, fake, a = ns["D"], ns["real"], ns["fake"], ns["a"]
    x = real + per_sample(a) * (fake - real)
    n = norm_of(grads_at(lambda t: D(t, training=True), x))
    return ((n - 1.0) ** 2).mean() * 10.0


def tfgan(one_sided: bool = False, acgan: bool = False, epsilon: float = 0.0):
    def reference(ns):
        D, real, fake, a = ns["D"], ns["real"], ns["fake"], ns["a"]
        x = real + per_sample(a) * (fake - real)

        def critic(t):
            out = D(t, ns["generator_inputs"])
            return out[0] if acgan else out

        penalties = norm_of(grads_at(critic, x), epsilon) / ns["target"] - 1.0
        if one_sided:
            penalties = torch.clamp(penalties, min=0.0)
        return (ns["weights"] * penalties**2).mean()  # weighted mean, one weight for all

    return reference


def pytorch_gan_wgan_div(ns):
    D, k, p = ns["D"], 2.0, 6.0
    real_norm = (grads_at(D, ns["real"]) ** 2).sum(dim=1) ** (p / 2)
    fake_norm = (grads_at(D, ns["fake"]) ** 2).sum(dim=1) ** (p / 2)
    return (real_norm + fake_norm).mean() * k / 2


def authors_wgan_div(ns):
    D, real, fake, a = ns["D"], ns["real"], ns["fake"], ns["a"]
    x = real + per_sample(a) * (fake - real)
    return 10.0 * ((grads_at(D, x) ** 2).sum(dim=1) ** 3).mean()


def dragan_reference_code(ns):
    D, real, a, u = ns["D"], ns["real"], ns["a"], ns["u"]
    x_p = real + 0.5 * real.std(correction=0) * u  # NumPy's x.std(): population
    x = real + per_sample(a) * (x_p - real)
    return 10.0 * ((norm_of(grads_at(D, x)) - 1.0) ** 2).mean()


def dragan_paper(ns):
    D, real, z, c = ns["D"], ns["real"], ns["z"], ns["c_dragan"]
    x = real + c**0.5 * z  # delta ~ N(0, c I)
    return 10.0 * ((norm_of(grads_at(D, x)) - 1.0) ** 2).mean()


#: call on the page -> (critic convention, reference, draws of ``a``)
ROWS: dict[str, tuple[type[Net], Callable[..., torch.Tensor], str]] = {
    "gp.wgan_gp(D, real, fake, weight=w, alpha=1 - a)": (Plain, lynnho("1-gp", "line"), "u"),
    'gp.gradient_penalty(D, real, shape="two_sided", weight=w)':
        (Plain, lynnho("1-gp", "real"), "u"),
    'gp.gradient_penalty(D, fake, shape="two_sided", weight=w)':
        (Plain, lynnho("1-gp", "fake"), "u"),
    "gp.dragan(D, real, weight=w, ddof=1, alpha=a, noise=beta)":
        (Plain, lynnho("1-gp", "dragan"), "u"),
    "gp.zero_gp(D, real, fake, weight=w, alpha=1 - a)": (Plain, lynnho("0-gp", "line"), "u"),
    "gp.r1(D, real, gamma=2 * w)": (Plain, lynnho("0-gp", "real"), "u"),
    "gp.r2(D, fake, gamma=2 * w)": (Plain, lynnho("0-gp", "fake"), "u"),
    'gp.dragan(D, real, weight=w, ddof=1, shape="squared", alpha=a, noise=beta)':
        (Plain, lynnho("0-gp", "dragan"), "u"),
    "gp.wgan_lp(D, real, fake, weight=w, alpha=1 - a)": (Plain, lynnho("lp", "line"), "u"),
    'gp.gradient_penalty(D, real, shape="one_sided", weight=w)':
        (Plain, lynnho("lp", "real"), "u"),
    'gp.gradient_penalty(D, fake, shape="one_sided", weight=w)':
        (Plain, lynnho("lp", "fake"), "u"),
    'gp.dragan(D, real, weight=w, ddof=1, shape="one_sided", alpha=a, noise=beta)':
        (Plain, lynnho("lp", "dragan"), "u"),
    'gp.wgan_gp(D, real, fake, weight=gp_lambda, alpha=a, args=(labels,), kwargs={"eval": '
    'False}, output="adv_output")': (StudioGANCritic, studiogan("gp"), "u"),
    'gp.dragan(D, real, weight=dra_lambda, ddof=1, alpha=a, noise=u, args=(labels,), '
    'kwargs={"eval": False}, output="adv_output")': (StudioGANCritic, studiogan("dra"), "u"),
    'gp.max_gp(D, real, fake, weight=maxgp_lambda, alpha=a, args=(labels,), kwargs={"eval": '
    'False}, output="adv_output")': (StudioGANCritic, studiogan("maxgp"), "u"),
    'gp.r1(D, real, gamma=r1_lambda, args=(labels,), kwargs={"eval": False}, '
    'output="adv_output")': (StudioGANCritic, studiogan("r1"), "u"),
    "gp.r1(D, real, gamma=r1_gamma, args=(c,))": (StyleGANCritic, stylegan2_r1, "u"),
    "gp.r1(D, real, gamma=Gamma, args=(c,)) + gp.r2(D, fake, gamma=Gamma, args=(c,))":
        (StyleGANCritic, r3gan, "u"),
    'gp.wgan_gp(D, real, fake, weight=10.0, alpha=1 - a, kwargs={"training": True})':
        (KerasIOCritic, keras_io, "normal"),  # keras-io draws a from N(0, 1)
    "gp.wgan_gp(D, real, fake, weight=weights, target=target, ratio=True, alpha=1 - a, "
    "args=(generator_inputs,))": (TFGANCritic, tfgan(), "u"),
    "gp.wgan_lp(D, real, fake, weight=weights, target=target, ratio=True, alpha=1 - a, "
    "args=(generator_inputs,))": (TFGANCritic, tfgan(one_sided=True), "u"),
    "gp.wgan_gp(D, real, fake, weight=weights, target=target, ratio=True, alpha=1 - a, "
    "args=(generator_inputs,), output=0)": (ACGANCritic, tfgan(acgan=True), "u"),
    'gp.wgan_div(D, real, fake, points="real_fake")': (Plain, pytorch_gan_wgan_div, "u"),
    "gp.wgan_div(D, real, fake, k=10.0, alpha=1 - a)": (Plain, authors_wgan_div, "u"),
    "gp.dragan(D, real, alpha=a, noise=u)": (Plain, dragan_reference_code, "u"),
    'gp.dragan(D, real, perturbation="gaussian", c=c, noise=z)': (Plain, dragan_paper, "u"),
}


def namespace(critic: type[Net], draws: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(B, *SHAPE, generator=g, dtype=DT)
    fake = 0.5 + 1.5 * torch.randn(B, *SHAPE, generator=g, dtype=DT)
    a = torch.rand(B, generator=g, dtype=DT) if draws == "u" else torch.randn(
        B, generator=g, dtype=DT)
    c_dragan = 0.3
    ns = {
        "gp": gp, "gpreg": gpreg, "D": critic(seed),
        "real": real, "fake": fake, "a": a,
        "beta": torch.rand(B, *SHAPE, generator=g, dtype=DT),
        "u": torch.rand(B, *SHAPE, generator=g, dtype=DT),
        "z": torch.randn(B, *SHAPE, generator=g, dtype=DT),
        "labels": torch.randint(0, N_CLASSES, (B,), generator=g),
        "generator_inputs": torch.randn(B, COND, generator=g, dtype=DT),
        "w": 10.0, "gp_lambda": 10.0, "dra_lambda": 5.0, "maxgp_lambda": 2.0,
        "r1_lambda": 3.0, "r1_gamma": 0.5, "Gamma": 2.0, "weights": 2.3, "target": 1.1,
        "c_dragan": c_dragan,
    }
    ns["c"] = torch.randn(B, COND, generator=g, dtype=DT)  # StyleGAN's conditioning ...
    if critic is Plain:
        ns["c"] = c_dragan  # ... or, for the DRAGAN rows, the paper's variance c
    return ns


def value_and_grads(D: nn.Module, value: torch.Tensor) -> list[torch.Tensor]:
    params = list(D.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def test_every_documented_call_is_tested():
    calls = documented_calls()
    assert len(calls) == len(set(calls)) == len(ROWS), "a call is missing or duplicated"
    assert set(calls) == set(ROWS)


@pytest.mark.parametrize("call", list(ROWS), ids=[f"row{i:02d}" for i in range(len(ROWS))])
def test_row_matches_the_codes_own_formula(call):
    critic, reference, draws = ROWS[call]
    ns = namespace(critic, draws)
    expected = reference(ns)
    got = eval(call, dict(ns))  # the page's call, verbatim
    assert got.dtype == DT and got.shape == ()
    assert_close(got.detach(), expected.detach(), "float64", err_msg=f"{call}: value")
    for p, g_got, g_ref in zip(
        ns["D"].parameters(), value_and_grads(ns["D"], got), value_and_grads(ns["D"], expected)
    ):
        assert_close(g_got, g_ref, "float64", err_msg=f"{call}: weight gradient {p.shape}")
    assert expected.item() > 0


def test_norms_straddle_one_so_the_one_sided_rows_are_not_trivial():
    ns = namespace(Plain, "u")
    for x in (ns["real"], ns["fake"]):
        n = gp.grad_norm(ns["D"], x)
        assert (n > 1).any() and (n < 1).any(), n


def test_tf_gan_epsilon_only_biases_the_value_slightly():
    """TF-GAN's 1e-10 inside the square root against gpreg's exact norm (the rows above
    compare with epsilon 0): the values differ, by less than 1e-8 relative."""
    call = ("gp.wgan_gp(D, real, fake, weight=weights, target=target, ratio=True, "
            "alpha=1 - a, args=(generator_inputs,))")
    ns = namespace(TFGANCritic, "u")
    theirs = tfgan(epsilon=1e-10)(ns)
    ours = eval(call, dict(ns))
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=0.0)
    assert ours != theirs
