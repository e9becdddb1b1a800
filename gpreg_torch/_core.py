"""The one PyTorch-specific piece: the per-sample input gradient, kept differentiable.

Everything else (points, norm, penalty shape, reduction, checks) comes from the core.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import operator
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from gpreg import _call, _math, _options, _points
from gpreg import _validation as v
from gpreg._call import PLAIN, Call
from gpreg._specs import (
    BUILTIN_NAMES,
    PenaltySpec,
    Shape,
    choose_points,
    get_spec,
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


def _signature(x: Any) -> Any:
    """What the checks of points depend on: every part's shape, dtype and device (``None``
    for anything but a tensor or a tuple/list of tensors, which is checked at every call)."""
    if isinstance(x, torch.Tensor):
        return x.shape, x.dtype, x.device
    if isinstance(x, (tuple, list)) and all(isinstance(p, torch.Tensor) for p in x):
        return tuple((p.shape, p.dtype, p.device) for p in x)
    return None


# signatures of points whose checks passed (no tensors are held: shapes, dtypes, devices)
_checked: set[tuple[Any, ...]] = set()


def _remember(key: tuple[Any, ...]) -> None:
    if len(_checked) >= 1024:
        _checked.clear()
    with contextlib.suppress(TypeError):  # symbolic shapes: checked at every call
        _checked.add(key)


def _seen(key: tuple[Any, ...]) -> bool:
    """Whether ``key`` passed the checks before (``False`` for a key that cannot be hashed:
    symbolic shapes under ``torch.compile``)."""
    try:
        return key in _checked
    except TypeError:
        return False


def _detached(x: Any) -> tuple[Tensor, ...]:
    return (x.detach(),) if isinstance(x, torch.Tensor) else tuple(p.detach() for p in x)


def _checked_parts(where: str, role: str, x: Any) -> tuple[Tensor, ...]:
    """:func:`_parts` and the device check, skipped for a signature that passed them."""
    sig = _signature(x)
    key = (where, role, sig)
    if sig is not None and _seen(key):
        return _detached(x)
    parts = _parts(where, role, x)
    _check_devices(where, [(role, t) for t in parts])
    if sig is not None:
        _remember(key)
    return parts


def _checked_real_fake(where: str, real: Any, fake: Any) -> tuple[tuple[Tensor, ...],
                                                                  tuple[Tensor, ...]]:
    """real and fake as parts, checked against each other (shapes, dtypes, devices), the
    checks skipped for a pair of signatures that passed them."""
    sig_r, sig_f = _signature(real), _signature(fake)
    key = (where, "real_fake", sig_r, sig_f)
    if sig_r is not None and sig_f is not None and _seen(key):
        return _detached(real), _detached(fake)
    r = _parts(where, "real", real)
    f = _parts(where, "fake", fake)
    v.check_same_shapes(where, [tuple(t.shape) for t in r], [tuple(t.shape) for t in f])
    for i, (rt, ft) in enumerate(zip(r, f)):
        v.check_same_dtype(where, [(f"real[{i}]", str(rt.dtype)), (f"fake[{i}]", str(ft.dtype))])
    _check_devices(where, [("real", t) for t in r] + [("fake", t) for t in f])
    if sig_r is not None and sig_f is not None:
        _remember(key)
    return r, f


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


def _widest(parts: tuple[Tensor, ...]) -> torch.dtype:
    """The dtype that holds every part's values: α is drawn in it, then rounded per part."""
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _alpha(where: str, alpha: Any, parts: tuple[Tensor, ...],
           generator: torch.Generator | None) -> Tensor:
    like = parts[0]
    batch = like.shape[0]
    dtype = like.dtype if len(parts) == 1 else _widest(parts)
    if alpha is None:
        return torch.rand(batch, generator=generator, device=like.device, dtype=dtype)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return torch.full((batch,), float(alpha), device=like.device, dtype=dtype)
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(
            f"{where}: alpha must be None, a number or a tensor of shape ({batch},); got "
            f"{type(alpha).__name__}."
        )
    v.check_alpha_shape(where, tuple(alpha.shape), batch)
    return alpha.detach().reshape(batch).to(device=like.device, dtype=dtype)


def _in_dtype(alpha: Tensor, part: Tensor) -> Tensor:
    return alpha if alpha.dtype == part.dtype else alpha.to(part.dtype)


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


def _is_compiled(module: Any) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(
        getattr(module, "_orig_mod", None), torch.nn.Module)


def _penalty_module(critic: Any) -> Any:
    """The module to run for the penalty pass.

    ``torch.compile`` goes through AOTAutograd, which does not support double backward
    ("torch.compile with aot_autograd does not currently support double backward"): the
    penalty pass runs the original module (``_orig_mod``), which shares the parameters.
    ``torch.compile(DDP(m))`` thus runs the DDP module eagerly; ``DDP(torch.compile(m))`` is
    handled where the critic is called (:func:`_run_critic`).
    """
    return critic._orig_mod if _is_compiled(critic) else critic


def _run_critic(module: Any, leaves: tuple[Tensor, ...], call: Call) -> Any:
    if _is_ddp(module) and _is_compiled(module.module):
        return _ddp_forward_uncompiled(module, (*leaves, *call.args), call.kwargs)
    return module(*leaves, *call.args, **call.kwargs)


def _ddp_forward_uncompiled(ddp: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
    """``DDP(torch.compile(m))``: DDP's own forward (its reducer must expect this pass's
    gradients, or a penalty-only step is never reduced) around the uncompiled module."""
    inner = ddp.module._orig_mod
    args, kwargs = ddp._pre_forward(*args, **kwargs)
    if getattr(ddp, "_delay_all_reduce_all_params", False):
        out = inner.forward(*args, **kwargs)
    else:
        out = inner(*args, **kwargs)
    return ddp._post_forward(out)


_structure: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned: weakref.WeakSet = weakref.WeakSet()


class _Layers(NamedTuple):
    batchnorms: list[tuple[str, Any]]  # (name, weak reference to the module)
    rnn: bool  # an nn.RNN / LSTM / GRU somewhere
    shards: list[Any]  # weak references to the FSDP2 (fully_shard) modules
    params: tuple[Tensor, ...]  # every parameter, once
    # call signature -> the parameters the input gradient's graph does not reach there
    unreached: dict[Any, tuple[Tensor, ...]]


_NO_LAYERS = _Layers([], False, [], (), {})


def _layers_of(critic: Any) -> _Layers:
    """The critic's BatchNorm modules, whether it has an RNN, its FSDP2 modules and its
    parameters (nothing for a critic that is not a module).

    The walk (``named_modules``: ~0.3 ms on a critic of 140 modules) is cached per critic
    together with every module's class, children and parameters; a call only compares those
    (:class:`_Snapshot`), so a module or parameter added, inserted, replaced or deleted later,
    or a ``fully_shard`` applied later, is seen at the next call.
    """
    if not isinstance(critic, torch.nn.Module):
        return _NO_LAYERS
    entry = _structure.get(critic)
    if entry is not None and entry[0].unchanged(critic):
        return entry[1]
    named = list(critic.named_modules())
    bns = [(n or type(m).__name__, weakref.ref(m)) for n, m in named
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    fsdp = getattr(sys.modules.get("torch.distributed.fsdp"), "FSDPModule", None)
    shards = [weakref.ref(m) for _, m in named if isinstance(m, fsdp)] if fsdp else []
    params = tuple({id(p): p for _, m in named for p in m._parameters.values()
                    if p is not None}.values())
    info = _Layers(bns, any(isinstance(m, torch.nn.RNNBase) for _, m in named), shards,
                   params, {})
    _structure[critic] = (_Snapshot(critic, [m for _, m in named]), info)
    return info


_children_of = operator.attrgetter("_modules")
_parameters_of = operator.attrgetter("_parameters")


class _Snapshot:
    """What a critic's structure was: every module's class, children and parameters.

    :meth:`unchanged` compares them in a few passes that run in C (``map`` over the saved
    modules and their dictionaries): ~1 µs on a small critic. The critic itself is not held
    (the entry that holds this snapshot is keyed by it, weakly); parameters are compared by
    ``id`` (tensors compare elementwise), and the entry holds them, so an id cannot be reused
    while it does.
    """

    __slots__ = ("children", "classes", "modules", "n_params", "params")

    def __init__(self, critic: Any, modules: list[Any]) -> None:
        self.modules = tuple(modules[1:])  # below the critic (named_modules starts with it)
        every = (critic, *self.modules)
        self.classes = tuple(map(type, every))
        # copies of the children dictionaries: a dictionary compares its values by identity
        # first (modules have no __eq__ of their own), so == is the check, in one C pass
        self.children = [dict(d) for d in map(_children_of, every)]
        own = tuple(map(_parameters_of, every))
        self.n_params = tuple(map(len, own))
        self.params = tuple(map(id, itertools.chain.from_iterable(map(dict.values, own))))

    def unchanged(self, critic: Any) -> bool:
        every = (critic, *self.modules)
        try:
            if tuple(map(type, every)) != self.classes or list(
                    map(_children_of, every)) != self.children:
                return False
            own = tuple(map(_parameters_of, every))
            return (tuple(map(len, own)) == self.n_params and tuple(map(
                id, itertools.chain.from_iterable(map(dict.values, own)))) == self.params)
        except (AttributeError, TypeError):  # a dictionary replaced by something else
            return False


@contextlib.contextmanager
def _unsharded_through_backward(shards: list[Any]) -> Iterator[None]:
    """FSDP2 (``fully_shard``) frees the unsharded parameters after every backward, the
    penalty's inner one included, but the caller's backward still runs through that one's
    graph ("setStorage: ... out of bounds for storage of size 0"). They are kept for the
    inner backward only; FSDP frees them after the caller's, as after any step."""
    groups = [g for m in shards for g in m()._get_fsdp_state()._fsdp_param_groups]
    saved = [g.reshard_after_backward for g in groups]
    for g in groups:
        g.reshard_after_backward = False
    try:
        yield
    finally:
        for g, keep in zip(groups, saved):
            g.reshard_after_backward = keep


def _batch_statistics(m: Any) -> bool:
    """Whether a BatchNorm normalizes with the batch's statistics (as its forward decides)."""
    return m.training or (m.running_mean is None and m.running_var is None)


def _warn_batchnorm(where: str, critic: Any, layers: _Layers) -> None:
    """Warn once per critic about batch normalization that uses batch statistics."""
    if not layers.batchnorms or critic in _warned:
        return
    names = [n for n, m in layers.batchnorms if _batch_statistics(m())]
    if names:
        _warned.add(critic)
        warnings.warn(v.batchnorm_message(where, names), v.BatchNormWarning,
                      stacklevel=_user_stacklevel())


_OWN = ("gpreg", "gpreg_torch", "gpreg_keras", "keras", "torch")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning (issued by the caller of this function) at
    the first frame outside gpreg and the frameworks: the user's call, on every path."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OWN:
        frame, level = frame.f_back, level + 1
    return level


def _finite(where: str, what: str, x: Tensor, note: str = "") -> None:
    bad = (~torch.isfinite(x.detach().reshape(x.shape[0], -1))).any(dim=1)
    v.check_finite(where, what, bad.nonzero().flatten().tolist(), note)


def _is_ddp(critic: Any) -> bool:
    return isinstance(critic, torch.nn.parallel.DistributedDataParallel)


class _SharedSwitch:
    """A process-wide backend setting that penalty passes need changed while they run.

    PyTorch's SDPA and cuDNN switches are global, not per thread. Passes that overlap in
    several threads share one change: the first saves the caller's setting and applies the
    pass's (:meth:`_apply`), the last restores the caller's (:meth:`_restore`), so no
    interleaving leaves the setting changed. Used as ``with switch:`` (a plain context
    manager object: a penalty enters it at every call, and a generator-based one cost several
    microseconds more).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: Any = None

    def _apply(self) -> Any:
        """Set the pass's value; return the caller's."""
        raise NotImplementedError

    def _restore(self, saved: Any) -> None:
        raise NotImplementedError

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = self._apply()
            self._users += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._restore(self._saved)


class _Both:
    """Two switches entered together (the first outside)."""

    def __init__(self, outer: _SharedSwitch, inner: _SharedSwitch) -> None:
        self._outer, self._inner = outer, inner

    def __enter__(self) -> None:
        self._outer.__enter__()
        try:
            self._inner.__enter__()
        except BaseException:
            self._outer.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._inner.__exit__(*exc)
        finally:
            self._outer.__exit__(*exc)


def _sdpa_switches() -> tuple[tuple[Callable[[], bool], ...], tuple[Callable[[bool], None], ...]]:
    """The readers and writers of the flash, memory-efficient, cuDNN and math SDPA switches:
    the C functions that ``torch.backends.cuda``'s ``*_sdp_enabled`` / ``enable_*_sdp`` call
    (a penalty reads four and writes eight at every call, and the Python wrappers cost more
    than the switching), or those wrappers where a PyTorch lacks them."""
    c, cuda = torch._C, torch.backends.cuda
    kinds = ("flash", "mem_efficient", "cudnn", "math")
    reads = tuple(getattr(c, f"_get_{k}_sdp_enabled", None) or getattr(cuda, f"{k}_sdp_enabled")
                  for k in kinds)
    writes = tuple(getattr(c, f"_set_sdp_use_{k}", None) or getattr(cuda, f"enable_{k}_sdp")
                   for k in kinds)
    return reads, writes


_SDPA_READ, _SDPA_WRITE = _sdpa_switches()


class _MathAttention(_SharedSwitch):
    """SDPA on its math kernel only (``sdpa_kernel`` sets the same switches and costs more
    per call)."""

    def _apply(self) -> tuple[bool, ...]:
        r0, r1, r2, r3 = _SDPA_READ
        saved = (r0(), r1(), r2(), r3())
        w0, w1, w2, w3 = _SDPA_WRITE
        w0(False)
        w1(False)
        w2(False)
        w3(True)
        return saved

    def _restore(self, saved: tuple[bool, ...]) -> None:
        w0, w1, w2, w3 = _SDPA_WRITE
        s0, s1, s2, s3 = saved
        w0(s0)
        w1(s1)
        w2(s2)
        w3(s3)


class _NoCudnn(_SharedSwitch):
    """cuDNN off (its RNNs have no double backward)."""

    def _apply(self) -> bool:
        saved = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        return saved

    def _restore(self, saved: bool) -> None:
        torch.backends.cudnn.enabled = saved


_math_attention = _MathAttention()
_no_cudnn = _NoCudnn()
_math_attention_no_cudnn = _Both(_math_attention, _no_cudnn)


def _double_backward_kernels(rnn: bool, device: torch.device) -> Any:
    """Kernels with a double backward for the penalty's forward pass (a context manager).

    Flash / memory-efficient / cuDNN attention (CPU and CUDA) have no derivative of their
    backward, so ``scaled_dot_product_attention`` runs its math kernel here; cuDNN RNNs have
    none either ("Double backwards is not supported for CuDNN RNNs"), so cuDNN is off for
    critics that contain an RNN on CUDA. Both only while penalty passes run.
    """
    return _math_attention_no_cudnn if rnn and device.type == "cuda" else _math_attention


def _watched(where: str, points: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The points as leaves that require grad (inference tensors are copied out first)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(_inference_mode(where))
    return tuple((p.clone() if p.is_inference() else p).requires_grad_(True) for p in points)


def _inference_mode(where: str) -> str:
    return (
        f"{where}: called under torch.inference_mode(), where autograd records nothing (and "
        f"torch.enable_grad() cannot switch it back on), so there is no input gradient to "
        f"penalize. Compute the penalty outside inference_mode: for evaluation, under "
        f"torch.no_grad(), where it returns a plain value. Tensors created under "
        f"inference_mode can be passed as they are."
    )


def _inner_scale(where: str, scaler: Any) -> Tensor | float | None:
    """The loss scale for the penalty's inner backward, read without a device sync.

    It is the scaler's current scale, capped at 2**15: float16's largest value is 65504, so
    GradScaler's default 2**16 would seed the inner backward of a float16 critic with Inf.
    The inner backward is unscaled by the same number right after, so any power of two gives
    the same penalty; the scaler's own scale still drives its back-off (a smaller scale is
    used as it is). ``None`` without scaling.
    """
    scaler = _grad_scaler(scaler)  # an Accelerator's or a Lightning plugin's GradScaler
    if scaler is None:
        return None
    if isinstance(scaler, torch.amp.GradScaler):
        if not scaler.is_enabled():
            return None
        current = scaler._get_scale_async()  # a device tensor; None before the first use
        if current is None:
            return min(float(scaler.get_scale()), INNER_SCALE_CAP)  # the initial scale: no sync
        return current.clamp(max=INNER_SCALE_CAP)
    if all(callable(getattr(scaler, k, None)) for k in ("is_enabled", "get_scale")):
        # another scaler with GradScaler's interface (gpreg_keras's view of a Keras one)
        return min(float(scaler.get_scale()), INNER_SCALE_CAP) if scaler.is_enabled() else None
    raise TypeError(
        f"{where}: scaler must be the torch.amp.GradScaler that scales your loss (float16 "
        f"mixed precision), or an accelerate.Accelerator or a Lightning precision plugin "
        f"(trainer.precision_plugin), whose GradScaler is then used; got "
        f"{type(scaler).__name__}"
        + (f" {scaler!r}" if isinstance(scaler, (int, float)) else "")
        + ". gpreg reads its current scale (without a device sync) for the penalty's inner "
        "backward; a fixed scale is a GradScaler(init_scale=..., growth_interval=...). Without "
        "float16, leave scaler=None."
    )


INNER_SCALE_CAP = 2.0**15
"""The largest inner loss scale: the largest power of two below float16's maximum, 65504."""


def input_gradients(
    where: str,
    critic: Callable[..., Any],
    points: tuple[Tensor, ...],
    create_graph: bool,
    scaler: Any = None,
    call: Call = PLAIN,
) -> tuple[tuple[Tensor, ...], Tensor, Tensor | None]:
    """∂(Σ critic outputs)/∂points, one tensor per part, with the graph kept when asked;
    also returns the critic's scores at the points and, for a critic passed as a module, the
    anchor of its zero gradients (the critic's output sum under DDP and FSDP for
    :func:`_zero_term`, else the parameters for :func:`_with_zeros`; ``None`` otherwise and
    without a graph).

    The critic is called as ``critic(*points, *call.args, **call.kwargs)`` and ``call.output``
    picks the scores out of a structured output. Only the points are differentiated
    (``inputs=points``), so no weight gradient is computed here; the parameters are reached
    later, when the caller's loss runs backward. Under ``torch.no_grad()`` no graph is kept
    (the caller gets a plain value). With a ``GradScaler``, the summed output is scaled
    before the inner backward (so float16 gradients do not underflow) and the input gradient
    is unscaled out of place.
    """
    create_graph = create_graph and torch.is_grad_enabled()
    scale = _inner_scale(where, scaler)
    batch = points[0].shape[0]
    module = _penalty_module(critic)
    layers = _layers_of(module)
    _warn_batchnorm(where, module, layers)
    with torch.enable_grad():  # the input gradient needs a graph, even under no_grad
        leaves = _watched(where, points)
        try:
            with _double_backward_kernels(layers.rnn, leaves[0].device):
                raw = _run_critic(module, leaves, call)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            v.annotate_critic_error(where, [tuple(p.shape) for p in leaves], exc)
            raise
        out = raw if call.output is None and isinstance(raw, torch.Tensor) else (
            _call.pick_output(where, raw, call.output, _is_tensor))
        if not isinstance(out, torch.Tensor):
            raise v.bad_output_type(where, type(out).__name__, "torch.Tensor")
        v.check_output_shape(where, tuple(out.shape), batch)
        if not out.requires_grad:
            raise v.independent_critic(where)
        if create_graph and layers.shards:
            with _unsharded_through_backward(layers.shards):
                grads = _gradient_of_scores(where, out, leaves, create_graph, scale)
        else:
            grads = _gradient_of_scores(where, out, leaves, create_graph, scale)
        anchor: Any = None
        if not create_graph or not isinstance(critic, torch.nn.Module):
            pass
        elif _is_ddp(module) or layers.shards:  # the parameters this forward used
            anchor = out.sum() if raw is out else _anchor(raw)
        else:  # the trainable parameters the penalty does not reach, directly
            anchor = tuple(p for p in _unreached(module, layers, leaves, call, grads)
                           if p.requires_grad) or None
        return grads, out, anchor


def _unreached(module: Any, layers: _Layers, leaves: tuple[Tensor, ...], call: Call,
               grads: tuple[Tensor, ...], signature: Any = None) -> tuple[Tensor, ...]:
    """The critic's parameters that the graph of the input gradient does not reach (the last
    layer's bias: the input gradient does not depend on it), for the zero term.

    Which parameters the graph reaches is a matter of the critic's code path: its modules
    (a change to them makes a new :func:`_layers_of` entry, and this cache with it), its mode
    (``training``) and the signature of the call (the points' and the conditioning's shapes,
    dtypes and devices, ``output=``). It is found once per such signature by a walk of the
    graph; a call whose conditioning cannot be a key walks it every time. A critic whose
    code path depends on the *values* of its inputs is the one case this does not see: a
    parameter that one call reached and a later one does not gets no zero in the later one
    (``None`` after a penalty-only backward, as without the zero term).
    """
    key = _call_signature(call)
    if key is not None:
        if signature is None:  # the leaves' (a planned call knows it)
            signature = tuple((p.shape, p.dtype, p.device) for p in leaves)
        key = (signature, module.training, key)
        hit = layers.unreached.get(key)
        if hit is not None:
            return hit
    reached = _reached_leaves(grads)
    found = tuple(p for p in layers.params if id(p) not in reached)
    if key is not None:
        if len(layers.unreached) >= 64:
            layers.unreached.clear()
        layers.unreached[key] = found
    return found


def _call_signature(call: Call) -> Any:
    """``()`` for a plain call; for conditioning, the shapes, dtypes and devices of its
    tensors and the other values as they are, with ``output=``; ``None`` when that cannot be
    a dictionary key."""
    if call is PLAIN or call.plain:
        return ()
    sig = tuple((path, (x.shape, x.dtype, x.device) if isinstance(x, torch.Tensor) else x)
                for path, x in _call.leaves((call.args, call.kwargs), ""))
    key = (sig, call.output)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _reached_leaves(tensors: Sequence[Tensor]) -> set[int]:
    """``id`` of every leaf tensor (parameter) that the autograd graph of ``tensors`` reaches."""
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node
        if leaf is not None:
            found.add(id(leaf))
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def _anchor(raw: Any) -> Tensor | None:
    """Σ of every floating tensor the critic returned (all heads of a structured output)."""
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
    where: str, total: Tensor, leaves: tuple[Tensor, ...], create_graph: bool,
    scale: Tensor | float | None, retain_graph: bool | None = None,
) -> tuple[Tensor, ...]:
    """∂(Σ total)/∂leaves, scaled by ``scale`` before the backward and unscaled after.

    Without a scale, the seed of the backward is ``ones_like(total)`` (the gradient of the
    sum, without the sum's node in the graph that the outer backward runs through again)."""
    if scale is not None:
        total = total.sum() * scale
        seed = None
    else:
        seed = torch.ones_like(total)
    grads = _vjp(total, leaves, seed, create_graph, retain_graph)
    if all(g is None for g in grads):
        raise v.independent_critic(where)
    grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves))
    if scale is not None:
        inv = 1.0 / scale  # out of place: unscale_() is for parameter grads
        grads = tuple(g.to(torch.promote_types(g.dtype, torch.float32)) * inv for g in grads)
    return grads


# the engine call that ends torch.autograd.grad (PyTorch >= 2.3; None before)
_run_backward = getattr(torch.autograd.graph, "_engine_run_backward", None)
_has_torch_function = torch._C._has_torch_function
_ONLY_TENSOR = {Tensor}  # the set of the leaves' types where all are plain tensors


def _vjp(out: Tensor, leaves: tuple[Tensor, ...], seed: Tensor | None, create_graph: bool,
         retain_graph: bool | None = None) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(out, leaves, grad_outputs=seed, create_graph=create_graph,
    retain_graph=retain_graph, allow_unused=True)``, the same engine call with the same
    arguments.

    Where ``seed`` is a tensor of ``out``'s shape and dtype (the callers pass
    ``ones_like(out)``) and no ``__torch_function__`` is in play (plain tensors, no mode),
    the checks ``torch.autograd.grad`` makes in Python before that call (the overrides, the
    seed's shape by ``sym_eq``, its dtype) hold by construction, and the engine is called
    directly: about 9 % of a penalty unit on the tiny benchmark critic. Anything else (a
    tensor subclass, a mode, no seed, a PyTorch without the function) goes through
    ``torch.autograd.grad`` itself.
    """
    if (_run_backward is None or type(out) is not Tensor or type(seed) is not Tensor
            or {*map(type, leaves)} != _ONLY_TENSOR or _has_torch_function((out, seed, *leaves))):
        return torch.autograd.grad(out, leaves, grad_outputs=seed, create_graph=create_graph,
                                   retain_graph=retain_graph, allow_unused=True)
    return _run_backward((out,), (seed,), create_graph if retain_graph is None else retain_graph,
                         create_graph, leaves, True, accumulate_grad=False)


_SCALER_METHODS = ("is_enabled", "scale", "get_scale")


def _grad_scaler(scaler: Any) -> Any:
    """The ``GradScaler`` that ``scaler=`` stands for: the scaler itself, or the one that an
    ``accelerate.Accelerator`` or a Lightning precision plugin holds as ``.scaler`` (``None``
    when they train without one: bf16, 32-bit, or Accelerate's fp16 on a CPU). Anything else
    is returned as it is, for :func:`_inner_scale` to refuse."""
    if scaler is None or all(hasattr(scaler, m) for m in _SCALER_METHODS):
        return scaler
    if hasattr(scaler, "scaler"):  # an Accelerator, Lightning's MixedPrecision
        return scaler.scaler
    if getattr(scaler, "precision", "") != "16-mixed" and any(
            c.__name__ == "Precision" and c.__module__.startswith(
                ("lightning", "pytorch_lightning")) for c in type(scaler).__mro__):
        return None  # Lightning's 32-bit, 64-bit or true-half precision scales nothing
    return scaler


def norms_from_gradients(grads: Sequence[Tensor]) -> Tensor:
    """Exact per-sample norms over every non-batch element of every part, in ≥ float32.

    As the core's :func:`gpreg._math.per_sample_norm`, in fewer kernels. PyTorch's
    ``vector_norm`` is exact wherever the squares of the entries neither underflow (entries
    of 1e-25 in float32) nor overflow (1e19), and its derivative is 0 where the norm is 0 (its
    backward masks the division), so it serves as the NaN-safe norm here. Where the squares
    can leave the float range the gradient is first scaled (:func:`_scaled_norms`). One
    kernel does it where the range cannot be left or can be checked for free: a float16
    gradient (its squares always fit in float32), and on the CPU, where reading the norms
    costs no device sync, a single part whose norms lie in the range where the plain sum of
    squares is exact (:func:`_exact_range`). The zero_grad fixtures test both paths.
    """
    if len(grads) == 1:
        g = grads[0]
        if g.dim() == 1:
            return g.abs() if g.dtype in _ACCURATE else g.abs().to(torch.float32)
        dims = tuple(range(1, g.dim()))
        if g.dtype is torch.float16:
            return torch.linalg.vector_norm(g, dim=dims, dtype=torch.float32)
        if g.device.type == "cpu" and g.dtype in _ACCURATE:
            n = torch.linalg.vector_norm(g, dim=dims)
            if _in_exact_range(n, math.prod(g.shape[1:])):
                return n
    return _scaled_norms(grads)


_ACCURATE = (torch.float32, torch.float64)  # dtypes the norm is computed in


def _exact_range(dtype: torch.dtype, elements: int) -> tuple[float, float]:
    """Norms ``n`` of ``elements`` entries for which the plain sum of squares in ``dtype`` is
    exact: no square overflows (they sum to n², at most max/256), and the squares that
    underflow into subnormals (each off by at most half the subnormal spacing, tiny·eps/2)
    add up to less than eps/4 of n² (n² ≥ 2·elements·tiny)."""
    info = torch.finfo(dtype)
    return math.sqrt(2.0 * elements * info.tiny), math.sqrt(info.max) / 16.0


def _in_exact_range(norms: Tensor, elements: int) -> bool:
    """Whether every norm (NaN aside: a NaN norm is NaN on every path) lies in
    :func:`_exact_range`. Reads the CPU tensor's memory through NumPy (no ATen op, no sync);
    ``False`` for a tensor without plain memory (a functorch wrapper, a fake tensor) and
    while ``torch.compile`` traces (the compiled graph then keeps the scaled norm)."""
    if torch.compiler.is_compiling():
        return False
    try:
        values = norms.detach().numpy()
    except (RuntimeError, TypeError, ValueError):
        return False
    return _within(values, *_exact_range(norms.dtype, elements))


def _within(values: Any, lo: float, hi: float) -> bool:
    """Whether every value that is not NaN lies in [lo, hi] (NaN anywhere in the batch is
    left out of the check alike: the other samples' norms do not depend on where it is)."""
    if values.size <= 256:
        seq = values.tolist()
        total = sum(seq)  # NaN exactly when a norm is (norms are >= 0: no inf - inf)
        if total != total:
            seq = [x for x in seq if x == x]
        return not seq or (lo <= min(seq) and max(seq) <= hi)
    seen = values[~np.isnan(values)]
    return not seen.size or (bool(lo <= seen.min()) and bool(seen.max() <= hi))


def _scaled_norms(grads: Sequence[Tensor]) -> Tensor:
    """The norms of :func:`norms_from_gradients` for any range: each sample's gradient is
    divided by its largest magnitude (a constant, clamped into the normal float range: 0, Inf
    and NaN are then left as they are), so the squares neither underflow nor overflow."""
    acc = torch.float32
    for g in grads:
        acc = torch.promote_types(acc, g.dtype)
    peaks = [g.detach().abs().to(acc) if g.dim() == 1 else torch.linalg.vector_norm(
        g.detach(), ord=float("inf"), dim=tuple(range(1, g.dim())), dtype=acc) for g in grads]
    peak = peaks[0] if len(peaks) == 1 else torch.stack(peaks).amax(dim=0)
    info = torch.finfo(acc)
    scale = peak.clamp(info.tiny, info.max)
    norms = []
    for g in grads:
        u = g / scale.reshape((-1,) + (1,) * (g.dim() - 1))
        norms.append(u.abs() if g.dim() == 1 else torch.linalg.vector_norm(
            u, dim=tuple(range(1, g.dim()))))
    n = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms, 1), dim=1)
    return n * scale


def sq_sums_from_gradients(grads: Sequence[Tensor]) -> Tensor:
    """Per-sample sums of squares over every non-batch element of every part, in ≥ float32:
    the values of a shape with ``of_squares`` (R1, R2, 0-GP, Max-GP; see
    :func:`gpreg._math.squared_of_squares`): the core's :func:`gpreg._math.per_sample_sq_sum`
    of the gradients cast to ≥ float32, a product and a sum per part, with the values of a
    hand-written R1 (StyleGAN2-ADA's ``square().sum()``); no root, so no range check and no
    scaling on any device."""
    return _math.per_sample_sq_sum(
        [g if g.dtype in _ACCURATE else g.to(torch.float32) for g in grads], xp)


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
    """Norms → penalty shape → reduction, plus the zero term on each anchor and the opt-in
    finite checks (each syncs with the device, hence opt-in).

    ``evaluated`` holds one ``(grads, scores, anchor, points)`` per set of evaluation points:
    one set, or the real and the fake samples (``points="real_fake"``), whose per-sample terms
    are averaged. An anchor that is a tensor (the sum of a DDP or FSDP critic's outputs) also
    makes ``reduction="max"`` the maximum over every rank's samples.
    """
    per_sample = []
    squares = shape.of_squares is not None  # no norm needed (R1, R2, 0-GP, Max-GP)
    for grads, out, _, points in evaluated:
        norms = None if squares else norms_from_gradients(grads)
        if check_finite:
            for p in points:
                _finite(where, "an evaluation point (from real/fake)", p)
            _finite(where, "the critic's output", out)
            n = norms_from_gradients([g.detach() for g in grads]) if norms is None else norms
            _finite(where, "the input gradient", n.reshape(-1, 1))
        if squares:
            per_sample.append(shape.from_squares(sq_sums_from_gradients(grads), target=target,
                                                 ratio=ratio, xp=xp))
        else:
            per_sample.append(shape(norms, target=target, ratio=ratio, xp=xp))
    values = (per_sample[0] if len(per_sample) == 1 else _math.real_fake_mean(*per_sample)) * weight
    anchors = [anchor for _, _, anchor, _ in evaluated if anchor is not None]
    distributed = any(isinstance(a, torch.Tensor) for a in anchors)
    for anchor in anchors:
        if not isinstance(anchor, torch.Tensor):
            values = _with_zeros(values, anchor)
    if distributed and reduction == "max" and _dist.active():
        value = _dist.global_max(values)  # the maximum over every rank's samples
    else:
        value = _math.reduce(values, reduction, xp, count=global_batch_size)
    for anchor in anchors:
        if isinstance(anchor, torch.Tensor):
            value = value + _zero_term(anchor, value)
    return value


def _with_zeros(values: Tensor, params: Sequence[Tensor], true: Tensor | None = None) -> Tensor:
    """``values`` (shape (B,)), the same numbers, joined by every parameter in ``params`` so
    that each gets an exact zero gradient.

    The parameters the penalty does not reach (:func:`_unreached`, the last layer's bias)
    get zero gradients this way, as the reference trainers give them (StyleGAN2-ADA's
    ``real_logits * 0``), so that Adam still steps them and ``torch.autograd.grad`` of the
    penalty finds them used. A parameter of one element in the values' dtype and device
    joins through ``where(True, values, p)``: the values themselves, whatever ``p`` holds
    (Inf and NaN included), and a zero gradient for ``p``, in one autograd node. Any other
    parameter is an empty slice concatenated after the values (two nodes, three with a
    cast). Joined before the reduction, so every reduction of the values is unchanged; in
    the autograd engine each node costs about as much as a small kernel on the CPU, and a
    sum of each slice added to the reduced value took two nodes more per parameter.
    ``true`` is a 0-d ``True`` on the values' device, where the caller keeps one.
    """
    empties = []
    for p in params:
        if p.dtype == values.dtype and p.device == values.device and (
                p.dim() == 0 or p.shape == (1,)):
            if true is None:
                true = torch.ones((), dtype=torch.bool, device=values.device)
            values = torch.where(true, values, p)
            continue
        empty = p[:0] if p.dim() == 1 else p.reshape(-1)[:0]
        if empty.dtype != values.dtype or empty.device != values.device:
            empty = empty.to(device=values.device, dtype=values.dtype)
        empties.append(empty)
    return torch.cat([values, *empties]) if empties else values


def _zero_term(anchor: Tensor, like: Tensor) -> Tensor:
    """An exact 0 that hands every parameter of the critic's forward a zero gradient.

    A parameter that the input gradient does not depend on (the last layer's bias) gets no
    gradient from the penalty alone, and DDP waits for a gradient of every parameter used in
    the forward (pytorch#47562). Under DDP and FSDP, ``anchor`` is the sum of the critic's
    outputs: times 0, it reaches the parameters of this forward through a first-order
    backward of it (StyleGAN2-ADA's ``real_logits * 0``). Any other module gets its zeros
    directly, without that backward (:func:`_with_zeros`).
    """
    # cast first: the backward's seed (a GradScaler's 2**16 included) then meets the 0
    # before a float16 cast; nan_to_num keeps an exact 0 when a score is Inf (0*inf = NaN)
    return torch.nan_to_num(anchor.to(like.dtype), nan=0.0, posinf=0.0, neginf=0.0) * 0.0


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
    check_finite: bool = False,
) -> list[tuple[Tensor, ...]]:
    """The sets of points at which ``spec`` evaluates the critic (one, or the real and the
    fake samples for ``points="real_fake"``), from explicit or drawn randomness.

    Every part keeps its own dtype: α is drawn (or converted) in the widest dtype of the
    parts and rounded to each part's own.
    """
    kind = choose_points(where, spec, points)
    if kind == "real":
        return [_checked_parts(where, "real", real)]
    if kind == "fake":
        return [_checked_parts(where, "fake", fake)]
    if kind == "perturbed_real":
        r = _checked_parts(where, "real", real)
        if check_finite:  # before σ, which one bad sample makes NaN for every point
            for p in r:
                _finite(where, "real", p, note=v.DRAGAN_SIGMA_NOTE)
        gaussian = perturbation == "gaussian"
        if gaussian and alpha is not None:
            raise v.unused_alpha(where, "perturbation='gaussian'")
        v.check_ddof(where, ddof, min(t.numel() for t in r))
        a = None if gaussian else _alpha(where, alpha, r, generator)
        u = _noise(where, noise, r, generator, gaussian)
        stats = _dist.GlobalStatistics() if ddp and _dist.active() else xp  # σ over every rank
        return [tuple(_points.dragan_points((p,), None if a is None else _in_dtype(a, p), (n,),
                                            c, stats, ddof=ddof, perturbation=perturbation)[0]
                      for p, n in zip(r, u))]
    r, f = _checked_real_fake(where, real, fake)
    if kind == "real_fake":
        if alpha is not None:
            raise v.unused_alpha(where, "points='real_fake'")
        return [r, f]
    # the core's formula as written (not torch.lerp: its other rounding moves whole training
    # runs, e.g. the demo's, away from the core's and Keras's points)
    a = _alpha(where, alpha, r, generator)
    return [tuple(_points.interpolates((p,), (q,), _in_dtype(a, p), xp)[0]
                  for p, q in zip(r, f))]


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
    key = None
    if (scaler is None and not check_finite and output is None
            and kwargs is None and type(args) is tuple and not args and shape is None
            and not torch.compiler.is_compiling()):
        key = _plan_key(spec if type(spec) is str else _builtin_name(spec), package, real,
                        fake, alpha, points, shape_params, weight, target, ratio, reduction,
                        global_batch_size)
        try:
            plan = _plans.get(key)
        except TypeError:  # an option that cannot be a key (an array): the general path
            plan = key = None
        if plan is not None:
            value = _planned(plan, critic, real, fake, alpha, generator, create_graph)
            if value is not None:
                return value
    if isinstance(spec, str):
        spec = get_spec(spec)
    where = f"{package}.{spec.name}"
    if not callable(critic):
        raise TypeError(f"{where}: critic must be callable; got {type(critic).__name__}.")
    o = _options.penalty_options(where, spec, weight=weight, target=target, ratio=ratio,
                                 reduction=reduction, global_batch_size=global_batch_size,
                                 shape=shape, shape_params=shape_params)
    if spec.points == "perturbed_real":
        c = v.check_scalar(where, "c", c)
        v.check_choice(where, "perturbation", perturbation, _points.PERTURBATIONS)
    sets = evaluation_points(
        spec, where, real=real, fake=fake, alpha=alpha, noise=noise, c=c, generator=generator,
        points=points, ddof=ddof, perturbation=perturbation, ddp=_is_ddp(critic),
        check_finite=check_finite,
    )
    call = call_options(where, args, kwargs, output, sets[0][0].shape[0])
    evaluated = [(*input_gradients(where, critic, pts, create_graph, scaler, call), pts)
                 for pts in sets]
    value = _finish(where, evaluated, o.shape, check_finite, weight=o.weight, target=o.target,
                    ratio=bool(ratio), reduction=o.reduction,
                    global_batch_size=o.global_batch_size)
    if key is not None and len(sets) == 1 and spec.name in BUILTIN_NAMES:
        _remember_plan(key, where, o, sets[0][0], real if spec.points != "fake" else fake)
    return value


# ----------------------------------------------------------------------------- planned calls
# A training loop calls a penalty with the same kinds of inputs at every step. The checks of a
# call depend only on those kinds (the options' values, the points' shapes, dtypes and
# devices, the kind of alpha), so once a call of a kind has passed them, later calls of that
# kind run a straight-line plan: the same operations in the same order as the general path
# above (bitwise the same results), without re-deciding what the checks decided. Whatever
# depends on the critic (its kind, its modules, its mode, its output) is still looked at at
# every call; a call of any other kind (conditioning, scalers, finite checks, DDP, compiled
# or sharded critics, tuples of parts, DRAGAN, real_fake points) takes the general path.


class _Plan(NamedTuple):
    """How a call of one kind runs (compared by identity where it is a key)."""

    where: str
    options: _options.Options
    ratio: bool
    kind: str  # "interpolates", "real" or "fake"
    batch: int
    dtype: torch.dtype
    device: torch.device
    view: tuple[int, ...]  # alpha's shape for broadcasting against a part
    leaves: tuple[Any, ...]  # the leaves' signature (as _unreached keys it)
    alpha: str  # "draw", "number", "tensor" or "as_is" (a tensor of the points' kind)
    dims: tuple[int, ...] | None  # the norm's dimensions where one plain vector_norm is exact
    exact: tuple[float, float]  # and the range in which it is (_exact_range)
    squares: bool  # the shape is a function of the sums of squares (no norm)
    values: Callable[[Tensor], Tensor]  # the shape's function, its options bound
    token: object  # keys the plan's entries in _Layers.unreached (hashed by identity)
    true: Tensor  # a 0-d True on the device, for _with_zeros


_plans: dict[Any, _Plan] = {}
_PLAIN_OPTION = (type(None), bool, int, float, str)
_PLANNED_POINTS = ("interpolates", "real", "fake")


def _plan_key(spec: str, package: str, real: Any, fake: Any, alpha: Any, points: Any,
              shape_params: Any, weight: Any, target: Any, ratio: Any, reduction: Any,
              gbs: Any) -> Any:
    """What the checks of a call depended on, or ``None`` for a call the plans do not take.
    Options enter with their types; only Python scalars and strings are ever planned
    (:func:`_remember_plan`), so a key with anything else finds no plan."""
    if spec is None:
        return None
    if real is not None:
        if type(real) is not Tensor:
            return None
        real = (real.shape, real.dtype, real.device)
    if fake is not None:
        if type(fake) is not Tensor:
            return None
        fake = (fake.shape, fake.dtype, fake.device)
    if type(alpha) is Tensor:
        alpha = (alpha.shape, alpha.dtype, alpha.device)
    elif alpha is not None:
        alpha = type(alpha)
    if shape_params is not None:
        if type(shape_params) is not dict:
            return None
        shape_params = tuple((k, x, type(x)) for k, x in shape_params.items())
    # every value with its type: True == 1 == 1.0 and np.str_("mean") == "mean" hash alike,
    # and only Python's own types are planned
    return (spec, package, weight, type(weight), target, type(target), ratio, type(ratio),
            reduction, type(reduction), gbs, type(gbs), points, type(points), shape_params,
            real, fake, alpha)


def _builtin_name(spec: Any) -> str | None:
    """The name of a built-in spec object (gpreg_keras passes those), else ``None``."""
    name = getattr(spec, "name", None)
    return name if name in BUILTIN_NAMES and get_spec(name) is spec else None


def _remember_plan(key: Any, where: str, o: _options.Options, leaf: Tensor, data: Any) -> None:
    """Keep the plan of a call that passed the general path's checks."""
    try:
        name, weight, target, ratio, reduction, gbs, points, params, alpha = (
            key[0], key[2], key[4], key[6], key[8], key[10], key[12], key[14], key[-1])
        spec = get_spec(name)
        if not all(type(x) in _PLAIN_OPTION for x in (
                weight, target, ratio, reduction, gbs, points, *(p for _, p, _ in params or ()))):
            return  # a tensor or an array: checked, and read, at every call
        if type(ratio) is not bool or (alpha not in (None, int, float) and not isinstance(
                alpha, tuple)):
            return
        if spec.points not in _PLANNED_POINTS or choose_points(where, spec, points) != (
                spec.points) or not isinstance(data, Tensor) or data.dim() < 1:
            return
        alpha_kind = "draw" if alpha is None else "tensor" if isinstance(alpha, tuple) else (
            "number")
        if alpha_kind == "tensor" and tuple(alpha[0]) == (data.shape[0],) and alpha[1:] == (
                data.dtype, data.device):
            alpha_kind = "as_is"
        dims = exact = None
        if leaf.dim() > 1 and leaf.device.type == "cpu" and leaf.dtype in _ACCURATE:
            dims = tuple(range(1, leaf.dim()))
            exact = _exact_range(leaf.dtype, math.prod(leaf.shape[1:]))
        shape = o.shape
        squares = shape.of_squares is not None
        values = functools.partial(shape.of_squares if squares else shape.fn, target=o.target,
                                   ratio=ratio, xp=xp, **dict(shape.params))
        plan = _Plan(where, o, ratio, spec.points, int(data.shape[0]), data.dtype, data.device,
                     (-1,) + (1,) * (data.dim() - 1), ((leaf.shape, leaf.dtype, leaf.device),),
                     alpha_kind, dims, exact or (0.0, 0.0), squares, values, object(),
                     torch.ones((), dtype=torch.bool, device=data.device))
        if len(_plans) >= 256:
            _plans.clear()
        _plans[key] = plan
    except (TypeError, ValueError, KeyError):  # symbolic shapes, anything unexpected
        return


# critic type -> True (a module the plans run), False (another callable), None (the general
# path: DDP, compiled, FSDP2 or anything not callable)
_critic_kinds: dict[type, bool | None] = {}


def _critic_kind(critic: Any) -> bool | None:
    cls = type(critic)
    try:
        return _critic_kinds[cls]
    except KeyError:
        pass
    fsdp = getattr(sys.modules.get("torch.distributed.fsdp"), "FSDPModule", None)
    if isinstance(critic, torch.nn.Module):
        kind = None if _is_ddp(critic) or _is_compiled(critic) or (
            fsdp is not None and isinstance(critic, fsdp)) else True
    else:
        kind = False if callable(critic) else None
    if len(_critic_kinds) >= 256:
        _critic_kinds.clear()
    _critic_kinds[cls] = kind
    return kind


_set_grad_enabled = torch._C._set_grad_enabled


def _planned(plan: _Plan, critic: Any, real: Any, fake: Any, alpha: Any,
             generator: torch.Generator | None, create_graph: bool) -> Tensor | None:
    """The penalty by ``plan``: the general path's operations in its order, inlined (the
    points, :func:`input_gradients`, :func:`norms_from_gradients`, :func:`_finish`), or
    ``None`` (before anything was drawn or called) for a critic the general path must take.
    The critic's errors and the checks of its output are the general path's."""
    module = _critic_kind(critic)
    if module is None or torch.is_inference_mode_enabled():
        return None
    layers = _layers_of(critic) if module else _NO_LAYERS
    if layers.shards:
        return None
    where = plan.where
    if plan.kind == "interpolates":
        # (a detach only where there is a graph to cut: the points are the same numbers)
        r = real.detach() if real.requires_grad else real
        f = fake.detach() if fake.requires_grad else fake
        if plan.alpha == "draw":
            a = torch.rand(plan.batch, generator=generator, device=plan.device, dtype=plan.dtype)
        elif plan.alpha == "number":
            a = torch.full((plan.batch,), float(alpha), device=plan.device, dtype=plan.dtype)
        elif plan.alpha == "as_is":  # (B,) in the points' dtype and device: reshaped below
            a = alpha.detach() if alpha.requires_grad else alpha
        else:
            a = alpha.detach().reshape(plan.batch).to(device=plan.device, dtype=plan.dtype)
        a = a.reshape(plan.view)
        x = a * r + (1.0 - a) * f
    else:
        x = (real if plan.kind == "real" else fake).detach()
    if layers.batchnorms:
        _warn_batchnorm(where, critic, layers)
    grad_was = torch.is_grad_enabled()
    create_graph = create_graph and grad_was
    _set_grad_enabled(True)  # torch.enable_grad(), without its Python context manager
    try:
        leaf = (x.clone() if x.is_inference() else x).requires_grad_(True)
        switch = _double_backward_kernels(layers.rnn, plan.device)
        switch.__enter__()
        try:
            raw = critic(leaf)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            v.annotate_critic_error(where, [tuple(leaf.shape)], exc)
            raise
        finally:
            switch.__exit__(None, None, None)
        out = raw if isinstance(raw, Tensor) else _call.pick_output(where, raw, None, _is_tensor)
        if not isinstance(out, Tensor):
            raise v.bad_output_type(where, type(out).__name__, "torch.Tensor")
        if not out.dim() or out.shape[0] != plan.batch:
            v.check_output_shape(where, tuple(out.shape), plan.batch)
        if not out.requires_grad:
            raise v.independent_critic(where)
        (g,) = _vjp(out, (leaf,), torch.ones_like(out), create_graph)
        if g is None:
            raise v.independent_critic(where)
        anchor = None
        if create_graph and module:
            mode = (plan.token, critic.training)
            found = layers.unreached.get(mode)
            if found is None:  # as _unreached finds it for this signature, then kept here
                found = _unreached(critic, layers, (leaf,), PLAIN, (g,), plan.leaves)
                layers.unreached[mode] = found
            if found:  # (a parameter frozen since is left out)
                anchor = found if len(found) == 1 and found[0].requires_grad else tuple(
                    p for p in found if p.requires_grad)
    finally:
        _set_grad_enabled(grad_was)
    o = plan.options
    if plan.squares:
        values = plan.values(sq_sums_from_gradients((g,))) * o.weight
    else:
        norms = None
        if plan.dims is not None:  # norms_from_gradients' CPU case, with its range known
            norms = torch.linalg.vector_norm(g, dim=plan.dims)
            if not _within(norms.detach().numpy(), *plan.exact):
                norms = None
        if norms is None:
            norms = norms_from_gradients((g,))
        values = plan.values(norms) * o.weight
    if anchor:
        values = _with_zeros(values, anchor, plan.true)
    if o.reduction == "mean" and o.global_batch_size is None:
        return torch.mean(values)  # _math.reduce's first case, inlined
    return _math.reduce(values, o.reduction, xp, count=o.global_batch_size)


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
    o = _options.generic_options(where, shape=shape, weight=weight, target=target, ratio=ratio,
                                 reduction=reduction, global_batch_size=global_batch_size)
    pts = _checked_parts(where, "points", points)
    call = call_options(where, args, kwargs, output, pts[0].shape[0])
    evaluated = [(*input_gradients(where, critic, pts, create_graph, scaler, call), pts)]
    return _finish(where, evaluated, o.shape, check_finite, weight=o.weight, target=o.target,
                   ratio=bool(ratio), reduction=o.reduction,
                   global_batch_size=o.global_batch_size)


def grad_norm(
    critic: Callable[..., Any], points: Any, *, create_graph: bool, where: str, args: Any = (),
    kwargs: Any = None, output: Any = None,
) -> Tensor:
    """Per-sample norms at the given points (body of ``grad_norm``)."""
    pts = _checked_parts(where, "points", points)
    call = call_options(where, args, kwargs, output, pts[0].shape[0])
    grads, _, anchor = input_gradients(where, critic, pts, create_graph, None, call)
    norms = norms_from_gradients(grads)
    if anchor is not None:  # zero per sample: every parameter gets a gradient
        norms = norms + _zero_term(anchor, norms) if isinstance(anchor, torch.Tensor) else (
            _with_zeros(norms, anchor))
    return norms


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
    """A penalty evaluated at ``points`` from ``scores`` the caller already computed there.

    The caller's forward graph is kept (``retain_graph``): the adversarial loss still runs
    backward through it. With a graph, the scores times zero join the value, as in
    StyleGAN2-ADA, so every parameter that produced them gets a gradient (DDP needs one).
    """
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
    computed = [i for i, p in enumerate(parts) if not p.is_leaf]
    if computed:
        raise ValueError(v.from_scores_not_leaf(where, computed[0], len(parts) > 1))
    if not isinstance(scores, torch.Tensor):
        raise v.bad_output_type(where, type(scores).__name__, "torch.Tensor")
    if not scores.requires_grad:
        raise RuntimeError(
            f"{where}: the scores do not require grad: they were computed under "
            f"torch.no_grad() or inference_mode, or detached, so they hold no graph to "
            f"differentiate. Compute them with gradients enabled, from the points with "
            f"requires_grad=True: scores = critic(real)."
        )
    v.check_output_shape(where, tuple(scores.shape), parts[0].shape[0])
    w = v.check_scalar(where, spec.weight_name, spec.default_weight if weight is None else weight)
    t = spec.default_target if target is None else target
    t = v.check_target(where, t, bool(ratio)) if spec.uses_target else float(t)
    red = v.check_reduction(where, spec.default_reduction if reduction is None else reduction)
    gbs = v.check_global_batch_size(where, red, global_batch_size)
    scale = _inner_scale(where, scaler)
    create_graph = create_graph and torch.is_grad_enabled()
    total = scores.sum()
    grads = _gradient_of_scores(where, total, parts, create_graph, scale, retain_graph=True)
    anchor = total if create_graph else None
    return _finish(where, [(grads, scores, anchor, parts)], spec.shape_obj, check_finite,
                   weight=spec.weight_factor * w, target=t, ratio=bool(ratio), reduction=red,
                   global_batch_size=gbs)
