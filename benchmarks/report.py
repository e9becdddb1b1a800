"""Render a result file as Markdown tables (for the documentation's cost page)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _us(x: float | None) -> str:
    return "–" if x is None else f"{x:+.0f}"


def _ratio(r: dict[str, float] | None) -> str:
    if not r:
        return "–"
    return f"{r['median']:.3f} ({r['min']:.2f}–{r['max']:.2f})"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mode(row: dict[str, Any]) -> str:
    fw = row["framework"]
    if fw == "torch":
        return f"torch eager ({row['device']})"
    return f"{fw.replace('keras-', 'Keras/')} {row['mode']}"


def _threads(row: dict[str, Any]) -> str:
    t = row.get("threads")
    if isinstance(t, dict):
        return str(t.get("intra_op", t.get("requested")))
    return str(t)


def machine_lines(data: dict[str, Any]) -> list[str]:
    """The machine and configuration, as a short bullet list."""
    m, c = data["machine"], data["config"]
    v = {k: x for k, x in m["versions"].items() if x}
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return [
        f"- machine: {m['cpu_model']}, {m['usable_cores']} usable cores of {m['cpu_count']}, "
        f"{m['memory_gib']} GiB{gpu}; {m['platform']}; Python {m['python']}",
        "- software: " + ", ".join(f"{k} {x}" for k, x in v.items())
        + (f"; gpreg at git {m['git']}" if m.get("git") else ""),
        f"- date (UTC): {m['date_utc']}; device {c['device']}; torch threads "
        f"{data['threads']['torch_intra_op']} (inter-op {data['threads']['torch_interop']}); "
        f"{'quick run; ' if c['quick'] else ''}{c['rounds']} rounds, warm-up {c['warmup']}, "
        f"samples ≥ {c['min_sample_s'] * 1e3:.0f} ms; wall time {data['duration_s']:.0f} s",
        f"- other processes kept {data.get('background_cores_at_start')} cores busy at the "
        "start (per-row `bg` below: during that group); on a shared machine read each "
        "ratio next to its control",
    ]


def render(data: dict[str, Any]) -> str:
    """All tables of a result file, with a header describing the machine."""
    out: list[str] = ["# gpreg benchmark results", "", *machine_lines(data), ""]
    out += [
        "Every number is a median over interleaved rounds; a ratio is the median of the "
        "per-round ratios of two variants timed in the same round, with the min–max of those "
        "ratios in parentheses. *control* is a baseline timed against a second copy of "
        "itself: its distance from 1 is the noise floor of that row.", ""]

    hw = data.get("handwritten", [])
    if hw:
        out += ["## gpreg against hand-written penalties", "",
                "Timed unit: points → critic forward → input gradient with graph → penalty → "
                "backward to the critic's parameters (same explicit α for both).", ""]
        out.append(_table(
            ["framework / mode", "critic", "penalty", "baseline", "gpreg ms", "baseline ms",
             "gpreg / baseline", "control", "predicted", "threads", "bg"],
            [[_mode(r), r["critic"], r["penalty"], r["baseline"], _ms(r["ms"]),
              _ms(r["baseline_ms"]), _ratio(r["ratio"]), _ratio(r.get("control")),
              f"{r['predicted_ratio']:.3f}" if "predicted_ratio" in r else "–",
              _threads(r), r.get("background_cores")] for r in hw]))
        out.append("")
    over = data.get("overhead", [])
    if over:
        out += ["### gpreg's fixed per-call overhead (PyTorch eager)", "",
                "Median per-round difference gpreg − baseline on a trivial critic "
                "(`Linear(16, 1)`, batch 8), where a unit is short enough for many rounds. "
                "*six-op norm* is the same difference for the baseline with its norm "
                "written in the generic exact NaN-safe form (`where`/`sqrt`/`where`, "
                "`gpreg._math.safe_norm`): what those small ops and their autograd nodes "
                "cost; *gpreg − six-op* is the rest (gpreg's Python layer, and whatever norm "
                "the installed gpreg_torch uses). ATen ops: operations dispatched by "
                "the penalty (forward + inner gradient) / by its backward. *predicted* in "
                "the table above is 1 + overhead / the baseline's time.", ""]

        def ops(r: dict[str, Any], name: str) -> str:
            counts = r.get("aten_ops", {}).get(name)
            return f"{counts[0]} / {counts[1]}" if counts else "–"

        out.append(_table(
            ["penalty", "baseline", "gpreg µs", "baseline µs", "overhead µs per call",
             "six-op norm µs", "gpreg − six-op µs", "control µs", "ATen ops gpreg",
             "ATen ops baseline",
             "rounds", "bg"],
            [[r["penalty"], r["baseline"], f"{r['gpreg_us']:.0f}", f"{r['baseline_us']:.0f}",
              f"{r['overhead_us']:.0f}", _us(r.get("safe_norm_us")), _us(r.get("python_us")),
              _us(r["control_us"]), ops(r, "gpreg"), ops(r, r["baseline"]), r["rounds"],
              r.get("background_cores")] for r in over]))
        out.append("")

    steps = data.get("steps", [])
    if steps:
        out += ["## Critic step with a penalty against the plain critic step", "",
                "Step: zero grads → WGAN loss (+ penalty) → backward → Adam step. FLOPs: "
                "matmul/convolution FLOPs of one step (forward and every backward) from "
                "`torch.utils.flop_counter.FlopCounterMode`.", ""]
        out.append(_table(
            ["critic", "penalty", "plain step ms", "step ms", "time ratio", "FLOP ratio",
             "bg"],
            [[r["critic"], r["penalty"], _ms(r["plain_ms"]), _ms(r["step_ms"]),
              _ratio(r["ratio"]), f"{r['flop_ratio']:.2f}", r.get("background_cores")]
             for r in steps]))
        out.append("")

    lazy = data.get("lazy", [])
    if lazy:
        n = lazy[0]["interval"]
        out += [f"## Lazy R1 (every {n}th step, scaled by {n})", "",
                f"Blocks of {n} steps: all plain, or the last one with {n}·R1 added to its "
                "loss. *predicted* = 1 + (R1-step ratio − 1) / N from the step table.", ""]
        out.append(_table(
            ["critic", "plain step ms", "amortized lazy step ms", "ratio", "predicted", "bg"],
            [[r["critic"], _ms(r["plain_step_ms"]), _ms(r["lazy_step_ms"]),
              _ratio(r["ratio"]),
              f"{r['predicted_ratio']:.3f}" if "predicted_ratio" in r else "–",
              r.get("background_cores")] for r in lazy]))
        out.append("")

    reuse = data.get("reuse", [])
    if reuse:
        out += ["## R1 reusing the adversarial loss's forward", "",
                "Step with the logistic loss: `loss(D(real), D(fake)) + gp.r1(D, real)` "
                "(separate) against R1 from the same `D(real)` (reuse, written by hand, and "
                "gpreg's `gp.from_scores` where the installed gpreg has it). "
                "*forward share* = one `D(real)` forward / separate step; the goal is a "
                "saving at least that large.", ""]
        out.append(_table(
            ["critic", "separate ms", "reuse ms", "reuse / separate",
             "reuse, backward(inputs=params)", "gp.from_scores / separate",
             "gp.from_scores / reuse", "forward share", "saving", "goal met", "bg"],
            [[r["critic"], _ms(r["separate_ms"]), _ms(r["reuse_ms"]), _ratio(r["ratio"]),
              _ratio(r["ratio_inputs"]), _ratio(r.get("ratio_from_scores")),
              _ratio(r.get("from_scores_vs_hand")), f"{r['forward_share']['median']:.3f}",
              f"{r['saving_share']:.3f}", "yes" if r["goal_met"] else "no",
              r.get("background_cores")] for r in reuse]))
        out.append("")

    mem = data.get("memory", [])
    if mem:
        out += ["## Peak memory of one step", "",
                f"Peak tensor memory allocated during the step, above what existed before it "
                f"({mem[0]['method']}).", ""]
        out.append(_table(
            ["critic", "plain MiB", "variant", "peak MiB", "ratio"],
            [[r["critic"], f"{r['plain_peak_mib']:.2f}", r["variant"], f"{r['peak_mib']:.2f}",
              f"{r['ratio']:.2f}"] for r in mem]))
        out.append("")

    cross = data.get("cross_framework", [])
    if cross:
        out += ["## The same critic across frameworks", "",
                "gpreg's WGAN-GP unit and the plain unit (WGAN loss → gradient w.r.t. the "
                "parameters, no optimizer) per framework; each Keras backend ran in its own "
                "process, so rows of different frameworks were not interleaved.", ""]
        order = {"torch": 0, "keras-tensorflow": 1, "keras-jax": 2}
        rows = sorted(cross, key=lambda r: (r["critic"], order.get(r["framework"], 9)))
        out.append(_table(
            ["critic", "framework / mode", "plain ms", "WGAN-GP ms", "ratio",
             "first call s (gpreg)", "threads", "bg"],
            [[r["critic"], _mode(r), _ms(r["plain_ms"]), _ms(r["penalty_ms"]),
              _ratio(r["ratio"]), _first_call(r), _threads(r), r.get("background_cores")]
             for r in rows]))
        out.append("")

    checks = data.get("checks", [])
    if checks:
        out += ["## Agreement checks made before timing", "",
                f"Relative error ‖a − b‖ / ‖b‖ of the value and of all parameter gradients "
                f"(float32, tolerance {checks[0]['rtol']:g}).", ""]
        out.append(_table(
            ["framework", "critic", "check", "value error", "gradient error", "ok"],
            [[c["framework"], c["critic"], c["check"], f"{c['err_value']:.1e}",
              f"{c['err_grads']:.1e}", "ok" if c["ok"] else "**FAIL**"] for c in checks]))
        out.append("")

    if data.get("failures"):
        out += ["## Failures", "", *[f"- {f}" for f in data["failures"]], ""]
    return "\n".join(out)


def _first_call(row: dict[str, Any]) -> str:
    fc = row.get("first_call_s")
    if not fc:
        return "–"
    key = next((k for k in fc if k.endswith("gpreg")), None)
    return f"{fc[key]:.1f}" if key else "–"
