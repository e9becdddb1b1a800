"""The one PyTorch-specific piece: the per-sample input gradient, kept differentiable.

Everything else (points, norm, penalty shape, reduction, checks) comes from the core.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from gpreg import _call, _math, _points
from gpreg import _validation as v
from gpreg._call import PLAIN, Call
from gpreg._specs import (
    PenaltySpec,
    Shape,
    choose_points,
    get_spec,
    resolve_shape,
    resolve_spec_shape,
)
from gpreg_torch import _dist
from gpreg_torch import _ops as xp

Tensor = torch.Tensor
Points = Tensor | Sequence[Tensor]


def _parts(where: str, role: str, x: Any) -> tuple[Tensor, ...]:
    """Normalise ``x`` (a tensor, or a tuple/list of tensors) to a tuple of detached tensors."""
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    for p in parts:
        if not isinstance(p, torch.Tensor):
            raise TypeError(
                f"{where}: {role} must be a torch.Tensor or a tuple of tensors (one per critic "
                f"input); got {type(p).__name__}. Convert with torch.as_tensor(x, "
                f"dtype=torch.float32)."
            )
        v.check_floating(where, role, str(p.dtype), p.is_floating_point())
    v.check_parts(where, role, [tuple(p.shape) for p in parts])
    return tuple(p.detach() for p in parts)


def _check_devices(where: str, named: Sequence[tuple[str, Tensor]]) -> None:
    v.check_same_device(where, [(role, str(t.device)) for role, t in named])


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _static_shape(x: Any) -> tuple[int, ...] | None:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else None


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def call_options(where: str, args: Any, kwargs: Any, output: Any, batch: int) -> Call:
    """``args``/``kwargs``/``output`` checked: tensors in ``args`` lead with ``batch``; every
    tensor of ``args`` and ``kwargs`` is detached (conditioning is never differentiated)."""
    if _call.is_plain(args, kwargs, output):
        return PLAIN
    args, kwargs = _call.check_call(where, args, kwargs, output)
    _call.check_arg_batches(where, args, batch, _static_shape)
    return Call(_call.map_leaves(_detach, args), _call.map_leaves(_detach, kwargs), output)


def _alpha(where: str, alpha: Any, like: Tensor, generator: torch.Generator | None) -> Tensor:
    batch = like.shape[0]
    if alpha is None:
        return torch.rand(batch, generator=generator, device=like.device, dtype=like.dtype)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return torch.full((batch,), float(alpha), device=like.device, dtype=like.dtype)
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(
            f"{where}: alpha must be None, a number or a tensor of shape ({batch},); got "
            f"{type(alpha).__name__}."
        )
    v.check_alpha_shape(where, tuple(alpha.shape), batch)
    return alpha.detach().reshape(batch).to(device=like.device, dtype=like.dtype)


def _noise(
    where: str, noise: Any, real: tuple[Tensor, ...], generator: torch.Generator | None,
    gaussian: bool = False,
) -> tuple[Tensor, ...]:
    """DRAGAN's noise: given, or drawn U[0, 1) (N(0, 1) for the paper's Gaussian form)."""
    if noise is None:
        draw = torch.randn if gaussian else torch.rand
        return tuple(
            draw(r.shape, generator=generator, device=r.device, dtype=r.dtype) for r in real
        )
    parts = tuple(noise) if isinstance(noise, (tuple, list)) else (noise,)
    if not all(isinstance(n, torch.Tensor) for n in parts):
        got = ", ".join(type(n).__name__ for n in parts)
        raise TypeError(
            f"{where}: noise must be None or torch.Tensor(s) shaped like real; got {got}."
        )
    v.check_noise_shapes(where, [tuple(n.shape) for n in parts], [tuple(r.shape) for r in real])
    return tuple(n.detach().to(device=r.device, dtype=r.dtype) for n, r in zip(parts, real))


def _penalty_module(critic: Any) -> Any:
    """The module to run for the penalty pass.

    ``torch.compile`` goes through AOTAutograd, which does not support double backward
    ("torch.compile with aot_autograd does not currently support double backward"): the
    penalty pass runs the original module (``_orig_mod``), which shares the parameters.
    """
    orig = getattr(critic, "_orig_mod", None)
    if isinstance(orig, torch.nn.Module) and type(critic).__name__ == "OptimizedModule":
        return orig
    return critic


_structure: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned: weakref.WeakSet = weakref.WeakSet()


def _layers_of(critic: Any) -> tuple[list[tuple[str, Any]], bool]:
    """The critic's BatchNorm modules and whether it has an RNN, found once per critic (a
    module walk costs ~0.1–1 ms on big critics: not on every call)."""
    try:
        return _structure[critic]
    except KeyError:
        pass
    bns = [(n or type(m).__name__, m) for n, m in critic.named_modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    info = (bns, any(isinstance(m, torch.nn.RNNBase) for m in critic.modules()))
    _structure[critic] = info
    return info


def _has_rnn(critic: Any) -> bool:
    return isinstance(critic, torch.nn.Module) and _layers_of(critic)[1]


def _warn_batchnorm(where: str, critic: Any) -> None:
    """Warn once per critic about batch normalization in training mode."""
    if not isinstance(critic, torch.nn.Module) or critic in _warned:
        return
    names = [n for n, m in _layers_of(critic)[0] if m.training]
    if names:
        _warned.add(critic)
        warnings.warn(v.batchnorm_message(where, names), v.BatchNormWarning, stacklevel=4)


def _finite(where: str, what: str, x: Tensor) -> None:
    bad = (~torch.isfinite(x.detach().reshape(x.shape[0], -1))).any(dim=1)
    v.check_finite(where, what, bad.nonzero().flatten().tolist())


def _is_ddp(critic: Any) -> bool:
    return isinstance(critic, torch.nn.parallel.DistributedDataParallel)


_FUSED_SDPA = ("flash", "mem_efficient", "cudnn")


@contextlib.contextmanager
def _double_backward_kernels(critic: Any, points: tuple[Tensor, ...]) -> Iterator[None]:
    """Kernels with a double backward for the penalty's forward pass.

    Flash / memory-efficient / cuDNN attention (CPU and CUDA) have no derivative of their
    backward, so ``scaled_dot_product_attention`` runs its math kernel here (the global SDPA
    switches, set and restored directly: ``sdpa_kernel`` costs more per call); cuDNN RNNs
    have none either ("Double backwards is not supported for CuDNN RNNs"), so cuDNN is off
    for critics that contain an RNN on CUDA. Both choices only affect this pass.
    """
    sdp = torch.backends.cuda
    saved = [getattr(sdp, f"{k}_sdp_enabled")() for k in _FUSED_SDPA]
    for k in _FUSED_SDPA:
        getattr(sdp, f"enable_{k}_sdp")(False)
    try:
        if points[0].is_cuda and _has_rnn(critic):
            with torch.backends.cudnn.flags(enabled=False):
                yield
        else:
            yield
    finally:
        for k, on in zip(_FUSED_SDPA, saved):
            getattr(sdp, f"enable_{k}_sdp")(on)


def input_gradients(
    where: str,
    critic: Callable[..., Any],
    points: tuple[Tensor, ...],
    create_graph: bool,
    scaler: Any = None,
    call: Call = PLAIN,
) -> tuple[tuple[Tensor, ...], Tensor, Tensor | None]:
    """∂(Σ critic outputs)/∂points, one tensor per part, with the graph kept when asked;
    also returns the critic's scores at the points and, for a DDP critic, the sum of every
    tensor it returned (the anchor of DDP's zero term; ``None`` otherwise).

    The critic is called as ``critic(*points, *call.args, **call.kwargs)`` and ``call.output``
    picks the scores out of a structured output. Only the points are differentiated
    (``inputs=points``), so no weight gradient is computed here; the parameters are reached
    later, when the caller's loss runs backward. With a ``GradScaler``, the summed output is
    scaled before the inner backward (so float16 gradients do not underflow) and the input
    gradient is unscaled out of place.
    """
    batch = points[0].shape[0]
    module = _penalty_module(critic)
    _warn_batchnorm(where, module)
    with torch.enable_grad():  # the penalty needs a graph, even under no_grad logging code
        leaves = tuple(p.requires_grad_(True) for p in points)
        try:
            with _double_backward_kernels(module, leaves):
                raw = module(*leaves, *call.args, **call.kwargs)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise v.critic_failed(where, [tuple(p.shape) for p in leaves], exc) from exc
        out = raw if call.output is None and isinstance(raw, torch.Tensor) else (
            _call.pick_output(where, raw, call.output, _is_tensor))
        if not isinstance(out, torch.Tensor):
            raise v.bad_output_type(where, type(out).__name__, "torch.Tensor")
        v.check_output_shape(where, tuple(out.shape), batch)
        if not out.requires_grad:
            raise v.independent_critic(where)
        anchor = _ddp_anchor(raw) if _is_ddp(critic) else None
        return _gradient_of_scores(where, out, leaves, create_graph, scaler), out, anchor


def _ddp_anchor(raw: Any) -> Tensor | None:
    """Σ of every floating tensor the critic returned: through it, DDP's zero term reaches
    every parameter of the forward, also those only other outputs use."""
    parts = [t for _, t in _call.leaves(raw, "") if isinstance(t, torch.Tensor)
             and t.is_floating_point() and t.requires_grad]
    if not parts:
        parts = [t for t in vars(raw).values() if isinstance(t, torch.Tensor)
                 and t.requires_grad] if hasattr(raw, "__dict__") else []
    total = None
    for t in parts:
        s = t.sum().float()
        total = s if total is None else total + s
    return total


def _gradient_of_scores(
    where: str, out: Tensor, leaves: tuple[Tensor, ...], create_graph: bool, scaler: Any
) -> tuple[Tensor, ...]:
    """∂(Σ out)/∂leaves, scaled and unscaled around the backward when a scaler is given."""
    scaler = _grad_scaler(where, scaler)
    total = out.sum()
    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        total = scaler.scale(total)
    grads = torch.autograd.grad(total, leaves, create_graph=create_graph, allow_unused=True)
    if all(g is None for g in grads):
        raise v.independent_critic(where)
    grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves))
    if scaled:
        inv = 1.0 / scaler.get_scale()  # out of place: unscale_() is for parameter grads
        grads = tuple(g.to(torch.promote_types(g.dtype, torch.float32)) * inv for g in grads)
    return grads


_SCALER_METHODS = ("is_enabled", "scale", "get_scale")


def _grad_scaler(where: str, scaler: Any) -> Any:
    """The ``GradScaler`` that ``scaler=`` stands for: the scaler itself, or the one that an
    ``accelerate.Accelerator`` or a Lightning precision plugin holds as ``.scaler`` (``None``
    when they train without one: bf16, 32-bit, or Accelerate's fp16 on a CPU)."""
    given = scaler
    if scaler is not None and not all(hasattr(scaler, m) for m in _SCALER_METHODS):
        if hasattr(scaler, "scaler"):  # an Accelerator, Lightning's MixedPrecision
            scaler = scaler.scaler
        elif getattr(scaler, "precision", "") != "16-mixed" and any(
                c.__name__ == "Precision" and c.__module__.startswith(
                    ("lightning", "pytorch_lightning")) for c in type(scaler).__mro__):
            return None  # Lightning's 32-bit, 64-bit or true-half precision scales nothing
    if scaler is None or all(hasattr(scaler, m) for m in _SCALER_METHODS):
        return scaler
    raise TypeError(
        f"{where}: scaler must be a torch.amp.GradScaler, or an accelerate.Accelerator or a "
        f"Lightning precision plugin (trainer.precision_plugin), whose GradScaler is then "
        f"used; got {type(given).__name__}. Pass the object whose scale() scales your loss."
    )


def norms_from_gradients(grads: Sequence[Tensor]) -> Tensor:
    """Exact per-sample norms over every non-batch element of every part, in ≥ float32.

    PyTorch's own ``vector_norm`` is exact and its derivative is 0 where the norm is 0 (its
    backward masks the division), so it serves as the NaN-safe norm here in one kernel
    instead of the core's generic ``safe_norm``; the zero_grad fixtures test both paths.
    """
    norms = []
    for g in grads:
        acc = torch.promote_types(g.dtype, torch.float32)
        if g.dim() == 1:  # one scalar per sample: |g| (abs' derivative at 0 is 0)
            norms.append(g.to(acc).abs())
        else:
            norms.append(torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim())), dtype=acc))
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)


def _finish(
    where: str,
    evaluated: Sequence[tuple[tuple[Tensor, ...], Tensor, Tensor | None, tuple[Tensor, ...]]],
    shape: Shape,
    check_finite: bool = False,
    *,
    weight: float,
    target: float,
    ratio: bool,
    reduction: str,
    global_batch_size: int | None = None,
) -> Tensor:
    """Norms → penalty shape → reduction, plus DistributedDataParallel's bookkeeping and the
    opt-in finite checks (each syncs with the device, hence opt-in).

    ``evaluated`` holds one ``(grads, scores, ddp anchor, points)`` per set of evaluation
    points: one set, or the real and the fake samples (``points="real_fake"``), whose
    per-sample terms are averaged.
    """
    per_sample = []
    for grads, out, _, points in evaluated:
        norms = norms_from_gradients(grads)
        if check_finite:
            for p in points:
                _finite(where, "an evaluation point (from real/fake)", p)
            _finite(where, "the critic's output", out)
            _finite(where, "the input gradient", norms.reshape(-1, 1))
        per_sample.append(shape(norms, target=target, ratio=ratio, xp=xp))
    values = (per_sample[0] if len(per_sample) == 1 else _math.real_fake_mean(*per_sample)) * weight
    ddp = any(anchor is not None for _, _, anchor, _ in evaluated)
    if ddp and reduction == "max" and _dist.active():
        value = _dist.global_max(values)  # DDP: the maximum over every rank's samples
    else:
        value = _math.reduce(values, reduction, xp, count=global_batch_size)
    for _, _, anchor, _ in evaluated:
        if anchor is not None:
            # DDP waits for a gradient of every parameter used in the forward; the last
            # layer's bias (and any parameter the input gradient does not reach) gets none
            # from the penalty alone, which breaks the reduction (pytorch#47562). A
            # zero-weighted term on the critic's outputs gives each of them an exact zero.
            value = value + 0.0 * anchor.to(value.dtype)
    return value


def evaluation_points(
    spec: PenaltySpec,
    where: str,
    *,
    real: Any = None,
    fake: Any = None,
    alpha: Any = None,
    noise: Any = None,
    c: float = 0.5,
    generator: torch.Generator | None = None,
    points: str | None = None,
    ddof: int = 0,
    perturbation: str = "uniform",
    ddp: bool = False,
) -> list[tuple[Tensor, ...]]:
    """The sets of points at which ``spec`` evaluates the critic (one, or the real and the
    fake samples for ``points="real_fake"``), from explicit or drawn randomness."""
    kind = choose_points(where, spec, points)
    if kind == "real":
        r = _parts(where, "real", real)
        _check_devices(where, [("real", t) for t in r])
        return [r]
    if kind == "fake":
        f = _parts(where, "fake", fake)
        _check_devices(where, [("fake", t) for t in f])
        return [f]
    r = _parts(where, "real", real)
    if kind == "perturbed_real":
        _check_devices(where, [("real", t) for t in r])
        gaussian = perturbation == "gaussian"
        if gaussian and alpha is not None:
            raise v.unused_alpha(where, "perturbation='gaussian'")
        v.check_ddof(where, ddof, min(t.numel() for t in r))
        a = None if gaussian else _alpha(where, alpha, r[0], generator)
        u = _noise(where, noise, r, generator, gaussian)
        stats = _dist.GlobalStatistics() if ddp and _dist.active() else xp  # σ over every rank
        return [_points.dragan_points(r, a, u, c, stats, ddof=ddof, perturbation=perturbation)]
    f = _parts(where, "fake", fake)
    v.check_same_shapes(where, [tuple(t.shape) for t in r], [tuple(t.shape) for t in f])
    for i, (rt, ft) in enumerate(zip(r, f)):
        v.check_same_dtype(where, [(f"real[{i}]", str(rt.dtype)), (f"fake[{i}]", str(ft.dtype))])
    _check_devices(where, [("real", t) for t in r] + [("fake", t) for t in f])
    if kind == "real_fake":
        if alpha is not None:
            raise v.unused_alpha(where, "points='real_fake'")
        return [r, f]
    a = _alpha(where, alpha, r[0], generator)
    return [_points.interpolates(r, f, a, xp)]


def run(
    spec: PenaltySpec | str,
    critic: Callable[..., Any],
    *,
    real: Any = None,
    fake: Any = None,
    weight: float | None = None,
    target: float | None = None,
    ratio: bool = False,
    c: float = 0.5,
    alpha: Any = None,
    noise: Any = None,
    generator: torch.Generator | None = None,
    args: Any = (),
    kwargs: Any = None,
    output: Any = None,
    reduction: str | None = None,
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
    package: str = "gpreg_torch",
    points: str | None = None,
    shape: str | Shape | None = None,
    shape_params: dict[str, Any] | None = None,
    ddof: int = 0,
    perturbation: str = "uniform",
) -> Tensor:
    """Compute the penalty that ``spec`` describes (the body of every public function).

    ``points`` picks one of the spec's ``point_options``; ``shape`` replaces the spec's shape
    (DRAGAN's ``shape=``) and ``shape_params`` sets its parameters (WGAN-div's ``p``);
    ``ddof`` and ``perturbation`` are DRAGAN's. ``package`` only names the caller in error
    messages (gpreg_keras on its torch backend runs this same code).
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    where = f"{package}.{spec.name}"
    if not callable(critic):
        raise TypeError(f"{where}: critic must be callable; got {type(critic).__name__}.")
    shp = resolve_spec_shape(where, spec, shape, shape_params)
    w = v.check_scalar(where, spec.weight_name, spec.default_weight if weight is None else weight)
    t = spec.default_target if target is None else target
    t = v.check_target(where, t, bool(ratio)) if shp.uses_target else float(t)
    red = v.check_reduction(where, spec.default_reduction if reduction is None else reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    if spec.points == "perturbed_real":
        c = v.check_scalar(where, "c", c)
        v.check_choice(where, "perturbation", perturbation, _points.PERTURBATIONS)
    sets = evaluation_points(
        spec, where, real=real, fake=fake, alpha=alpha, noise=noise, c=c, generator=generator,
        points=points, ddof=ddof, perturbation=perturbation, ddp=_is_ddp(critic),
    )
    call = call_options(where, args, kwargs, output, sets[0][0].shape[0])
    evaluated = [(*input_gradients(where, critic, pts, create_graph, scaler, call), pts)
                 for pts in sets]
    return _finish(where, evaluated, shp, check_finite, weight=spec.weight_factor * w,
                   target=t, ratio=bool(ratio), reduction=red, global_batch_size=gbs)


def generic(
    critic: Callable[..., Any],
    points: Any,
    *,
    shape: str | Shape,
    weight: float,
    target: float,
    ratio: bool,
    reduction: str,
    create_graph: bool,
    args: Any = (),
    kwargs: Any = None,
    output: Any = None,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
    package: str = "gpreg_torch",
) -> Tensor:
    """Body of ``gradient_penalty``: a penalty shape at points the caller chose."""
    where = f"{package}.gradient_penalty"
    w = v.check_scalar(where, "weight", weight)
    t = v.check_target(where, target, bool(ratio))
    red = v.check_reduction(where, reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    shape_obj = resolve_shape(where, shape)
    pts = _parts(where, "points", points)
    _check_devices(where, [("points", p) for p in pts])
    call = call_options(where, args, kwargs, output, pts[0].shape[0])
    evaluated = [(*input_gradients(where, critic, pts, create_graph, scaler, call), pts)]
    return _finish(where, evaluated, shape_obj, check_finite, weight=w, target=t,
                   ratio=bool(ratio), reduction=red, global_batch_size=gbs)


def grad_norm(
    critic: Callable[..., Any], points: Any, *, create_graph: bool, where: str, args: Any = (),
    kwargs: Any = None, output: Any = None,
) -> Tensor:
    """Per-sample norms at the given points (body of ``grad_norm``)."""
    pts = _parts(where, "points", points)
    _check_devices(where, [("points", p) for p in pts])
    call = call_options(where, args, kwargs, output, pts[0].shape[0])
    return norms_from_gradients(input_gradients(where, critic, pts, create_graph, None,
                                                call)[0])


def from_scores(
    spec: PenaltySpec | str,
    scores: Tensor,
    points: Any,
    *,
    weight: float | None = None,
    target: float | None = None,
    ratio: bool = False,
    reduction: str | None = None,
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    """A penalty evaluated at ``points`` from ``scores`` the caller already computed there."""
    if isinstance(spec, str):
        spec = get_spec(spec)
    where = f"gpreg_torch.from_scores({spec.name!r})"
    if spec.points not in ("real", "fake"):
        raise ValueError(
            f"{where}: forward reuse needs a penalty evaluated at the data itself (r1, r2 or a "
            f"plugin at 'real'/'fake'); {spec.name} is evaluated at {spec.points}, points the "
            f"adversarial loss never computed scores for."
        )
    parts = tuple(points) if isinstance(points, (tuple, list)) else (points,)
    if not all(isinstance(p, torch.Tensor) and p.requires_grad for p in parts):
        raise ValueError(
            f"{where}: the points must be the tensors the scores were computed from, with "
            f"requires_grad=True set before the critic call: real = real.detach()."
            f"requires_grad_(); scores = critic(real); penalty = from_scores('r1', scores, real)."
        )
    if not isinstance(scores, torch.Tensor):
        raise v.bad_output_type(where, type(scores).__name__, "torch.Tensor")
    v.check_output_shape(where, tuple(scores.shape), parts[0].shape[0])
    w = v.check_scalar(where, spec.weight_name, spec.default_weight if weight is None else weight)
    t = spec.default_target if target is None else target
    t = v.check_target(where, t, bool(ratio)) if spec.uses_target else float(t)
    red = v.check_reduction(where, spec.default_reduction if reduction is None else reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    grads = _gradient_of_scores(where, scores, parts, create_graph, scaler)
    return _finish(where, [(grads, scores, None, parts)], spec.shape_obj, check_finite,
                   weight=spec.weight_factor * w, target=t, ratio=bool(ratio), reduction=red,
                   global_batch_size=gbs)
