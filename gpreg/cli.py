"""The ``gpreg`` command line: ``gpreg compare`` (and ``python -m gpreg compare``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from gpreg import fixtures
from gpreg._specs import BUILTIN_NAMES
from gpreg._tolerances import max_rel_error, within
from gpreg._worker import PATHS

DTYPES = ("float64", "float32")


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


def _run_path(path: str, dtypes: list[str], penalties: list[str]) -> dict[str, Any]:
    """Run one framework path in its own process (Keras reads KERAS_BACKEND once)."""
    import os

    cmd = [sys.executable, "-m", "gpreg._worker", path, *dtypes, "--penalties", ",".join(penalties)]
    env = {**os.environ, **PATHS[path][1], "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "reason": " | ".join(tail)}
    return json.loads(proc.stdout)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["fixture", "case", "framework", "dtype", "value", "err value", "err per-sample",
            "err grads", "ok"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["fixture"], r["case"], r["framework"], r["dtype"], "error", "", "",
                         r["error"][:40], "FAIL"])
            continue
        dt = r["dtype"] + ("*" if r.get("tolerance", r["dtype"]) != r["dtype"] else "")
        body.append([r["fixture"], r["case"], r["framework"], dt, f"{r['value']:.6g}",
                     f"{r['err_value']:.1e}", f"{r['err_per_sample']:.1e}",
                     f"{r['err_grads']:.1e}", "ok" if r["ok"] else "FAIL"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> int:
    frameworks = args.frameworks.split(",") if args.frameworks else list(PATHS)
    penalties = args.penalties.split(",") if args.penalties else list(BUILTIN_NAMES)
    for name, known, what in ((frameworks, list(PATHS), "framework"),
                              (penalties, list(BUILTIN_NAMES), "penalty")):
        bad = [x for x in name if x not in known]
        if bad:
            print(f"gpreg compare: unknown {what} {', '.join(bad)}; choose from "
                  f"{', '.join(known)}", file=sys.stderr)
            return 2
    dtypes = [args.dtype] if args.dtype != "all" else list(DTYPES)
    cases = {(f.name, c.id): c for f in fixtures.load() for c in f.cases}
    rows: list[dict[str, Any]] = []
    status: dict[str, Any] = {}
    for fw in frameworks:
        out = _run_path(fw, dtypes, penalties)
        status[fw] = {k: out[k] for k in ("status", "reason", "versions") if k in out}
        for row in out.get("results", []):
            rows.append({"framework": fw, **_check_row(row, cases[(row["fixture"], row["case"])])})
    failed = [r for r in rows if not r["ok"]]
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("grads", "traceback")} for r in rows]
        json.dump({"frameworks": status, "rows": slim, "failed": len(failed)}, sys.stdout,
                  indent=1)
        print()
    else:
        if rows:
            print(_table(rows))
            print()
        for fw, st in status.items():
            extra = f" ({st['reason']})" if st.get("reason") else ""
            vers = ", ".join(f"{k} {v}" for k, v in st.get("versions", {}).items())
            print(f"{fw}: {st['status']}{extra}{' — ' + vers if vers else ''}")
        if any(r.get("tolerance", r["dtype"]) != r["dtype"] for r in rows):
            print("* held to the float32 tolerance: Keras computes some float64 ops in float32 "
                  "on its JAX and torch backends")
        print(f"{len(rows) - len(failed)} of {len(rows)} checks agree with the float64 "
              f"reference (tolerances: gpreg._tolerances.TOLERANCES)")
    if not rows:
        print("gpreg compare: no framework path ran; install one, e.g. pip install "
              "'gpreg[torch]'", file=sys.stderr)
        return 2
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpreg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="check every installed framework against the fixtures")
    p.add_argument("--frameworks", help=f"comma-separated subset of: {', '.join(PATHS)}")
    p.add_argument("--penalties", help=f"comma-separated subset of: {', '.join(BUILTIN_NAMES)}")
    p.add_argument("--dtype", choices=[*DTYPES, "all"], default="all")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=compare)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
