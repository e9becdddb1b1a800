"""``gpreg_torch.cost``: what each penalty costs on the user's critic, in eager PyTorch.

The steps are built here and timed by :mod:`gpreg.tools.cost`; the FLOP counter and the
memory measure are shared with ``python -m benchmarks``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from gpreg import _call
from gpreg.tools import cost as tc
from gpreg_torch import _core
from gpreg_torch._penalties import from_scores, get_penalty

WHERE = "gpreg_torch.cost"

FLOP_METHOD = ("matmul and convolution FLOPs of one step, forward and every backward "
               "(torch.utils.flop_counter.FlopCounterMode)")


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: everything counts under 'Global'.

    The tracker's backward hooks raise "A leaf node was passed to _will_engine_execute_node
    but we are currently running autograd.grad()" on the penalties' inner autograd.grad, and
    the per-module breakdown is not needed here.
    """

    parents: frozenset[str] = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul/convolution/attention FLOPs of one call of ``fn`` (forward and all backwards)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


def memory_method(device: str) -> str:
    """How :func:`peak_memory_bytes` measures on ``device``, in words."""
    if device.startswith("cuda"):
        return ("peak tensor memory allocated during one step above what was allocated "
                "before it (torch.cuda.max_memory_allocated); parameters, optimizer state "
                "and the batch are not counted")
    return ("peak tensor memory allocated during one step and live together, above what "
            "existed before it, from torch.profiler's memory events (the CPU allocator's "
            "allocations and frees); parameters, optimizer state and the batch are not counted")


#: what the profiler's C++ side writes to stderr on every start and stop
_CHATTER = ("SyncActivityProfilerHandler", "allocated before the profiling started")


@contextlib.contextmanager
def _profiler_chatter_dropped() -> Iterator[None]:
    """Drop the profiler's own start/stop lines from stderr (file descriptor 2) while it runs;
    every other line written there is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebooks): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(True)
                    if not any(c in line for c in _CHATTER)]
            if kept:
                sys.stderr.write("".join(kept))


def peak_memory_bytes(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes of tensor memory allocated *during* one call of ``fn`` and live together.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start. CPU: the
    "Total Allocated" counter of torch.profiler's memory events (``profile_memory=True``),
    which follows the CPU allocator's allocations and frees of blocks allocated inside the
    window; its maximum above its value at the start is the same quantity. Memory that
    existed before the call (parameters, optimizer state, the batch) is not counted.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with _profiler_chatter_dropped(), profile(activities=[ProfilerActivity.CPU],
                                              profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    mem = [e["args"] for e in events if e.get("name") == "[memory]"
           and e.get("args", {}).get("Device Type") == 0]
    if not mem:
        return 0
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return int(max(m["Total Allocated"] for m in mem) - start)


def _describe(critic: Any, params: Sequence[torch.Tensor]) -> str:
    n = sum(p.numel() for p in params)
    return f"{type(critic).__name__} ({n:,} parameters)"


def _device(parts: Sequence[torch.Tensor]) -> str:
    dev = parts[0].device
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


class _Saved:
    """The critic's parameters and buffers, their gradients and the optimizer's state, put
    back after measuring (the measured steps update them)."""

    def __init__(self, critic: Any, params: Sequence[torch.Tensor],
                 optimizer: torch.optim.Optimizer) -> None:
        buffers = list(critic.buffers()) if isinstance(critic, torch.nn.Module) else []
        self.tensors = [*params, *buffers]
        self.values = [t.detach().clone() for t in self.tensors]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        self.params = list(params)
        self.optimizer = optimizer
        self.opt_state = _clone_state(optimizer.state_dict())

    def restore(self) -> None:
        with torch.no_grad():
            for t, v in zip(self.tensors, self.values):
                t.copy_(v)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.optimizer.load_state_dict(self.opt_state)


def _clone_state(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_state(v) for v in obj)
    return obj


def cost(
    critic: Any,
    real: Any,
    fake: Any = None,
    *,
    penalties: Sequence[str] | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Any = None,
    optimizer: Any = None,
    lazy: Sequence[int] = (4, 8, 16),
    rounds: int = 11,
    warmup: int = 1,
    min_sample_s: float = 0.05,
    flops: bool = True,
    memory: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tc.CostReport:
    r"""What each penalty costs on your critic, batch and device (PyTorch), and the levers.

    Times the critic *step* training runs — zero the gradients, the WGAN loss
    :math:`\frac{1}{B}\sum D(\tilde x) - \frac{1}{B}\sum D(x)`, its gradient, an optimizer
    step — without a penalty (*plain*) and with each penalty added to the loss, paired and
    interleaved: in every round each step is timed once, in a shuffled order, and a ratio is
    the median of the per-round ratios, with their min and max. The plain step is also timed
    against itself (the *control*): its spread is the noise floor, and a difference inside it
    is not a difference. Beside the times: the ratio of the steps' matmul and convolution
    FLOPs, and of their peak memory. The levers:

    - *lazy regularization* (StyleGAN2): the penalty only every :math:`N`-th batch, as a step
      of its own (the penalty, its gradient, an optimizer step: the *alone* step, timed too),
      costs :math:`(N \cdot t_\text{plain} + t_\text{alone}) / (N \cdot t_\text{plain})` per
      batch against the plain step, for each :math:`N` in ``lazy``;
    - *forward reuse*: R1 and R2 also get a ``from_scores`` step, the penalty taken from
      the scores of the adversarial loss's own forward pass (:func:`from_scores`), and the
      share of the penalized step it saves.

    Every step runs eagerly, as written (``torch.compile`` has no double backward);
    on CUDA each timed sample is bracketed by ``torch.cuda.synchronize``. FLOPs are
    ``torch.utils.flop_counter``'s matmul and convolution count; memory is the peak tensor
    memory a step allocates (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the memory
    events of ``torch.profiler``, which follow the CPU allocator).

    The critic's parameters, buffers and gradients and the optimizer's state are restored
    afterwards: measuring does not train the critic.

    Args:
        critic: the critic, as in :func:`wgan_gp` (the module or model itself: its
            parameters are what the step's optimizer updates).
        real: a real batch (a tensor, or a tuple of tensors for a multi-input critic), of the
            size you train with.
        fake: a generated batch of the same shape; ``None`` uses ``real`` rolled by one
            sample (the cost does not depend on the values).
        penalties: the penalties to measure, by name (any registered name); ``None``:
            ``wgan_gp`` and ``r1``, one evaluated at new points and one at the data.
        args, kwargs, output: as in :func:`wgan_gp`; passed to every critic call of the plain
            step and of the penalty steps.
        optimizer: a ``torch.optim.Optimizer`` over the critic's parameters; ``None``: Adam (lr
            1e-4, betas (0, 0.9)), WGAN-GP's.
        lazy: the intervals :math:`N` of the lazy-regularization lever; ``()`` skips it (and
            the alone steps).
        rounds: timed rounds (each step once per round; 11 by default, 3 for a quick look).
        warmup: untimed calls of every step after its first call (the first call, which
            traces and compiles where the framework does, is timed and reported apart).
        min_sample_s: a timed sample repeats a step until it lasts about this long (0: one
            step per sample).
        flops: count the FLOPs of each step.
        memory: measure the peak memory of each step.
        seed: seed of the penalties' random draws and of the order of the steps in a round.
        progress: called with a short message at each stage (``gpreg cost`` prints them to
            stderr).

    Returns:
        A :class:`gpreg.tools.cost.CostReport`: ``summary()`` is the table (one row per step)
        with the one-line ``reading()``; ``report["wgan_gp"]`` has one penalty's ratios
        (``ratio``, ``flop_ratio``, ``memory_ratio``, ``lazy[N]``, ``reuse_saving``);
        ``to_dict()`` is JSON-ready.

    Raises:
        ValueError: an empty ``penalties``, a bad ``lazy`` interval, ``rounds`` < 1, and as in
            :func:`wgan_gp`.
        KeyError: an unknown penalty name (``gpreg.UnknownPenaltyError``).
        TypeError: a critic without parameters and no ``optimizer``, and as in
            :func:`wgan_gp`.

    Example:
        >>> import torch, gpreg_torch as gp
        >>> critic = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LeakyReLU(0.2),
        ...                              torch.nn.Linear(16, 1))
        >>> report = gp.cost(critic, torch.randn(32, 8), rounds=3, min_sample_s=0, memory=False)
        >>> print(report.summary())                                # doctest: +SKIP
        >>> round(report["wgan_gp"].flop_ratio, 2)                 # matmul FLOPs vs plain
        2.34
    """
    names, intervals = tc.check_options(WHERE, penalties, lazy, rounds, warmup, min_sample_s)
    real_parts = _core._parts(WHERE, "real", real)
    if fake is None:
        fake = type(real)(torch.roll(p, 1, 0) for p in real_parts) if isinstance(
            real, (tuple, list)) else torch.roll(real_parts[0], 1, 0)
    fake_parts = _core._parts(WHERE, "fake", fake)
    batch = int(real_parts[0].shape[0])
    call = _core.call_options(WHERE, args, kwargs, output, batch)
    if optimizer is None:
        if not isinstance(critic, torch.nn.Module):
            raise TypeError(
                f"{WHERE}: the critic is a {type(critic).__name__}, not a torch.nn.Module, so "
                f"there are no parameters for the step's optimizer to update. Pass the module "
                f"itself (with args= for conditioning), or optimizer= over its parameters.")
        params = [p for p in critic.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-4, betas=(0.0, 0.9))
        opt_desc = "Adam (lr 1e-4, betas (0, 0.9))"
    else:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{WHERE}: optimizer must be a torch.optim.Optimizer over the "
                            f"critic's parameters; got {type(optimizer).__name__}.")
        opt = optimizer
        params = [p for group in opt.param_groups for p in group["params"]]
        opt_desc = type(optimizer).__name__
    device = str(real_parts[0].device)
    generator = torch.Generator(device=real_parts[0].device).manual_seed(seed)

    def scores(parts: Sequence[torch.Tensor], module: Any = critic) -> torch.Tensor:
        raw = module(*parts, *call.args, **call.kwargs)
        return raw if call.output is None and isinstance(raw, torch.Tensor) else (
            _call.pick_output(WHERE, raw, call.output, _core._is_tensor))

    def adversarial() -> torch.Tensor:
        return scores(fake_parts).mean() - scores(real_parts).mean()

    data = {"real": real, "fake": fake}

    def penalty(name: str) -> Callable[[], torch.Tensor]:
        fn = get_penalty(name)
        pos = [data[r] for r in tc.data_roles(name)]
        opts: dict[str, Any] = {"args": args, "kwargs": kwargs, "output": output}
        if tc.draws(name):
            opts["generator"] = generator
        return lambda: fn(critic, *pos, **opts)

    def reuse(name: str) -> Callable[[], torch.Tensor]:
        at_real = tc.data_roles(name) == ("real",)
        module = _core._penalty_module(critic)  # a compiled critic has no double backward

        def loss() -> torch.Tensor:
            pts = tuple(p.detach().requires_grad_() for p in (
                real_parts if at_real else fake_parts))
            s = scores(pts, module)
            other = scores(fake_parts if at_real else real_parts, module).mean()
            adv = other - s.mean() if at_real else s.mean() - other
            return adv + from_scores(name, s, pts if len(pts) > 1 else pts[0])
        return loss

    def step(loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()
        return run

    steps: dict[str, Callable[[], None]] = {"plain": step(adversarial)}
    for name in names:
        pen = penalty(name)
        steps[name] = step(lambda pen=pen: adversarial() + pen())
    if intervals:
        for name in names:
            steps[f"{name} alone"] = step(penalty(name))
    for name in names:
        if tc.reusable(name):
            steps[f"{name} from_scores"] = step(reuse(name))
    cuda = device.startswith("cuda")
    info = tc.Info(
        framework="torch", mode="eager", device=_device(real_parts),
        critic=_describe(critic, params), batch=batch, optimizer=opt_desc,
        threads="CUDA" if cuda else tc.threads_text(torch.get_num_threads()),
        flop_method=FLOP_METHOD if flops else None,
        memory_method=memory_method(device) if memory else None)
    saved = _Saved(critic, params, opt)
    try:
        return tc.measure(
            steps=steps, penalties=names, lazy=intervals, rounds=rounds, warmup=warmup,
            min_sample_s=min_sample_s, info=info,
            sync=torch.cuda.synchronize if cuda else None,
            flops=(lambda n: count_flops(steps[n])) if flops else None,
            memory=(lambda n: peak_memory_bytes(steps[n], device)) if memory else None,
            seed=seed, progress=progress)
    finally:
        saved.restore()
