"""``gpreg demo``: train a small GAN on 2-D toy data once per penalty and once without, print
a metrics table and write one PNG gallery.

Every run uses the same networks (MLPs with 3 hidden ReLU layers), the same initial weights,
the same data stream and the same optimizer (Adam); only the penalty — and, for R1/R2, the
loss — differs. The interpolate and DRAGAN penalties and "none" train with the WGAN loss, R1
and R2 with the non-saturating loss they were analysed with (see
:func:`gpreg.tools.demo._common.loss_kind`). Every penalty takes gpreg's default weight.

The metrics (definitions in :mod:`gpreg.tools.demo._data`): modes covered, the share of
high-quality samples (within 3 σ of a mode centre), the mean gradient norm of the critic at
interpolates of data and generated samples, and the training wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gpreg.tools._env import tensorflow_logs_filtered, xla_one_thread
from gpreg.tools._text import name_list, render_table
from gpreg.tools.demo._common import CHOICES, Config, Run
from gpreg.tools.demo._data import DATASETS, dataset, quality

__all__ = ["CHOICES", "Progress", "RunFailed", "add_arguments", "main", "metrics_table",
           "train_all"]

BACKENDS = ("torch", "keras")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_OUT = "gpreg-demo.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Config()
    p.add_argument("--penalties", default=",".join(CHOICES),
                   help=f"comma-separated subset of: {', '.join(CHOICES)} (default: all)")
    p.add_argument("--backend", default="torch",
                   help="torch (gpreg_torch, default) or keras (gpreg_keras on the backend "
                        "KERAS_BACKEND names)")
    p.add_argument("--data", default=d.data,
                   help=f"{' or '.join(DATASETS)}: 8 Gaussians on a circle (default) or a 5×5 "
                        "grid of Gaussians (much harder for these small networks: with seed 0, "
                        "no run covered more than 2 of its 25 modes in 800 steps, R1 covered 7 "
                        "in 4000)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"generator steps per run, each after {d.n_critic} critic steps "
                        f"(default {d.steps})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of everything (default 0)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at the same time, each in its own process and on one "
                        "core (default: as many as there are CPU cores, at most the number of "
                        "runs; 1 trains them one after another in this process)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"where to write the PNG gallery (default: {DEFAULT_OUT} in the "
                        "current folder)")


class Progress:
    """Plain-text progress of several concurrent runs on ``stream``: on a terminal one line
    redrawn in place (one bar per active run), otherwise a line per run at every quarter."""

    def __init__(self, labels: list[str], total: int, stream: TextIO | None = None,
                 width: int = 20) -> None:
        stream = sys.stderr if stream is None else stream  # the one in use now
        self.labels, self.total, self.stream, self.width = labels, total, stream, width
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.done: dict[int, tuple[int, float]] = {}
        self.finished: set[int] = set()
        self.shown = 0.0
        self.t0 = time.perf_counter()

    def _bar(self, frac: float) -> str:
        filled = int(self.width * frac)
        return "#" * filled + "-" * (self.width - filled)

    def status_line(self, elapsed: float) -> str:
        """The redrawn terminal line: a bar per active run, or percentages when bars do not
        fit the terminal's width (a wrapped line could not be redrawn in place)."""
        active = sorted(j for j in self.done if j not in self.finished)
        tail = f"  {len(self.finished)}/{len(self.labels)} done, {elapsed:.0f} s"
        columns = shutil.get_terminal_size((80, 24)).columns - 1
        bars = "  ".join(f"{self.labels[j]} |{self._bar(self.done[j][0] / self.total)}|"
                         for j in active)
        if len(bars) + len(tail) <= columns:
            return bars + tail
        short = " ".join(f"{self.labels[j]} {100 * self.done[j][0] // self.total}%"
                         for j in active)
        return f"{tail.strip()}: {short}"[:columns]

    def update(self, i: int, done: int, seconds: float) -> None:
        """Run ``i`` has finished ``done`` of its steps after ``seconds``."""
        before = self.done.get(i, (0, 0.0))[0]
        self.done[i] = (done, seconds)
        name = f"[{i + 1}/{len(self.labels)}] {self.labels[i]:<7s}"
        if done == self.total:
            self.finished.add(i)
            line = f"{name} |{self._bar(1.0)}| {done}/{self.total} steps in {seconds:.1f} s"
            self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        elif self.tty:
            now = time.perf_counter()
            if now - self.shown < 0.2:
                return
            self.shown = now
            self.stream.write("\r\033[K" + self.status_line(now - self.t0))
        elif int(4 * done / self.total) > int(4 * before / self.total) or before == 0:
            eta = seconds / done * (self.total - done)
            self.stream.write(f"{name} |{self._bar(done / self.total)}| {done}/{self.total} "
                              f"steps, {seconds:.1f} s, about {eta:.0f} s left\n")
        self.stream.flush()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


# --- training every run, in this process or in a pool of worker processes -----------------
class RunFailed(RuntimeError):
    """One training run raised, or its worker process died; names the penalty."""

    def __init__(self, penalty: str, detail: str) -> None:
        super().__init__(f"the {penalty} run failed: {detail}")
        self.penalty = penalty


def one_thread_environment() -> None:
    """Ask every framework a run may start for one intra-op thread: the torch and TensorFlow
    loops set it in their own process (``_torch.deterministic``, ``_keras._one_thread``); JAX
    reads its flags only when it starts, so they go into ``XLA_FLAGS`` (inherited by the
    worker processes) before anything imports it."""
    xla_one_thread()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _run_in_process(messages: Any, backend_name: str, runs: list[tuple[int, str]],
                    cfg: Config) -> None:
    """A worker process: its share of the runs, one after another, reported on ``messages``
    as ``("progress", i, done, seconds)``, then ``("done", i, run)`` or ``("failed", i,
    description)`` (after which it stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    for i, penalty in runs:
        try:
            run = _backend(backend_name).train(
                penalty, cfg, dataset(cfg.data),
                lambda done, seconds, i=i: messages.put(("progress", i, done, seconds)))
        except BaseException as exc:
            messages.put(("failed", i, _describe(exc)))
            return
        messages.put(("done", i, run))


def train_all(backend_name: str, penalties: list[str], cfg: Config, jobs: int,
              progress: Progress) -> list[Run]:
    """One run per penalty; ``jobs`` > 1 trains that many at a time in as many worker
    processes, run ``i`` in worker ``i % jobs`` (each run is seeded on its own and
    single-threaded, so the results do not depend on ``jobs``). A run that raises, or whose
    worker process dies, raises :class:`RunFailed` as soon as it is known; the other runs
    are stopped."""
    if jobs <= 1:
        backend = _backend(backend_name)
        runs = []
        for i, p in enumerate(penalties):
            try:
                runs.append(backend.train(
                    p, cfg, dataset(cfg.data),
                    lambda done, seconds, i=i: progress.update(i, done, seconds)))
            except Exception as exc:
                raise RunFailed(p, _describe(exc)) from exc
        return runs
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked framework thread pools
    messages = ctx.Queue()
    shares = [[(i, p) for i, p in enumerate(penalties) if i % jobs == k] for k in range(jobs)]
    workers = [ctx.Process(target=_run_in_process, args=(messages, backend_name, share, cfg),
                           daemon=True) for share in shares]
    results: dict[int, Run] = {}

    def handle(message: tuple[Any, ...]) -> None:
        kind, i, *rest = message
        if kind == "progress":
            progress.update(i, *rest)
        elif kind == "done":
            results[i] = rest[0]
            if i not in progress.finished:  # a last progress message may have been skipped
                progress.update(i, cfg.steps, results[i].wall_s)
        else:
            raise RunFailed(penalties[i], rest[0])

    def unfinished(k: int) -> list[int]:
        return [i for i, _ in shares[k] if i not in results]

    try:
        for w in workers:
            w.start()
        while len(results) < len(penalties):
            with contextlib.suppress(queue_module.Empty):
                handle(messages.get(timeout=0.1))
            for k, w in enumerate(workers):
                if w.is_alive() or not unfinished(k):
                    continue
                # an exited worker's last messages are already in the pipe, ahead of what
                # the others send now: read on for a moment (they never pause)
                deadline = time.monotonic() + 2.0
                with contextlib.suppress(queue_module.Empty):
                    while unfinished(k) and time.monotonic() < deadline:
                        handle(messages.get(timeout=0.5))
                if unfinished(k):
                    raise RunFailed(penalties[unfinished(k)[0]], f"its worker process ended "
                                                                 f"with exit code {w.exitcode}")
        return [results[i] for i in range(len(penalties))]
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
        for w in workers:
            if w.pid is not None:
                w.join(timeout=10)


def metrics_table(runs: list[Run], data_name: str) -> str:
    """The metrics table ``gpreg demo`` prints (one line per run)."""
    data = dataset(data_name)
    head = ["penalty", "loss", "modes covered", "high-quality", "mean ‖∇D‖ interp.", "wall time"]
    body = []
    for r in runs:
        q = quality(r.samples, data)
        mean = float(r.interp_norms.mean())
        body.append([r.penalty, r.loss, f"{q.modes_covered}/{q.modes}",
                     f"{100 * q.high_quality:.1f}%", f"{mean:.4g}", f"{r.wall_s:.1f} s"])
    return render_table(head, body)


LEGEND = """\
modes covered: modes holding at least 1/5 of a perfect generator's share of {n} samples
  (high-quality ones); high-quality: samples within 3σ of the nearest mode centre (σ = {std});
  mean ‖∇D‖ interp.: the critic's input-gradient norm at interpolates of data and generated
  samples (WGAN-GP drives it towards 1); wall time: training, with any tracing/compiling.
loss: wgan = E D(fake) − E D(real) (+ penalty), ns = non-saturating (softplus) GAN loss."""

#: printed under the table when the runs include "none" (docs/choosing.md says more)
NO_PENALTY_NOTE = """\
none: on some seeds and backends the run without a penalty covers the modes as well as the
  penalties, or better: which modes a short run reaches depends on the seed, while its critic's
  ‖∇D‖ (hundreds to thousands: not Lipschitz) shows on every seed; docs/choosing.md explains."""


def _fail(msg: str) -> int:
    print(f"gpreg demo: {msg}", file=sys.stderr)
    return 2


def _backend(name: str) -> Any:
    """The training module of ``name``; ImportError says what to install."""
    if name == "torch":
        try:
            from gpreg.tools.demo import _torch
        except ImportError as exc:
            raise ImportError(f"--backend torch needs PyTorch ({exc}); install it with "
                              "pip install 'gpreg[torch,demo]'") from None
        return _torch
    try:
        from gpreg.tools.demo import _keras

        _keras._load()
    except (ImportError, ValueError) as exc:  # ValueError: Keras refuses KERAS_BACKEND
        raise ImportError(f"--backend keras needs Keras 3 and the backend KERAS_BACKEND "
                          f"names ({exc}); install e.g. pip install 'gpreg[tensorflow,demo]'"
                          ) from None
    found = _keras.keras.backend.backend()
    if found not in KERAS_BACKENDS:
        raise ImportError(f"--backend keras trains on Keras's {', '.join(KERAS_BACKENDS)} "
                          f"backends (double backprop); KERAS_BACKEND is {found!r}: set it to "
                          f"one of those")
    return _keras


def main(args: argparse.Namespace) -> int:
    try:
        penalties = name_list(args.penalties, "penalty", CHOICES)
    except ValueError as exc:
        return _fail(str(exc))
    if args.backend not in BACKENDS:
        return _fail(f"unknown backend {args.backend}; choose from {', '.join(BACKENDS)}")
    if args.data not in DATASETS:
        return _fail(f"unknown data set {args.data}; choose from {', '.join(DATASETS)}")
    if args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    if args.seed < 0:
        return _fail(f"--seed must be 0 or more, got {args.seed}")
    if args.jobs is not None and args.jobs < 1:
        return _fail(f"--jobs must be at least 1, got {args.jobs}")
    jobs = min(len(penalties), args.jobs or _cpu_count())
    from gpreg.tools.demo._gallery import check_writable

    try:
        out = check_writable(args.out)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _fail("the gallery needs matplotlib; install it with pip install "
                     "'gpreg[demo]'")
    one_thread_environment()  # before any framework starts, here or in a worker
    # TensorFlow, which Keras imports whenever it is installed, prints log lines at start
    # (in every worker) that its TF_CPP_MIN_LOG_LEVEL does not hide: filter them
    with tensorflow_logs_filtered():
        return _train_and_draw(args, penalties, jobs, out)


def _train_and_draw(args: argparse.Namespace, penalties: list[str], jobs: int,
                    out: Path) -> int:
    from gpreg.tools.demo._gallery import write_gallery

    try:
        backend = _backend(args.backend)
    except ImportError as exc:
        return _fail(str(exc))
    cfg = Config(data=args.data, steps=args.steps, seed=args.seed)
    data = dataset(cfg.data)
    print(f"gpreg demo: {len(penalties)} runs on {cfg.data} data with {backend.versions()}, "
          f"{cfg.steps} generator steps × {cfg.n_critic} critic steps each, seed {cfg.seed}, "
          f"{jobs} at a time", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        runs = train_all(args.backend, penalties, cfg, jobs, Progress(penalties, cfg.steps))
        print(metrics_table(runs, cfg.data))
        print(LEGEND.format(n=cfg.eval_samples, std=data.std))
        if "none" in penalties:
            print(NO_PENALTY_NOTE)
        title = (f"gpreg demo: {cfg.data} data, {backend.versions()}\n{cfg.steps} generator × "
                 f"{cfg.n_critic} critic steps, batch {cfg.batch}, Adam lr {cfg.lr}, "
                 f"seed {cfg.seed}")
        write_gallery(runs, data, out, title)
    except KeyboardInterrupt:
        print("\ngpreg demo: interrupted; no image written", file=sys.stderr)
        return 130
    except RunFailed as exc:
        print(f"\ngpreg demo: {exc}; no image written", file=sys.stderr)
        return 1
    print(f"gallery written to {out} ({time.perf_counter() - t0:.0f} s in all)")
    return 0

