"""``check_critic`` for PyTorch: gpreg's parameter gradients against finite differences.

The comparison, the report and its text are the core's (:mod:`gpreg._check`); this module
copies the critic to float64, evaluates the penalties at given parameter values and runs the
sample-coupling test.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gpreg import _call as _callmod
from gpreg import _check as core
from gpreg import _validation as v
from gpreg._call import Call
from gpreg._check import CheckReport
from gpreg._specs import PenaltySpec
from gpreg_torch import _core

Tensor = torch.Tensor
WHERE = "gpreg_torch.check_critic"


class _Copy:
    """A copy of the critic in one dtype, its parameter groups, buffers and unreachable
    parameters."""

    def __init__(self, critic: Callable[..., Any], dtype: torch.dtype,
                 training: bool | None) -> None:
        self.dtype = dtype
        self.modules: list[tuple[str, nn.Module]] = []
        self.tensors: list[tuple[str, Tensor]] = []
        self.failed: list[str] = []
        memo: dict[int, Any] = {}

        def copier(obj: Any, path: str) -> Any:
            if isinstance(obj, nn.Module):
                try:
                    twin = copy.deepcopy(obj, memo)
                except Exception as exc:  # e.g. a module that refuses to be copied
                    self.failed.append(f"{path or type(obj).__name__}: {core.explain(exc)}")
                    return None
                self.modules.append((path, twin))
                return twin
            if isinstance(obj, torch.Tensor) and obj.is_floating_point():
                t = obj.detach().clone().to(dtype)
                if isinstance(obj, nn.Parameter):
                    t = nn.Parameter(t, requires_grad=obj.requires_grad)
                elif obj.requires_grad:
                    t.requires_grad_(True)
                if t.requires_grad:
                    self.tensors.append((path, t))
                return t
            return None

        rebinder = core.Rebinder(copier)
        self.critic = rebinder(critic)
        for _, m in self.modules:
            m.to(dtype)
            if training is not None:
                m.train(bool(training))
        groups: list[tuple[str, Tensor]] = []
        seen: set[int] = set()
        for path, m in self.modules:
            for name, p in m.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    groups.append((f"{path}.{name}" if path else name, p))
        for path, t in self.tensors:
            if id(t) not in seen:
                seen.add(id(t))
                groups.append((path, t))
        self.groups = groups
        self.buffers: list[tuple[Tensor, Tensor]] = []
        seen_b: set[int] = set()
        for _, m in self.modules:
            for b in m.buffers():
                if id(b) not in seen_b:
                    seen_b.add(id(b))
                    self.buffers.append((b, b.detach().clone()))

    def restore_buffers(self) -> None:
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)


def _seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return 0
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{WHERE}: generator must be a torch.Generator or None; got "
                        f"{type(generator).__name__}.")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                             device=generator.device).item())


def _dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    named = {"float64": torch.float64, "float32": torch.float32}
    if isinstance(dtype, str) and dtype in named:
        return named[dtype]
    if dtype in (torch.float64, torch.float32):
        return dtype
    raise ValueError(f"{WHERE}: dtype must be None, 'float64' or 'float32'; got {dtype!r}. "
                     f"Finite differences need at least float32.")


def _one(parts: Sequence[Tensor]) -> Any:
    return parts[0] if len(parts) == 1 else tuple(parts)


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


class _Target:
    """Evaluates the penalties on a copy at chosen parameter values."""

    def __init__(self, twin: _Copy, specs: list[PenaltySpec], real: tuple[Tensor, ...],
                 fake: tuple[Tensor, ...] | None, alpha: Tensor, noise: tuple[Tensor, ...],
                 seed: int, call: Call) -> None:
        self.twin, self.specs, self.call = twin, specs, call
        self.real, self.fake, self.alpha, self.noise = real, fake, alpha, noise
        self.seed = seed
        dev = real[0].device
        self.devices = [dev.index or 0] if dev.type == "cuda" else []

    def _call(self, spec: PenaltySpec, create_graph: bool) -> Tensor:
        from gpreg_torch._penalties import get_penalty

        fn = get_penalty(spec.name)
        kw: dict[str, Any] = {"create_graph": create_graph, "args": self.call.args,
                              "kwargs": self.call.kwargs, "output": self.call.output}
        if spec.points == "interpolates":
            data = (_one(self.real), _one(self.fake))
            kw["alpha"] = self.alpha
        elif spec.points == "fake":
            data = (_one(self.fake),)
        elif spec.points == "perturbed_real":
            data = (_one(self.real),)
            kw["alpha"], kw["noise"] = self.alpha, _one(self.noise)
        else:
            data = (_one(self.real),)
        self.twin.restore_buffers()
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(self.seed)
            return fn(self.twin.critic, *data, **kw)

    def values(self, k: int | None, theta: np.ndarray | None) -> np.ndarray:
        p = None
        if k is not None:
            p = self.twin.groups[k][1]
            saved = p.detach().clone()
            with torch.no_grad():
                p.copy_(torch.as_tensor(theta, dtype=p.dtype, device=p.device))
        try:
            out = []
            for spec in self.specs:
                try:
                    out.append(float(self._call(spec, create_graph=False).detach()))
                except Exception:
                    out.append(float("nan"))
            return np.asarray(out, dtype=np.float64)
        finally:
            if p is not None:
                with torch.no_grad():
                    p.copy_(saved)

    def gradients(self) -> tuple[np.ndarray, list[list[np.ndarray] | str]]:
        params = [p for _, p in self.twin.groups]
        base, grads = [], []
        for spec in self.specs:
            try:
                value = self._call(spec, create_graph=True)
            except Exception as exc:
                base.append(float("nan"))
                grads.append(core.explain(exc))
                continue
            base.append(float(value.detach()))
            if not params:
                grads.append([])
                continue
            if not value.requires_grad:
                grads.append([np.zeros(tuple(p.shape)) for p in params])
                continue
            # Differentiate with respect to every leaf of the graph, as loss.backward() does
            # (but without touching any .grad): autograd.grad(value, params) alone would skip
            # the nodes that lead elsewhere, among them the one by which a Function marked
            # @once_differentiable raises, and return silently incomplete gradients.
            ids = {id(p) for p in params}
            others = [t for t in _graph_leaves(value) if id(t) not in ids]
            try:
                gs = torch.autograd.grad(value, params + others, allow_unused=True)
            except Exception as exc:
                grads.append(core.explain(exc))
                continue
            gs = gs[:len(params)]
            grads.append([np.zeros(tuple(p.shape)) if g is None
                          else g.detach().cpu().double().numpy() for g, p in zip(gs, params)])
        return np.asarray(base, dtype=np.float64), grads

    def outputs(self, parts: Sequence[Tensor]) -> np.ndarray:
        """Per-sample summed outputs (no gradient), with buffers and RNG as in every call."""
        self.twin.restore_buffers()
        with torch.no_grad(), torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(self.seed)
            out = _scores(self.twin.critic, parts, self.call)
        return out.reshape(out.shape[0], -1).sum(dim=1).double().cpu().numpy()


def _points(parts: tuple[Tensor, ...], dtype: torch.dtype) -> tuple[Tensor, ...]:
    return tuple(p.detach().to(dtype) for p in parts)


def _scores(critic: Any, parts: Sequence[Tensor], call: Call) -> Any:
    raw = critic(*parts, *call.args, **call.kwargs)
    if call.output is None and isinstance(raw, torch.Tensor):
        return raw
    return _callmod.pick_output(WHERE, raw, call.output, lambda o: isinstance(o, torch.Tensor))


def _cast_call(call: Call, dtype: torch.dtype) -> Call:
    """``call`` with its floating tensors in the check's dtype."""
    def cast(x: Any) -> Any:
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    return Call(_callmod.map_leaves(cast, call.args), _callmod.map_leaves(cast, call.kwargs),
                call.output)


def _probe(twin: _Copy, real: tuple[Tensor, ...],
           call: Call) -> tuple[Tensor, tuple[Tensor, ...]]:
    leaves = tuple(p.detach().clone().requires_grad_(True) for p in real)
    twin.restore_buffers()
    dev = real[0].device
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        out = _scores(twin.critic, leaves, _cast_call(call, real[0].dtype))
    if not isinstance(out, torch.Tensor):
        raise v.bad_output_type(WHERE, type(out).__name__, "torch.Tensor")
    return out, leaves


def check_critic(
    critic: Callable[..., Tensor],
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
    r"""Check that gpreg's penalties differentiate correctly through ``critic``: run it first.

    A gradient penalty's parameter gradient is a second derivative of the critic (double
    backprop). A layer that is right to first order but not to second order leaves the
    penalty's value right and its gradient silently wrong. This function compares, on a
    float64 copy of ``critic`` (the critic itself is never changed), each penalty's parameter
    gradient with central finite differences of the penalty's value along ``directions``
    random directions per parameter group (each parameter tensor), and reports the relative
    error per penalty and group. It also reports **sample coupling** (moving sample
    :math:`j`'s input moves sample :math:`i`'s score: BatchNorm in training mode), non-finite
    values or gradients, and errors raised by double backprop (a custom autograd Function
    marked ``@once_differentiable``, ``torch.compile``, fused attention), with their fixes.

    The evaluation points use a fixed ``alpha`` and DRAGAN ``noise``, and every critic call
    starts from the same RNG seed and buffers, so each penalty is a deterministic function of
    the parameters (dropout draws the same mask each time).

    Args:
        critic: an ``nn.Module``, or any callable. For a plain function (a closure, a
            ``functools.partial``, a bound method, a callable object) the modules and
            parameters it refers to are found and copied; parameters it reaches in other
            ways are reported as unchecked.
        real: a batch of real samples (a tensor, or a tuple of tensors for a multi-input
            critic); a few samples suffice (4–16).
        fake: a batch shaped like ``real``; without it only the penalties evaluated at real
            data (``r1``, ``dragan``) are checked.
        penalties: a name or a list of names (any registered penalty); default: every
            built-in that the data allow.
        directions: random directions per parameter group.
        eps: finite-difference step, relative to each group's root mean square; default
            ``1e-4`` in float64 (``3e-3`` if the critic runs only in float32).
        rtol: largest accepted relative error; default ``1e-6`` in float64 (``5e-3`` in
            float32).
        dtype: ``"float64"`` or ``"float32"`` (or a ``torch.dtype``): the dtype of the copy.
            Default: float64, or float32 when the critic fails in float64. Check in float32
            when kernels that only run in lower precision (fused attention, cuDNN) matter.
        args, kwargs, output: the critic's extra arguments and output selector, as in the
            penalties (``critic(*points, *args, **kwargs)``); floating tensors among them are
            cast to the check's dtype.
        training: ``None`` keeps the critic's mode; ``True`` or ``False`` sets it on the
            copy (``False``: check as used in inference mode).
        generator: a ``torch.Generator`` that seeds the check's draws (points, directions);
            default: seed 0, so the same call gives the same report.

    Returns:
        CheckReport: (defined in ``gpreg._check``) ``ok``, ``errors`` (``{penalty:
        {group: relative error}}``),
        ``coupling``, ``nonfinite``, ``failures()`` and ``summary()`` (also ``str(report)``).

    Raises:
        TypeError: ``critic`` is not callable, or the data are not tensors.
        ValueError: a penalty needs ``fake`` and none was given; ``directions``, ``eps`` or
            ``rtol`` out of range.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8),
        ...                              torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> report = gp.check_critic(critic, torch.randn(6, 3), torch.randn(6, 3))
        >>> report.ok
        True
        >>> critic[0].weight.dtype      # the check ran on a float64 copy
        torch.float32
    """
    with warnings.catch_warnings():
        # gpreg's own BatchNormWarning would repeat at every internal evaluation; the report
        # says the same (sample coupling) once.
        warnings.simplefilter("ignore", getattr(v, "BatchNormWarning", UserWarning))
        return _check(critic, real, fake, penalties=penalties, directions=directions, eps=eps,
                      rtol=rtol, dtype=dtype, training=training, generator=generator,
                      args=args, kwargs=kwargs, output=output)


def _check(critic: Any, real: Any, fake: Any, *, penalties: Any, directions: Any, eps: Any,
           rtol: Any, dtype: Any, training: Any, generator: Any, args: Any, kwargs: Any,
           output: Any) -> CheckReport:
    if not callable(critic):
        raise TypeError(f"{WHERE}: critic must be callable (an nn.Module or a function); got "
                        f"{type(critic).__name__}.")
    real_p = _core._parts(WHERE, "real", real)
    fake_p = None if fake is None else _core._parts(WHERE, "fake", fake)
    if fake_p is not None:
        v.check_same_shapes(WHERE, [tuple(t.shape) for t in real_p],
                            [tuple(t.shape) for t in fake_p])
    specs = core.resolve_penalties(WHERE, penalties, fake_p is not None)
    call = _core.call_options(WHERE, args, kwargs, output, int(real_p[0].shape[0]))
    seed = _seed(generator)
    notes: list[str] = []

    wanted = _dtype(dtype)
    twin, probe, inputs = None, None, ()
    first_error: BaseException | None = None
    for dt in (torch.float64, torch.float32) if wanted is None else (wanted,):
        cand = _Copy(critic, dt, training)
        try:
            probe, inputs = _probe(cand, _points(real_p, dt), call)
        except Exception as exc:
            first_error = first_error or exc
            continue
        twin, run_dtype = cand, dt
        break
    if twin is None or probe is None:
        assert first_error is not None
        raise v.critic_failed(WHERE, [tuple(p.shape) for p in real_p], first_error)
    dtype = run_dtype
    dname = str(dtype).rsplit(".", 1)[-1]
    if wanted is None and dtype != torch.float64:
        notes.append(f"the critic failed in float64 ({core.explain(first_error)}), so the check "
                     f"ran in float32 with looser eps and rtol")
    directions, eps, rtol = core.settings(WHERE, dname, directions, eps, rtol)
    notes.extend(f"could not copy {f}" for f in twin.failed)

    ids = {id(p) for _, p in twin.groups} | {id(t) for t in inputs}
    unchecked = []
    for leaf in _graph_leaves(probe):
        if leaf.requires_grad and id(leaf) not in ids:
            unchecked.append(f"a {tuple(leaf.shape)} {str(leaf.dtype).rsplit('.', 1)[-1]} "
                             f"tensor")
            ids.add(id(leaf))
    if unchecked:
        notes.append("pass the nn.Module itself, or a closure over it (lambda x: D(x, labels)), "
                     "so that the check can copy every parameter")
    if not twin.groups and not unchecked:
        notes.append("the critic has no trainable parameters: only coupling and finite values "
                     "were checked")

    r_pts, d_rng, c_rng = core.streams(seed)
    alpha_np, noise_np = core.draws(r_pts, [tuple(p.shape) for p in real_p])
    dev = real_p[0].device
    alpha = torch.as_tensor(alpha_np, dtype=dtype, device=dev)
    noise = tuple(torch.as_tensor(n, dtype=dtype, device=dev) for n in noise_np)
    real_d = _points(real_p, dtype)
    fake_d = None if fake_p is None else _points(fake_p, dtype)
    target = _Target(twin, specs, real_d, fake_d, alpha, noise, seed, _cast_call(call, dtype))

    base, grads = target.gradients()
    groups = [(name, p.detach().cpu().double().numpy()) for name, p in twin.groups]
    results, deterministic = core.compare(
        [s.name for s in specs], groups, target.values, base, grads, dtype=dname,
        directions=directions, eps=eps, rtol=rtol, rng=d_rng)

    batch = int(real_d[0].shape[0])
    coupling = None
    if batch >= 2:
        base_out = target.outputs(real_d)
        moved = []
        real_np = [p.cpu().double().numpy() for p in real_d]
        for j in core.coupled_samples(batch):
            parts = core.perturbation(c_rng, real_np, j, dname)
            moved.append((j, target.outputs(tuple(torch.as_tensor(q, dtype=dtype, device=dev)
                                                  for q in parts))))
        coupling = core.coupling(base_out, moved, dname, rtol)
    else:
        notes.append("one sample: sample coupling was not tested (pass at least 2)")
    return core.report(framework="torch", dtype=dname, penalties=results,
                       groups=[n for n, _ in twin.groups], coupling_check=coupling,
                       deterministic=deterministic, unchecked=unchecked, notes=notes, eps=eps,
                       rtol=rtol, directions=directions, seed=seed)
