"""Rebuild the shared fixture critics as ``torch.nn`` modules (for tests and ``gpreg compare``).

Parameter names match the fixture's (``"<layer index>.<weight|bias>"``), which are also the
``state_dict`` names of the module built here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gpreg import fixtures
from gpreg.fixtures import Case, Fixture


class _Concat(nn.Module):
    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class FixtureCritic(nn.Sequential):
    """A sequential critic whose first layer may take several inputs (``concat``)."""

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mods = list(self)
        if isinstance(mods[0], _Concat):
            x = mods[0](*parts)
            mods = mods[1:]
        else:
            (x,) = parts
        for m in mods:
            x = m(x)
        return x


def _layer(spec: dict[str, Any], params: dict[str, Any]) -> nn.Module:
    kind = spec["type"]
    p = {k: params[name] for k, name in spec.get("params", {}).items()}
    if kind == "linear":
        out_f, in_f = p["weight"].shape
        return nn.Linear(in_f, out_f, bias="bias" in p)
    if kind == "conv2d":
        o, i, kh, kw = p["weight"].shape
        return nn.Conv2d(i, o, (kh, kw), stride=spec["stride"], padding=spec["padding"],
                         bias="bias" in p)
    if kind == "layer_norm":
        return nn.LayerNorm(p["weight"].shape[0], eps=spec["eps"])
    simple = {
        "tanh": nn.Tanh,
        "softplus": lambda: nn.Softplus(beta=1.0, threshold=1e9),
        "leaky_relu": lambda: nn.LeakyReLU(spec["slope"]),
        "elu": lambda: nn.ELU(1.0),
        "relu": nn.ReLU,
        "square": _Square,
        "flatten": nn.Flatten,
        "concat": _Concat,
    }
    if kind not in simple:
        raise ValueError(f"unknown fixture layer type {kind!r}")
    return simple[kind]()


def build_critic(
    fixture: Fixture, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> FixtureCritic:
    """The fixture's critic with its stored parameters, in ``dtype`` on ``device``."""
    critic = FixtureCritic(*[_layer(s, fixture.params) for s in fixture.layers])
    critic = critic.to(device=device, dtype=dtype)  # before loading: keep float64 exact
    state = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in fixture.params.items()}
    critic.load_state_dict(state, strict=True)
    return critic


def tensors(arrays: tuple[Any, ...], dtype: torch.dtype, device: Any = "cpu") -> tuple:
    return tuple(torch.as_tensor(a, dtype=dtype, device=device) for a in arrays)


def case_arguments(
    fixture: Fixture, case: Case, dtype: torch.dtype, device: Any = "cpu"
) -> tuple[tuple, dict[str, Any]]:
    """Positional data arguments and keyword options that reproduce ``case`` exactly."""
    real = tensors(fixture.real, dtype, device)
    fake = tensors(fixture.fake, dtype, device)
    alpha = torch.as_tensor(fixture.alpha, dtype=dtype, device=device)
    noise = tensors(fixture.noise, dtype, device)

    def one(parts: tuple) -> Any:
        return parts[0] if len(parts) == 1 else parts

    roles, randomness = fixtures.arguments(case)
    data = {"real": one(real), "fake": one(fake)}
    draws = {"alpha": alpha, "noise": one(noise)}
    return tuple(data[r] for r in roles), {**case.kwargs, **{k: draws[k] for k in randomness}}


def run_case(
    fixture: Fixture, case: Case, dtype: torch.dtype = torch.float64, device: Any = "cpu"
) -> dict[str, Any]:
    """Value, per-sample values, norms at the stored points and parameter gradients, as NumPy."""
    import gpreg_torch as gp

    critic = build_critic(fixture, dtype, device)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = case_arguments(fixture, case, dtype, device)
    value = fn(critic, *args, **kwargs, reduction=case.reduction)
    names = [n for n, _ in critic.named_parameters()]
    grads = torch.autograd.grad(value, list(critic.parameters()), allow_unused=True)
    per_sample = fn(critic, *args, **kwargs, reduction="none", create_graph=False)
    pts = tensors(case.points, dtype, device)
    norms = gp.grad_norm(critic, pts[0] if len(pts) == 1 else pts)
    out_grads = {
        n: (torch.zeros_like(p) if g is None else g).detach().double().cpu().numpy()
        for n, p, g in zip(names, critic.parameters(), grads)
    }
    return {
        "value": float(value.detach().double()),
        "per_sample": per_sample.detach().double().cpu().numpy(),
        "norms": norms.detach().double().cpu().numpy(),
        "grads": out_grads,
    }


def dtype(name: str) -> torch.dtype:
    """``"float32"`` -> ``torch.float32`` (for ``gpreg compare``)."""
    return getattr(torch, name)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}
