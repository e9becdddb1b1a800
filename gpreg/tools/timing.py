"""Paired, interleaved timing: the harness of ``python -m benchmarks`` and ``gpreg cost``.

A *group* is a list of variants that do comparable work on the same critic, batch and thread
count (for example gpreg's WGAN-GP and two hand-written WGAN-GPs). Each variant is warmed
up, then the group is timed in *rounds*: in every round each variant is timed once, in an
order shuffled per round (seeded); a sample is ``inner`` back-to-back calls of the variant
(enough to last ``min_sample_s``), divided by ``inner``. A variant
is compared with the group's baseline by the ratio of their samples *in the same round*
(a per-pair ratio), so slow drifts of the machine (frequency, other processes) cancel to
first order; the report gives the median of those ratios and their min and max.
"""

from __future__ import annotations

import gc
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpreg.tools._env import xla_one_thread


@dataclass
class Variant:
    """One timed unit: ``fn()`` does the work once (its result is discarded)."""

    name: str
    fn: Callable[[], Any]


@dataclass
class GroupResult:
    """Per-call times (seconds) of every variant of a group, one sample per round."""

    samples: dict[str, list[float]]
    inner: dict[str, int]
    rounds: int
    warmup: int
    order_seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def median_s(self, name: str) -> float:
        """Median per-call time of ``name`` over the rounds."""
        return statistics.median(self.samples[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per-round ratios ``time(name) / time(baseline)``."""
        return [a / b for a, b in zip(self.samples[name], self.samples[baseline])]

    def ratio_stats(self, name: str, baseline: str) -> dict[str, float]:
        """Median, min and max of the per-round ratios of ``name`` over ``baseline``."""
        r = self.ratios(name, baseline)
        return {"median": statistics.median(r), "min": min(r), "max": max(r)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready record: medians and spreads in milliseconds, and the raw samples."""
        out: dict[str, Any] = {
            "rounds": self.rounds,
            "inner": self.inner,
            "warmup": self.warmup,
            "median_ms": {k: 1e3 * self.median_s(k) for k in self.samples},
            "min_ms": {k: 1e3 * min(v) for k, v in self.samples.items()},
            "max_ms": {k: 1e3 * max(v) for k, v in self.samples.items()},
            "samples_ms": {k: [round(1e3 * s, 4) for s in v] for k, v in self.samples.items()},
        }
        out.update(self.extra)
        return out


def _sample(fn: Callable[[], Any], inner: int, sync: Callable[[], None],
            clock: Callable[[], float] | None = None) -> float:
    """Seconds per call of ``inner`` back-to-back calls of ``fn`` (GC off while timing);
    ``clock`` defaults to ``time.perf_counter``, looked up at each call."""
    clock = clock or time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        sync()
        t0 = clock()
        for _ in range(inner):
            fn()
        sync()
        return (clock() - t0) / inner
    finally:
        if gc_was_enabled:
            gc.enable()


def _no_sync() -> None:
    return None


def time_group(
    variants: Sequence[Variant],
    *,
    rounds: int,
    warmup: int,
    min_sample_s: float,
    sync: Callable[[], None] | None = None,
    seed: int = 0,
    max_inner: int = 1000,
    on_round: Callable[[int, int], None] | None = None,
) -> GroupResult:
    """Time ``variants`` paired and interleaved; see the module docstring for the method.

    Args:
        variants: the units to compare; names must be distinct.
        rounds: number of rounds (samples per variant).
        warmup: untimed calls of each variant before timing (interleaved too).
        min_sample_s: each sample lasts at least about this long: a variant's ``inner``
            (calls per sample) is chosen from its warm time; 0 means one call per sample.
        sync: called before and after each sample (``torch.cuda.synchronize`` on a GPU;
            JAX/TF results are blocked on inside ``fn`` itself).
        seed: seed of the per-round shuffle of the order.
        max_inner: upper bound on ``inner``.
        on_round: called as ``on_round(done, rounds)`` after each round (progress).

    Returns:
        The per-call times of each variant, one per round.
    """
    meter = LoadMeter()
    meter.start()
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be distinct, got {names}")
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    do_sync = sync or _no_sync
    for _ in range(warmup):
        for v in variants:
            v.fn()
    do_sync()
    inner = dict.fromkeys(names, 1)
    if min_sample_s > 0:
        # Calibrate on one more (untimed) call of each variant.
        for v in variants:
            single = _sample(v.fn, 1, do_sync)
            inner[v.name] = max(1, min(max_inner, math.ceil(min_sample_s / max(single, 1e-9))))
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {n: [] for n in names}
    order = list(variants)
    for done in range(1, rounds + 1):
        rng.shuffle(order)
        gc.collect()
        for v in order:
            samples[v.name].append(_sample(v.fn, inner[v.name], do_sync))
        if on_round is not None:
            on_round(done, rounds)
    return GroupResult(samples=samples, inner=inner, rounds=rounds, warmup=warmup,
                       order_seed=seed, extra=meter.stop())


class LoadMeter:
    """How busy the machine was *besides this process* while a group ran (Linux only).

    ``background_cores`` = (CPU time every process spent, from /proc/stat, minus this
    process's own CPU time) / wall time: 0 on a quiet machine, 1.0 when other work kept one
    core busy throughout. On a shared machine this is the first thing to read next to a
    timing. ``None`` where /proc/stat is unavailable.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks  # all but idle and iowait
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return time.perf_counter(), busy, own

    def start(self) -> None:
        """Begin a measurement window."""
        self._start = self._read()

    def stop(self) -> dict[str, float | None]:
        """End the window: average busy cores of other processes and of this one."""
        end = self._read()
        if self._start is None or end is None:
            return {"background_cores": None, "own_cores": None}
        wall = max(end[0] - self._start[0], 1e-9)
        busy = (end[1] - self._start[1]) / wall
        own = (end[2] - self._start[2]) / wall
        return {"background_cores": round(max(busy - own, 0.0), 2), "own_cores": round(own, 2)}


def usable_cores() -> int:
    """Cores this process may run on (affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def background_load(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other processes over ``seconds`` (None where unmeasurable)."""
    meter = LoadMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop()["background_cores"]


def choose_threads(bg: float | None, cores: int | None = None) -> tuple[int, str]:
    """The thread count for a framework on this machine, and why: every usable core, less
    the cores other processes keep busy (``bg``, from :func:`background_load`).

    OpenMP threads that lose their core to another process stall every parallel region
    (seen on a shared 2-core machine: a step 13x slower with 2 threads on 2 busy cores).
    """
    cores = usable_cores() if cores is None else cores
    if bg is not None and bg > 0.5 and cores > 1:
        n = max(1, cores - round(bg))
        return n, f"{cores} usable cores, {bg} kept busy by other processes"
    return cores, "usable cores"


def limit_threads(framework: str, threads: int) -> dict[str, Any]:
    """Run ``framework`` (``"torch"``, ``"tensorflow"`` or ``"jax"``) on ``threads`` CPU
    threads, and say what was done. Call it before the framework computes anything; for JAX,
    before it is imported (XLA reads its flags once): one thread sets XLA's single-thread
    flags, more threads than one but fewer than the usable cores pin the process to that many
    cores."""
    done: dict[str, Any] = {"requested": threads}
    if framework == "jax":
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if threads == 1:
            done["xla_flags"] = xla_one_thread()
        elif cores and threads < len(cores):
            os.sched_setaffinity(0, cores[:threads])
            done["affinity"] = cores[:threads]
    elif framework == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        done["intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        done["inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif framework == "torch":
        import torch

        torch.set_num_threads(threads)
        done["intra_op"] = torch.get_num_threads()
    else:
        raise ValueError(f"unknown framework {framework!r}; expected torch, tensorflow or jax")
    return done
