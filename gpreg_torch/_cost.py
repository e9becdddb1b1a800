"""PyTorch's FLOP counter and peak-memory measure of one step, shared with
``python -m benchmarks``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

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
