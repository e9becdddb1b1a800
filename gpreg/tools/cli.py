"""The ``gpreg`` command line (also ``python -m gpreg``).

``gpreg compare`` checks every installed framework path against the float64 fixtures and
times the penalty calls; ``gpreg demo`` trains a toy GAN once per penalty and writes a
gallery; ``gpreg cost`` measures what each penalty costs on a critic (a built-in or yours)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from gpreg import fixtures
from gpreg._specs import BUILTIN_NAMES
from gpreg._tolerances import max_rel_error, within
from gpreg.tools._env import python_module_command
from gpreg.tools._text import name_list, render_table
from gpreg.tools.compare_worker import PATHS

DTYPES = ("float64", "float32")
#: the lines of a failed worker process's output that ``gpreg compare`` shows
WORKER_LINES = 30


def _check_row(row: dict[str, Any], case: fixtures.Case) -> dict[str, Any]:
    """Add relative errors and the verdict against the float64 reference to a worker row."""
    if "error" in row:
        return {**row, "ok": False}
    dt = row.get("tolerance", row["dtype"])  # the table row that applies on that path
    grads_ok = all(within(row["grads"][k], v, dt) for k, v in case.grads.items())
    errs = {
        "err_value": max_rel_error(row["value"], case.value),
        "err_per_sample": max(max_rel_error(row["per_sample"], case.per_sample),
                              max_rel_error(row["norms"], case.norms)),
        "err_grads": max(max_rel_error(row["grads"][k], v) for k, v in case.grads.items()),
    }
    ok = (within(row["value"], case.value, dt) and within(row["per_sample"], case.per_sample, dt)
          and within(row["norms"], case.norms, dt) and grads_ok)
    return {**row, **errs, "ok": bool(ok)}


def _run_path(path: str, dtypes: list[str], penalties: list[str], repeats: int = 0,
              fixture_names: list[str] | None = None) -> dict[str, Any]:
    """Run one framework path in its own process (Keras reads KERAS_BACKEND once)."""
    import os

    args = [path, *dtypes, "--penalties", ",".join(penalties), "--repeats", str(repeats)]
    if fixture_names:
        args += ["--fixtures", ",".join(fixture_names)]
    env = {**os.environ, **PATHS[path][1], "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(python_module_command("gpreg.tools.compare_worker", *args),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = next((ln for ln in reversed(lines) if ln.strip()), "")
        return {"status": "failed",
                "reason": f"exit code {proc.returncode}: {last or 'no output'}",
                "output": "\n".join(lines[-WORKER_LINES:])}
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:  # e.g. a library printed to stdout
        return {"status": "failed",
                "reason": f"unreadable worker output ({exc}): {proc.stdout[:200]!r}"}


def _ms(x: float | None) -> str:
    """A time in milliseconds, three significant digits."""
    return "" if x is None else f"{x:.3g} ms"


def _dtype_label(r: dict[str, Any]) -> str:
    return r["dtype"] + ("*" if r.get("tolerance", r["dtype"]) != r["dtype"] else "")


def _table(rows: list[dict[str, Any]]) -> str:
    """One line per check (``--all-rows``)."""
    head = ["fixture", "case", "framework", "dtype", "value", "err value", "err per-sample",
            "err grads", "time/call", "ok"]
    body = []
    for r in rows:
        if "error" in r:
            cell = r["error"] if len(r["error"]) <= 40 else r["error"][:39] + "…"
            body.append([r["fixture"], r["case"], r["framework"], r["dtype"], "error", "", "",
                         cell, "", "FAIL"])
            continue
        body.append([r["fixture"], r["case"], r["framework"], _dtype_label(r), f"{r['value']:.6g}",
                     f"{r['err_value']:.1e}", f"{r['err_per_sample']:.1e}",
                     f"{r['err_grads']:.1e}", _ms(r.get("median_ms")),
                     "ok" if r["ok"] else "FAIL"])
    return render_table(head, body)


def _errors(rows: list[dict[str, Any]]) -> str:
    """Every distinct error of the rows that raised, in full, with the number of checks it
    ended and the traceback of its first one (the table's cell is cut to fit)."""
    by_error: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if "error" in r:
            by_error.setdefault((r["framework"], r["error"]), []).append(r)
    out = []
    for (fw, error), rs in by_error.items():
        first = rs[0]
        where = f"{first['fixture']}/{first['case']}/{first['dtype']}"
        more = f" and {len(rs) - 1} more" if len(rs) > 1 else ""
        out.append(f"{fw}, {len(rs)} check{'s' if len(rs) > 1 else ''} ({where}{more}): "
                   f"{error}")
        if first.get("traceback"):
            out.extend("    " + ln for ln in first["traceback"].rstrip().splitlines())
    return "\n".join(out)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per framework × penalty × dtype: the number of checks and of agreeing ones,
    the worst relative errors over the fixtures and cases, and the median over them of the
    per-case median time (rows that raised count as failed and carry no errors or time)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["framework"], r["penalty"], r["dtype"]), []).append(r)
    out = []
    for (fw, penalty, dtype), rs in groups.items():
        fine = [r for r in rs if "error" not in r]
        times = [r["median_ms"] for r in fine if "median_ms" in r]
        rec: dict[str, Any] = {
            "framework": fw, "penalty": penalty, "dtype": dtype,
            "tolerance": rs[0].get("tolerance", dtype),
            "checks": len(rs), "agree": sum(bool(r["ok"]) for r in rs),
            "median_ms": statistics.median(times) if times else None,
        }
        for key in ("err_value", "err_per_sample", "err_grads"):
            rec[key] = max((r[key] for r in fine), default=None)
        rec["ok"] = rec["agree"] == rec["checks"]
        out.append(rec)
    return out


def _summary_table(summary: list[dict[str, Any]]) -> str:
    """One line per framework × penalty × dtype (the default view)."""
    head = ["framework", "penalty", "dtype", "checks", "err value", "err per-sample",
            "err grads", "time/call", "ok"]

    def err(x: float | None) -> str:
        return "" if x is None else f"{x:.1e}"

    body = [[s["framework"], s["penalty"], _dtype_label(s), f"{s['agree']}/{s['checks']}",
             err(s["err_value"]), err(s["err_per_sample"]), err(s["err_grads"]),
             _ms(s["median_ms"]), "ok" if s["ok"] else "FAIL"] for s in summary]
    return render_table(head, body)


def compare(args: argparse.Namespace) -> int:
    all_fixtures = [f.name for f in fixtures.load()]
    try:
        frameworks = name_list(args.frameworks, "framework", list(PATHS))
        penalties = name_list(args.penalties, "penalty", list(BUILTIN_NAMES))
        fixture_names = (None if args.fixtures is None
                         else name_list(args.fixtures, "fixture", all_fixtures))
    except ValueError as exc:
        print(f"gpreg compare: {exc}", file=sys.stderr)
        return 2
    if args.repeats < 0:
        print(f"gpreg compare: --repeats must be 0 (no timing) or more, got {args.repeats}",
              file=sys.stderr)
        return 2
    dtypes = [args.dtype] if args.dtype != "all" else list(DTYPES)
    cases = {(f.name, c.id): c for f in fixtures.load() for c in f.cases}
    rows: list[dict[str, Any]] = []
    status: dict[str, Any] = {}
    for fw in frameworks:
        if not args.json:
            print(f"gpreg compare: running {fw} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = _run_path(fw, dtypes, penalties, args.repeats, fixture_names)
        status[fw] = {k: out[k] for k in ("status", "reason", "output", "versions",
                                          "checked_as", "timed_as") if k in out}
        status[fw]["seconds"] = round(time.perf_counter() - t0, 1)
        for row in out.get("results", []):
            case = cases[(row["fixture"], row["case"])]
            rows.append({"framework": fw, "penalty": case.penalty, **_check_row(row, case)})
    failed = [r for r in rows if not r["ok"]]
    summary = summarize(rows)
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("grads", "traceback")} for r in rows]
        json.dump({"frameworks": status, "repeats": args.repeats, "summary": summary,
                   "rows": slim, "failed": len(failed)}, sys.stdout, indent=1)
        print()
    else:
        if rows:
            print(_table(rows) if args.all_rows else _summary_table(summary))
            print()
        if failed and not args.all_rows:
            print("disagreements:")
            print(_table(failed))
            print()
        if any("error" in r for r in failed):
            print("errors, in full:")
            print(_errors(failed))
            print()
        for fw, st in status.items():
            extra = f" ({st['reason']})" if st.get("reason") else ""
            vers = ", ".join(f"{k} {v}" for k, v in st.get("versions", {}).items())
            timed = ""
            if st.get("timed_as"):
                both = st.get("checked_as", "eager") != "eager"
                timed = f"; {'checked and timed' if both else 'timed'} as {st['timed_as']}"
            took = f" ({st['seconds']:.0f} s)" if st["status"] == "ok" else ""
            print(f"{fw}: {st['status']}{took}{extra}{' — ' + vers if vers else ''}{timed}")
            if st.get("output"):
                print(f"  the {fw} process's last output:")
                print("\n".join("    " + ln for ln in st["output"].splitlines()))
        if any(r.get("tolerance", r["dtype"]) != r["dtype"] for r in rows):
            print("* held to the float32 tolerance: Keras computes some float64 ops in float32 "
                  "on its JAX and torch backends")
        if not args.all_rows and rows:
            print("err: the largest relative error over the fixtures and cases of each row "
                  "(--all-rows shows every check)")
        if args.repeats and rows:
            per = "per check" if args.all_rows else "median over the row's checks"
            print(f"time/call: the penalty and its gradient w.r.t. the critic's parameters, "
                  f"median of {args.repeats} calls after a warm-up ({per}); the fixture "
                  f"critics are tiny, so this is mostly per-op overhead")
        print(f"{len(rows) - len(failed)} of {len(rows)} checks agree with the float64 "
              f"reference (tolerances: gpreg._tolerances.TOLERANCES)")
    crashed = [fw for fw, st in status.items() if st["status"] == "failed"]
    if crashed and not args.json:
        print(f"gpreg compare: the {', '.join(crashed)} process failed (see above): that "
              f"counts as a disagreement", file=sys.stderr)
    if not rows and not crashed:
        print("gpreg compare: no framework path ran; install one, e.g. pip install "
              "'gpreg[torch]'", file=sys.stderr)
        return 2
    return 1 if failed or crashed else 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from gpreg.tools.demo import add_arguments

    add_arguments(p)


def demo(args: argparse.Namespace) -> int:
    from gpreg.tools.demo import main as run_demo

    return run_demo(args)


def _version() -> str:
    """``gpreg --version``: the version, where the running gpreg lies, the Python."""
    from pathlib import Path

    try:
        from gpreg import __version__ as version
    except ImportError:  # `gpreg` is a folder of that name in the current one (python -m)
        from importlib.metadata import version as distribution_version

        version = distribution_version("gpreg")
    return f"gpreg {version} from {Path(__file__).parents[1]} (Python {sys.version.split()[0]})"


def _cost_arguments(p: argparse.ArgumentParser) -> None:
    from gpreg.tools.cost_cli import add_arguments

    add_arguments(p)


def cost(args: argparse.Namespace) -> int:
    from gpreg.tools.cost_cli import main as run_cost

    return run_cost(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpreg", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "compare", help="check every installed framework against the fixtures",
        description="Run every penalty on the shipped fixture critics in each installed "
                    "framework path (each in its own process), compare value, per-sample "
                    "values and parameter gradients with the float64 reference, and time "
                    "each penalty call. Exit status: 0 all agree, 1 a disagreement or a failed "
                    "framework process, 2 nothing could run or a bad argument.")
    p.add_argument("--frameworks", help=f"comma-separated subset of: {', '.join(PATHS)}")
    p.add_argument("--penalties", help=f"comma-separated subset of: {', '.join(BUILTIN_NAMES)}")
    p.add_argument("--fixtures", help="comma-separated subset of the fixture critics: "
                                      f"{', '.join(fixtures.names())} (default: all)")
    p.add_argument("--dtype", choices=[*DTYPES, "all"], default="all")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed penalty calls per check, after one warm-up (0: no timing; "
                        "default 5)")
    p.add_argument("--all-rows", action="store_true",
                   help="one table row per check instead of one per framework × penalty × "
                        "dtype")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=compare)
    d = sub.add_parser(
        "demo", help="train a toy GAN once per penalty; metrics table and a PNG gallery",
        description="Train a small GAN on 2-D toy data once per penalty and once without "
                    "(same networks, initial weights and data for every run), print a "
                    "metrics table and write one PNG gallery: per penalty, the generated "
                    "samples over the data, the critic's landscape and its gradient norms "
                    "at interpolates. Needs matplotlib (pip install 'gpreg[demo]').")
    _demo_arguments(d)
    d.set_defaults(func=demo)
    c = sub.add_parser(
        "cost", help="what each penalty costs on a critic (a built-in or yours), and the levers",
        description="Time the critic step with each penalty against the plain step (paired, "
                    "interleaved, with a control), count FLOPs, measure peak memory, and "
                    "give the levers: lazy regularization at each interval and, in PyTorch, "
                    "forward reuse for R1/R2. Exit status: 0 measured, 1 a failure while "
                    "measuring (with its traceback), 2 a bad option or a framework that is "
                    "not installed.")
    _cost_arguments(c)
    c.set_defaults(func=cost)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
