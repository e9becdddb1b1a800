"""Real critics without closures: ``args=``, ``kwargs=`` and ``output=`` (issue: conditioning,
structured outputs, multi-input critics), against a hand-written float64 reference."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gpreg_torch as gp
from gpreg import BUILTIN_NAMES
from gpreg._tolerances import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import SHAPES, penalty

B = 6


class StyleD(nn.Module):
    """A StyleGAN2-ADA-shaped critic: ``D(img, c)``, c mapped to an embedding that projects
    the image features (its 'cmap')."""

    def __init__(self, c_dim: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 8)
        self.mapping = nn.Linear(c_dim, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(nn.functional.softplus(self.conv(img)).flatten(1)))
        cmap = self.mapping(c)
        return (self.out(h) * cmap).sum(dim=1, keepdim=True) / 8 ** 0.5


class Projection(nn.Module):
    """A projection-conditional critic (Miyato & Koyama): ``D(x, y)`` with integer labels."""

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.ELU())
        self.head = nn.Linear(7, 1)
        self.embed = nn.Embedding(n_classes, 7)

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        h = self.body(x)
        return scale * (self.head(h).squeeze(1) + (self.embed(y) * h).sum(dim=1))


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor


class DictD(nn.Module):
    """StudioGAN-style: a dict with the adversarial score and other heads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 6), nn.Softplus())
        self.adv = nn.Linear(6, 1)
        self.aux = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"h": h, "adv_output": self.adv(h), "cls_output": self.aux(h)}


def data(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, *shape, generator=g, dtype=torch.float64),
            torch.randn(B, *shape, generator=g, dtype=torch.float64))


def fixed(shape_of_real: tuple[int, ...]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"alpha": torch.rand(B, generator=g, dtype=torch.float64),
            "noise": torch.rand(B, *shape_of_real, generator=g, dtype=torch.float64)}


def gpreg_call(name, critic, real, fake, **kw):
    fn = gp.get_penalty(name)
    where = SHAPES[name][0]
    if where == "interpolates":
        return fn(critic, real, fake, **kw)
    if where == "fake":
        return fn(critic, fake, **kw)
    return fn(critic, real, **kw)


def compare(name, module, real, fake, scores, **kw):
    """gpreg's value and parameter gradients against the reference on ``scores``."""
    rnd = fixed(tuple(real.shape[1:]))
    extra = {"alpha": rnd["alpha"]} if SHAPES[name][0] == "interpolates" else {}
    if name == "dragan":
        extra = dict(rnd)
    weight_kw = {"gamma": 10.0} if name in ("r1", "r2") else (
        {"k": 10.0} if name == "wgan_div" else {})
    value = gpreg_call(name, module, real, fake, **extra, **weight_kw, **kw)
    params = list(module.parameters())
    got = torch.autograd.grad(value, params, allow_unused=True)
    ref_value, ref_grads, _ = penalty(name, scores, params, [real], [fake],
                                      alpha=rnd["alpha"], noise=[rnd["noise"]])
    assert_close(value.item(), ref_value, "float64")
    for g, r, p in zip(got, ref_grads, params):
        assert_close(torch.zeros_like(p) if g is None else g, r, "float64")


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_stylegan_critic_with_c_in_args(name):
    torch.manual_seed(0)
    D = StyleD().double()
    real, fake = data((2, 4, 4), 1)
    c = torch.nn.functional.one_hot(torch.arange(B) % 3, 3).double()
    compare(name, D, real, fake, lambda x: D(x, c), args=(c,))


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_projection_critic_with_labels_and_kwargs(name):
    torch.manual_seed(1)
    D = Projection().double()
    real, fake = data((5,), 2)
    y = torch.arange(B) % 4
    compare(name, D, real, fake, lambda x: D(x, y, scale=0.7), args=(y,),
            kwargs={"scale": 0.7})


@pytest.mark.parametrize("output", ["adv_output", lambda o: o["adv_output"]])
@pytest.mark.parametrize("name", ["wgan_gp", "r1", "dragan"])
def test_dict_output(name, output):
    torch.manual_seed(2)
    D = DictD().double()
    real, fake = data((5,), 3)
    compare(name, D, real, fake, lambda x: D(x)["adv_output"], output=output)


def test_tuple_dataclass_and_attribute_outputs():
    torch.manual_seed(3)
    D = DictD().double()
    real, _ = data((5,), 4)
    as_tuple = lambda x: (D(x)["adv_output"], D(x)["h"])  # noqa: E731
    as_dataclass = lambda x: Out(D(x)["adv_output"], D(x)["h"])  # noqa: E731
    ref = gp.r1(lambda x: D(x)["adv_output"], real)
    assert_close(gp.r1(as_tuple, real, output=0).item(), ref.item(), "float64")
    assert_close(gp.r1(as_dataclass, real, output="logits").item(), ref.item(), "float64")
    assert_close(gp.grad_norm(as_dataclass, real, output=lambda o: o.logits, create_graph=False),
                 gp.grad_norm(lambda x: D(x)["adv_output"], real, create_graph=False), "float64")


def test_gradient_penalty_and_grad_norm_take_args():
    torch.manual_seed(4)
    D = Projection().double()
    real, _ = data((5,), 5)
    y = torch.arange(B) % 4
    params = list(D.parameters())
    value = gp.gradient_penalty(D, real, args=(y,), shape="squared", weight=3.0)
    ref_value, ref_grads, ref_norms = penalty("r1", lambda x: D(x, y), params, [real],
                                              weight=6.0)  # r1's factor 1/2
    assert_close(value.item(), ref_value, "float64")
    for g, r, p in zip(torch.autograd.grad(value, params, allow_unused=True), ref_grads,
                       params):
        assert_close(torch.zeros_like(p) if g is None else g, r, "float64")
    assert_close(gp.grad_norm(D, real, args=(y,), create_graph=False), ref_norms, "float64")


def test_multi_part_points_with_args():
    """Two input parts and a label: critic(img, mask, y)."""

    class TwoPart(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 4)
            self.e = nn.Embedding(3, 4)

        def forward(self, img, mask, y):
            return (torch.tanh(self.a(img) + self.b(mask)) * self.e(y)).sum(dim=1)

    torch.manual_seed(5)
    D = TwoPart().double()
    g = torch.Generator().manual_seed(6)
    real = (torch.randn(B, 3, generator=g, dtype=torch.float64),
            torch.randn(B, 2, generator=g, dtype=torch.float64))
    fake = (torch.randn(B, 3, generator=g, dtype=torch.float64),
            torch.randn(B, 2, generator=g, dtype=torch.float64))
    y = torch.arange(B) % 3
    alpha = torch.rand(B, generator=g, dtype=torch.float64)
    value = gp.wgan_gp(D, real, fake, args=(y,), alpha=alpha)
    params = list(D.parameters())
    ref_value, ref_grads, _ = penalty("wgan_gp", lambda a, b: D(a, b, y), params, list(real),
                                      list(fake), alpha=alpha)
    assert_close(value.item(), ref_value, "float64")
    for got, r in zip(torch.autograd.grad(value, params), ref_grads):
        assert_close(got, r, "float64")
    assert_close(value.item(), gp.wgan_gp(lambda a, b: D(a, b, y), real, fake,
                                          alpha=alpha).item(), "float64")


def test_conditioning_gets_no_gradient():
    """Tensors in args and kwargs are passed through, never differentiated."""
    D = StyleD().double()
    real, fake = data((2, 4, 4), 7)
    c = torch.rand(B, 3, dtype=torch.float64, requires_grad=True)
    value = gp.wgan_gp(D, real, fake, args=(c,))
    value.backward()
    assert c.grad is None
    assert all(p.grad is not None for p in D.mapping.parameters())  # c still shapes the value


@pytest.mark.parametrize(
    ("kw", "exc", "pattern"),
    [
        ({"args": torch.zeros(B, dtype=torch.long)}, TypeError,
         r"args must be a tuple .* write args=\(labels,\)"),
        ({"args": (torch.zeros(B - 1, dtype=torch.long),)}, ValueError,
         r"args\[0\] has shape \(5,\), but the points have batch size 6.*kwargs="),
        ({"args": ((torch.zeros(B), torch.zeros(2)),)}, ValueError, r"args\[0\]\[1\] has shape"),
        ({"kwargs": [("scale", 1.0)]}, TypeError, "kwargs must be a dict"),
        ({"output": 1.5}, TypeError, "output must be None, an index"),
    ],
)
def test_bad_call_options(kw, exc, pattern):
    D = Projection()
    x = torch.randn(B, 5)
    kw.setdefault("args", (torch.zeros(B, dtype=torch.long),))
    with pytest.raises(exc, match=pattern):
        gp.r1(D, x, **kw)


def test_structured_output_without_output_names_its_keys():
    D = DictD()
    x = torch.randn(B, 5)
    with pytest.raises(TypeError, match=r"returned a dict with keys 'h', 'adv_output', "
                                        r"'cls_output'.*output="):
        gp.r1(D, x)
    with pytest.raises(TypeError, match=r"returned a tuple of length 2 \(tensor, tensor\)"):
        gp.r1(lambda x: (D(x)["adv_output"], D(x)["h"]), x)
    with pytest.raises(ValueError, match=r"output='adv' does not select anything.*keys 'h'"):
        gp.r1(D, x, output="adv")
    with pytest.raises(ValueError, match=r"output=2 does not select anything.*length 2"):
        gp.r1(lambda x: (D(x)["adv_output"], D(x)["h"]), x, output=2)
