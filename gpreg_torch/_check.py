"""``check_critic`` for PyTorch: gpreg's parameter gradients against finite differences.

The check, the comparison and the report are the core's (:mod:`gpreg._check`). This module
copies the critic module (``copy.deepcopy``, then ``.to(dtype)``: the user's module is never run
nor changed) and evaluates the penalties of the copy at given parameter values.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gpreg import _call as _callmod
from gpreg import _check as core
from gpreg import _validation as v
from gpreg._call import Call
from gpreg._check import CheckReport, Points
from gpreg._specs import PenaltySpec
from gpreg_torch import _core

Tensor = torch.Tensor
WHERE = "gpreg_torch.check_critic"
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _graph_leaves(out: Tensor) -> list[Tensor]:
    """The leaf tensors that ``out``'s autograd graph reaches (its parameters and inputs)."""
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if isinstance(var, torch.Tensor):
            leaves.append(var)
        stack.extend(n for n, _ in node.next_functions)
    return leaves


def leaf_gradients(value: Tensor, params: list[Tensor]) -> list[np.ndarray]:
    """∂value/∂params, taken with respect to every leaf of the graph as ``loss.backward()``
    does (without touching any ``.grad``): ``autograd.grad(value, params)`` alone would skip
    the nodes that lead elsewhere, among them the one by which a Function marked
    ``@once_differentiable`` raises, and return silently incomplete gradients."""
    if not params:
        return []
    if not value.requires_grad:
        return [np.zeros(tuple(p.shape)) for p in params]
    ids = {id(p) for p in params}
    others = [t for t in _graph_leaves(value) if id(t) not in ids]
    gs = torch.autograd.grad(value, params + others, allow_unused=True)[:len(params)]
    return [np.zeros(tuple(p.shape)) if g is None else g.detach().cpu().double().numpy()
            for g, p in zip(gs, params)]


class _Target:
    """The penalties of a copy of the module in one dtype, at chosen parameter values."""

    def __init__(self, module: nn.Module, dtype: str, training: bool | None,
                 specs: list[PenaltySpec], pts: Points, call: Call, device: torch.device,
                 seed: int) -> None:
        dt = _DTYPES[dtype]
        self.module = copy.deepcopy(module).to(dt)
        if training is not None:
            self.module.train(bool(training))
        self.dtype, self.specs, self.seed, self.notes = dtype, specs, seed, []
        self.tensor = lambda a: torch.tensor(a, dtype=dt, device=device)
        self.pts = pts.map(self.tensor)
        self.call = call.map(lambda x: x.to(dt) if isinstance(
            x, torch.Tensor) and x.is_floating_point() else x)
        self.devices = [device.index or 0] if device.type == "cuda" else []
        self.params = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.groups = [(n, p.detach().cpu().double().numpy()) for n, p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
        # parameters the forward reaches outside the module (a global tensor or model)
        leaves = [self.tensor(p).requires_grad_(True) for p in pts.real]
        known = {id(p) for _, p in self.params} | {id(t) for t in leaves}
        with torch.enable_grad():
            probe = self._run(lambda: self._scores(leaves))
        self.unchecked = [f"a {tuple(t.shape)} {str(t.dtype).rsplit('.', 1)[-1]} tensor"
                          for t in _graph_leaves(probe) if id(t) not in known]
        if self.unchecked:
            self.notes.append("the critic's forward uses tensors that are not parameters of "
                              "the module (a global tensor or model): they were neither "
                              "copied nor checked; make them parameters or submodules")

    def _run(self, fn: Any) -> Any:
        """``fn()`` from the copy's initial buffers and a fixed RNG seed (restored after)."""
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(self.seed)
            return fn()

    def _scores(self, parts: Sequence[Tensor]) -> Tensor:
        raw = self.module(*parts, *self.call.args, **self.call.kwargs)
        out = raw if self.call.output is None and isinstance(raw, torch.Tensor) else (
            _callmod.pick_output(WHERE, raw, self.call.output, _core._is_tensor))
        if not isinstance(out, torch.Tensor):
            raise v.bad_output_type(WHERE, type(out).__name__, "torch.Tensor")
        return out

    def _penalty(self, spec: PenaltySpec, create_graph: bool) -> Tensor:
        from gpreg_torch._penalties import get_penalty

        data, kw = self.pts.penalty_args(spec)
        c = self.call
        return self._run(lambda: get_penalty(spec.name)(
            self.module, *data, create_graph=create_graph, args=c.args, kwargs=c.kwargs,
            output=c.output, **kw))

    def values(self, k: int | None, theta: np.ndarray | None) -> np.ndarray:
        def value(spec: PenaltySpec) -> float:
            try:
                return float(self._penalty(spec, create_graph=False).detach())
            except Exception:
                return float("nan")

        p = None if k is None else self.params[k][1]
        saved = None if p is None else p.detach().clone()
        with torch.no_grad():
            if p is not None:
                p.copy_(torch.as_tensor(theta, dtype=p.dtype, device=p.device))
        try:
            return np.asarray([value(s) for s in self.specs], dtype=np.float64)
        finally:
            with torch.no_grad():
                if p is not None:
                    p.copy_(saved)

    def gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        params = [p for _, p in self.params]
        base: list[float] = []
        grads: list[list[np.ndarray] | str] = []
        for spec in self.specs:
            try:
                value = self._penalty(spec, create_graph=True)
            except Exception as exc:
                base.append(float("nan"))
                grads.append(v.explain(exc))
                continue
            base.append(float(value.detach()))
            try:
                grads.append(leaf_gradients(value, params))
            except Exception as exc:
                grads.append(v.explain(exc))
        return np.asarray(base, dtype=np.float64), grads

    def outputs(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = self._run(lambda: self._scores([self.tensor(p) for p in parts]))
        return out.reshape(out.shape[0], -1).sum(dim=1).double().cpu().numpy()


def _seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return 0
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{WHERE}: generator must be a torch.Generator or None; got "
                        f"{type(generator).__name__}.")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                             device=generator.device).item())


def _copy(critic: Any) -> nn.Module:
    """A deep copy of the critic module (unwrapped from DDP and ``torch.compile``)."""
    if not callable(critic):
        raise TypeError(f"{WHERE}: critic must be callable (an nn.Module); got "
                        f"{type(critic).__name__}.")
    for _ in range(2):  # DDP(torch.compile(m)) or torch.compile(DDP(m))
        ddp = isinstance(critic, nn.parallel.DistributedDataParallel)
        critic = _core._penalty_module(critic.module if ddp else critic)
    if not isinstance(critic, nn.Module):
        raise v.check_needs_model(WHERE, critic, "the nn.Module itself (or its DDP or "
                                                 "torch.compile wrapper)")
    try:
        return copy.deepcopy(critic)
    except Exception as exc:
        raise TypeError(f"{WHERE}: copy.deepcopy(critic) failed ({v.explain(exc)}). The "
                        f"check runs on a copy, so that your module is never run nor changed: "
                        f"make it deep-copyable (no locks, open files or generators as "
                        f"attributes).") from exc


def check(
    critic: nn.Module,
    real: Any,
    fake: Any = None,
    *,
    penalties: str | Sequence[str] | None = None,
    directions: int = 3,
    eps: float | None = None,
    rtol: float | None = None,
    dtype: str | torch.dtype | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Any = None,
    training: bool | None = None,
    generator: torch.Generator | None = None,
) -> CheckReport:
    """The body of :func:`gpreg_torch.check_critic` (its docstring is the specification)."""
    module = _copy(critic)
    real_p = _core._parts(WHERE, "real", real)
    fake_p = None if fake is None else _core._parts(WHERE, "fake", fake)
    call = _core.call_options(WHERE, args, kwargs, output, int(real_p[0].shape[0]))
    names = {torch.float64: "float64", torch.float32: "float32"}
    name = names.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype
    core.check_dtype(WHERE, name)
    seed, device = _seed(generator), real_p[0].device

    def make(dt: str, specs: list[PenaltySpec], pts: Points) -> _Target:
        return _Target(module, dt, training, specs, pts, call, device, seed)

    def arrays(parts: Any) -> Any:
        return None if parts is None else [p.detach().cpu().double().numpy() for p in parts]

    with warnings.catch_warnings():
        # gpreg's BatchNormWarning would repeat at every evaluation; the report says it once
        warnings.simplefilter("ignore", v.BatchNormWarning)
        return core.run(WHERE, "torch", make, (name,) if name else ("float64", "float32"),
                        arrays(real_p), arrays(fake_p), penalties=penalties,
                        directions=directions, eps=eps, rtol=rtol, seed=seed)
