"""What a gradient penalty costs on a given critic: the framework-free half of ``cost``.

The adapters (``gpreg_torch.cost``, ``gpreg_keras.cost``) build the critic steps the way
training runs them on their framework (eager PyTorch; one XLA program per step under
TensorFlow and JAX) and hand them to :func:`measure` as zero-argument callables, with a
function that counts a step's FLOPs and one that measures its memory. This module times the
steps (:mod:`gpreg.tools.timing`: paired, interleaved, with a control), applies the levers'
formulas and builds the :class:`CostReport`.

The steps, by name:

- ``plain``: the critic step without a penalty: zero the gradients, the WGAN loss
  mean D(fake) − mean D(real), its gradient, the optimizer step.
- ``<penalty>``: the same step with the penalty added to the loss.
- ``<penalty> alone``: the penalty-only step of lazy regularization (the penalty, its
  gradient, an optimizer step), which StyleGAN2 and gpreg's recipe take every N-th batch.
- ``<penalty> from_scores``: R1 or R2 from the scores of the adversarial loss's own forward
  pass (``gpreg_torch.from_scores``; PyTorch only).
"""

from __future__ import annotations

import statistics
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gpreg._lazy import LazyRegularization
from gpreg._specs import _ROLES, get_spec
from gpreg.tools._text import render_table
from gpreg.tools.timing import GroupResult, Variant, time_group

#: the penalties ``penalties=None`` measures: one evaluated at new points (interpolates),
#: one at the data itself (the one forward reuse and lazy regularization were made for)
DEFAULT_PENALTIES = ("wgan_gp", "r1")

#: the penalties whose forward pass the adversarial loss already ran (``from_scores``)
REUSABLE = ("real", "fake")

CONTROL = "plain (repeat)"

Ratio = dict[str, float]  # {"median": ..., "min": ..., "max": ...} of per-round ratios


def _stats(values: Sequence[float]) -> Ratio:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def check_options(where: str, penalties: Any, lazy: Any, rounds: Any, warmup: Any,
                  min_sample_s: Any) -> tuple[list[str], tuple[int, ...]]:
    """The penalty names and lazy intervals of a ``cost`` call, checked (both adapters)."""
    if penalties is None:
        names = list(DEFAULT_PENALTIES)
    elif isinstance(penalties, str):
        names = [penalties]
    else:
        names = list(dict.fromkeys(penalties))
    if not names:
        raise ValueError(f"{where}: penalties is empty; name at least one, e.g. "
                         f"penalties=['wgan_gp'], or pass None for {list(DEFAULT_PENALTIES)}.")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{where}: penalties must be names such as 'wgan_gp' or 'r1'; got "
                            f"{type(name).__name__}.")
        get_spec(name)  # an unknown name raises UnknownPenaltyError listing the known ones
    if isinstance(lazy, int) and not isinstance(lazy, bool):
        lazy = (lazy,)
    try:
        intervals = tuple(sorted({LazyRegularization(n).interval for n in lazy}))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: lazy must be a sequence of positive int intervals such as "
                         f"(4, 8, 16), or () for none; got {lazy!r}.") from exc
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"{where}: rounds must be a positive int (timed rounds; 11 by "
                         f"default, 3 for a quick look); got {rounds!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"{where}: warmup must be an int >= 0 (untimed calls of each step "
                         f"after the first); got {warmup!r}.")
    if not isinstance(min_sample_s, (int, float)) or not min_sample_s >= 0:
        raise ValueError(f"{where}: min_sample_s must be a number >= 0 (seconds a timed sample "
                         f"lasts at least; 0: one step per sample); got {min_sample_s!r}.")
    return names, intervals


def reusable(name: str) -> bool:
    """Whether ``name`` is evaluated at the real or the fake batch (forward reuse applies)."""
    return get_spec(name).points in REUSABLE


def data_roles(name: str) -> tuple[str, ...]:
    """The batches a penalty takes after the critic: ``("real", "fake")``, ``("real",)``..."""
    return tuple(_ROLES[get_spec(name).points])


def draws(name: str) -> bool:
    """Whether a penalty draws random numbers (interpolation weights, DRAGAN's noise)."""
    return get_spec(name).points in ("interpolates", "perturbed_real")


def threads_text(n: int) -> str:
    """``"1 CPU thread"``, ``"2 CPU threads"``."""
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def lazy_ratio(alone_over_plain: float, interval: int) -> float:
    """Amortized cost of lazy regularization against the plain step.

    ``interval`` = N batches take N plain steps and one penalty-only step, so a batch costs
    ``plain · (1 + a / N)`` with ``a`` = (penalty-only step) / (plain step).
    """
    return 1.0 + alone_over_plain / interval


@dataclass
class Info:
    """What was measured and how (filled by the adapter).

    Attributes:
        framework: ``"torch"``, ``"keras-tensorflow"``, ``"keras-jax"`` or ``"keras-torch"``.
        mode: how the steps ran: ``"eager"``, ``"tf.function(jit_compile=True)"``,
            ``"jax.jit"``.
        device: the device of the batch.
        critic: the critic's class and parameter count.
        batch: the batch size.
        optimizer: the step's optimizer.
        threads: the CPU threads the framework used (or the GPU).
        flop_method: how FLOPs were counted (``None``: not counted).
        memory_method: how memory was measured (``None``: not measured).
        notes: further lines for the summary.
    """

    framework: str  # "torch", "keras-tensorflow", "keras-jax", "keras-torch"
    mode: str  # "eager", "tf.function(jit_compile=True)", "jax.jit"
    device: str
    critic: str  # e.g. "DCGANCritic (664,193 parameters)"
    batch: int
    optimizer: str
    threads: str
    flop_method: str | None = None
    memory_method: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class StepCost:
    """One timed step: median time, its per-round ratio to the plain step, counts.

    Attributes:
        name: ``"plain"``, ``"<penalty>"``, ``"<penalty> alone"`` or
            ``"<penalty> from_scores"``.
        ms: median time of one step, in milliseconds.
        ratio: median, min and max over the rounds of this step's time over the plain
            step's time in the same round.
        first_call_s: seconds of the first call (tracing and compilation included).
        flops: matmul and convolution FLOPs of one step.
        memory_bytes: peak memory of one step (how: ``Info.memory_method``).
        flops_xla: XLA's own count of every operation of the compiled step (JAX only).
    """

    name: str
    ms: float
    ratio: Ratio
    first_call_s: float
    flops: int | None = None
    memory_bytes: int | None = None
    flops_xla: int | None = None  # XLA's own count of every operation (JAX only)


@dataclass
class PenaltyCost:
    """One penalty's cost against the plain step, and its levers.

    Attributes:
        penalty: its name.
        ratio: the penalized step's time over the plain step's (median, min, max over the
            rounds).
        flop_ratio: the penalized step's FLOPs over the plain step's.
        memory_ratio: the penalized step's peak memory over the plain step's.
        alone_ratio: the penalty-only step (lazy regularization's) over the plain step.
        lazy: for each interval N, the amortized cost of lazy regularization against the
            plain step, (N·plain + alone) / (N·plain) per round.
        reuse_ratio: the ``from_scores`` step over the plain step (R1/R2 in PyTorch).
        reuse_saving: 1 − (``from_scores`` step) / (penalized step), per round.
    """

    penalty: str
    ratio: Ratio  # penalized step / plain step
    flop_ratio: float | None
    memory_ratio: float | None
    alone_ratio: Ratio | None  # penalty-only (lazy) step / plain step
    lazy: dict[int, Ratio]  # interval -> amortized lazy step / plain step
    reuse_ratio: Ratio | None = None  # from_scores step / plain step
    reuse_saving: Ratio | None = None  # 1 - from_scores step / penalized step


@dataclass
class CostReport:
    """What each penalty costs on one critic, batch and device; ``summary()`` prints it.

    Times are medians over interleaved rounds; a ratio is the median (min, max) of the
    per-round ratios of two steps timed in the same round. ``control`` is the plain step
    timed against itself: a difference inside its spread is noise. ``report["r1"]`` is one
    penalty's :class:`PenaltyCost`.

    Attributes:
        info: what was measured and how.
        plain: the plain step.
        control: the plain step timed against itself (median, min, max).
        penalties: one :class:`PenaltyCost` per penalty, in the order asked for.
        steps: every timed step by name.
        lazy: the lazy-regularization intervals.
        rounds: timed rounds.
        warmup: untimed calls of each step after its first.
        inner: steps per timed sample, per step.
        background_cores: cores other processes kept busy while the steps were timed.
        samples_ms: every timed sample (per-step milliseconds), per step, in round order.
    """

    info: Info
    plain: StepCost
    control: Ratio
    penalties: list[PenaltyCost]
    steps: dict[str, StepCost]
    lazy: tuple[int, ...]
    rounds: int
    warmup: int
    inner: dict[str, int]
    background_cores: float | None
    samples_ms: dict[str, list[float]]

    def __getitem__(self, penalty: str) -> PenaltyCost:
        for p in self.penalties:
            if p.penalty == penalty:
                return p
        raise KeyError(f"no penalty {penalty!r} in this report; it has "
                       f"{', '.join(p.penalty for p in self.penalties)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, the one-line reading and the summary's legend."""
        out = asdict(self)
        out["reading"] = self.reading()
        return out

    # -- text
    def reading(self) -> str:
        """One line: what the first penalty costs, and the levers, in plain words."""
        ps = self.penalties
        first = ps[0]
        text = f"{first.penalty} makes a critic step {first.ratio['median']:.2f}× slower"
        if first.flop_ratio is not None:
            text += f" ({first.flop_ratio:.2f}× the FLOPs)"
        text += "".join(f", {p.penalty} {p.ratio['median']:.2f}×" for p in ps[1:])
        lazy_p = next((p for p in ps if reusable(p.penalty) and p.lazy), None) or (
            first if first.lazy else None)
        if lazy_p is not None:
            n = max(lazy_p.lazy)
            text += (f"; lazy {lazy_p.penalty} every {n} steps costs "
                     f"{lazy_p.lazy[n]['median']:.2f}×")
        reuse_p = next((p for p in ps if p.reuse_saving is not None), None)
        if reuse_p is not None:
            text += (f"; from_scores saves {100 * reuse_p.reuse_saving['median']:.0f}% of the "
                     f"{reuse_p.penalty} step")
        return (text + f"; noise: the plain step against itself "
                f"{self.control['min']:.2f}–{self.control['max']:.2f}×.")

    def _header(self) -> str:
        i = self.info
        bg = "" if self.background_cores is None else (
            f"; other processes kept {self.background_cores} cores busy")
        return (f"gpreg cost: {i.framework} ({i.mode}) on {i.device}; {i.critic}, batch "
                f"{i.batch}; {i.optimizer}; {i.threads}; {self.rounds} rounds{bg}")

    def table(self) -> str:
        """The table of :meth:`summary`: one row per step."""
        lazy_head = [f"lazy /{n}" for n in self.lazy]
        head = ["step", "ms", "× plain", "(min–max)", "FLOPs ×", "memory ×", *lazy_head]
        plain = self.plain

        def rel(value: float | int | None, base: float | int | None) -> str:
            if value is None or not base:
                return "–"
            return f"{value / base:.2f}"

        def row(label: str, step: StepCost, ratio: Ratio, lazy: Sequence[str]) -> list[str]:
            return [label, f"{step.ms:.3g}" if step.ms < 100 else f"{step.ms:.0f}",
                    f"{ratio['median']:.2f}",
                    f"({ratio['min']:.2f}–{ratio['max']:.2f})",
                    rel(step.flops, plain.flops), rel(step.memory_bytes, plain.memory_bytes),
                    *lazy]

        blank = [""] * len(self.lazy)
        body = [row("plain (control)", plain, self.control, blank)]
        for p in self.penalties:
            body.append(row(p.penalty, self.steps[p.penalty], p.ratio,
                            [f"{p.lazy[n]['median']:.2f}" for n in self.lazy]))
        for p in self.penalties:
            alone = self.steps.get(f"{p.penalty} alone")
            if alone is not None:
                body.append(row(f"{p.penalty} alone", alone, alone.ratio, blank))
        for p in self.penalties:
            reuse = self.steps.get(f"{p.penalty} from_scores")
            if reuse is not None:
                body.append(row(f"{p.penalty} from_scores", reuse, reuse.ratio, blank))
        return render_table(head, body)

    def legend(self) -> list[str]:
        """What the columns mean, and how each was measured."""
        i = self.info
        lines = [
            "ms: median time of one critic step (zero grads, WGAN loss, gradient, "
            f"{i.optimizer.split(' ')[0]} step); × plain: median of the per-round ratios to "
            "the plain step timed in the same round, (min–max) their spread. plain (control): "
            "the plain step against itself, the noise floor: a difference inside its spread "
            "is not a difference.",
        ]
        if i.flop_method:
            lines.append(f"FLOPs: {i.flop_method}.")
        if i.memory_method:
            lines.append(f"memory: {i.memory_method}.")
        if self.lazy:
            lines.append(
                "lazy /N: the penalty only every N-th batch, as its own step (the 'alone' row: "
                "penalty, gradient, optimizer step), amortized: (N·plain + alone) / "
                "(N·plain), per round.")
        if any(p.reuse_saving is not None for p in self.penalties):
            lines.append("from_scores: R1/R2 from the scores of the loss's own forward pass "
                         "(gp.from_scores) instead of a second forward.")
            for p in self.penalties:
                if p.reuse_saving is not None:
                    s = p.reuse_saving
                    lines.append(f"  {p.penalty} from_scores saves {100 * s['median']:.0f}% "
                                 f"({100 * s['min']:.0f}–{100 * s['max']:.0f}%) of the "
                                 f"{p.penalty} step.")
        lines += i.notes
        return lines

    def summary(self) -> str:
        """Header, table, legend and the one-line reading, as text."""
        def wrap(line: str) -> str:
            return textwrap.fill(line, 100, subsequent_indent="    ")

        return "\n".join([wrap(self._header()), "", self.table(), "",
                          *(wrap(line) for line in self.legend()), "",
                          wrap("reading: " + self.reading())])

    def __str__(self) -> str:
        return self.summary()


def _ratio_to(g: GroupResult, name: str, base: str) -> Ratio:
    return g.ratio_stats(name, base)


def measure(
    *,
    steps: Mapping[str, Callable[[], Any]],
    penalties: Sequence[str],
    lazy: tuple[int, ...],
    rounds: int,
    warmup: int,
    min_sample_s: float,
    info: Info,
    sync: Callable[[], None] | None = None,
    flops: Callable[[str], int | tuple[int, int] | None] | None = None,
    memory: Callable[[str], int | None] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CostReport:
    """Time ``steps`` against ``steps["plain"]``, count and measure them, build the report.

    ``flops(name)`` returns a step's matmul/convolution FLOPs (or ``(flops, xla_flops)``),
    ``memory(name)`` its peak memory in bytes; either may return ``None`` for a step it
    does not measure.
    """
    say = progress or (lambda msg: None)
    do_sync = sync or (lambda: None)
    first: dict[str, float] = {}
    for name, fn in steps.items():
        say(f"first call of the {name} step" + (
            "" if info.mode == "eager" else f" (tracing and compiling it: {info.mode})"))
        t0 = time.perf_counter()
        fn()
        do_sync()
        first[name] = time.perf_counter() - t0
    variants = [Variant("plain", steps["plain"]), Variant(CONTROL, steps["plain"])]
    variants += [Variant(n, fn) for n, fn in steps.items() if n != "plain"]
    say(f"timing {len(variants)} steps, paired and interleaved: warm-up, then {rounds} rounds")
    g = time_group(variants, rounds=rounds, warmup=warmup, min_sample_s=min_sample_s,
                   sync=sync, seed=seed,
                   on_round=lambda done, total: say(f"round {done}/{total}"))
    counts: dict[str, tuple[int | None, int | None]] = {}
    if flops is not None:
        say("counting FLOPs")
        for name in steps:
            c = flops(name)
            counts[name] = c if isinstance(c, tuple) else (c, None)
    peaks: dict[str, int | None] = {}
    if memory is not None:
        say("measuring peak memory")
        peaks = {name: memory(name) for name in steps}

    def step(name: str) -> StepCost:
        fl, xla = counts.get(name, (None, None))
        return StepCost(name=name, ms=1e3 * g.median_s(name), ratio=_ratio_to(g, name, "plain"),
                        first_call_s=first[name], flops=fl, memory_bytes=peaks.get(name),
                        flops_xla=xla)

    all_steps = {name: step(name) for name in steps}
    plain = all_steps["plain"]
    rows = []
    for p in penalties:
        s = all_steps[p]
        alone_name, reuse_name = f"{p} alone", f"{p} from_scores"
        alone = g.ratios(alone_name, "plain") if alone_name in steps else None
        rows.append(PenaltyCost(
            penalty=p, ratio=s.ratio,
            flop_ratio=None if not (s.flops and plain.flops) else s.flops / plain.flops,
            memory_ratio=None if not (s.memory_bytes and plain.memory_bytes)
            else s.memory_bytes / plain.memory_bytes,
            alone_ratio=None if alone is None else _stats(alone),
            lazy={} if alone is None else {
                n: _stats([lazy_ratio(a, n) for a in alone]) for n in lazy},
            reuse_ratio=all_steps[reuse_name].ratio if reuse_name in steps else None,
            reuse_saving=_stats([1 - r for r in g.ratios(reuse_name, p)])
            if reuse_name in steps else None,
        ))
    return CostReport(info=info, plain=plain, control=_ratio_to(g, CONTROL, "plain"),
                      penalties=rows, steps=all_steps, lazy=lazy, rounds=rounds,
                      warmup=warmup, inner=g.inner,
                      background_cores=g.extra.get("background_cores"),
                      samples_ms={k: [1e3 * x for x in v] for k, v in g.samples.items()})


__all__ = ["CostReport", "Info", "PenaltyCost", "StepCost", "lazy_ratio", "measure"]
