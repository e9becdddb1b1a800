"""``python -m benchmarks``: run the sections, write JSON (and Markdown), exit non-zero on a
failed check or a framework that was asked for and did not run."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import machine, report
from gpreg.tools.critics import default_specs
from gpreg.tools.timing import background_load, choose_threads

SECTIONS = ("checks", "handwritten", "steps", "lazy", "reuse", "memory")
FRAMEWORKS = ("torch", "tensorflow", "jax", "keras-torch")
# the Keras frameworks and the backend each runs on (Keras on torch is "keras-torch": "torch"
# alone is PyTorch itself)
KERAS_BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "keras-torch": "torch"}
RESULTS = machine.ROOT / "benchmarks" / "results"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Paired, interleaved benchmarks of gpreg's gradient penalties against "
                    "hand-written equivalents and plain critic steps.")
    p.add_argument("--quick", action="store_true",
                   help="tiny critics and 2-3 rounds: checks the harness, numbers mean little")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result file (default benchmarks/results/<host-kind>.json, "
                        "<host-kind>-quick.json with --quick)")
    p.add_argument("--markdown", type=Path, default=None, help="also write Markdown tables here")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only render an existing result file to --markdown (or stdout)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads / TF intra-op / XLA threads (default: the "
                        "usable cores not kept busy by other processes at the start; 1 with "
                        "--quick)")
    p.add_argument("--frameworks", type=_csv, default=None,
                   help="comma list of torch,tensorflow,jax,keras-torch (default: torch "
                        "and every Keras backend that is importable; torch is always run)")
    p.add_argument("--critics", type=_csv, default=None,
                   help="comma list of dcgan32,dcgan64,mlp,attention (default: all)")
    p.add_argument("--batch", type=int, default=None,
                   help="override every critic's batch size (e.g. larger on a GPU)")
    p.add_argument("--sections", type=_csv, default=None,
                   help=f"comma list of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per group")
    p.add_argument("--lazy-rounds", type=int, default=None, help="rounds of 16-step blocks")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per variant")
    p.add_argument("--min-sample-s", type=float, default=None,
                   help="each timed sample repeats a unit until it lasts about this long")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _threads(args: argparse.Namespace, bg: float | None) -> tuple[int, str]:
    """The thread count of every framework, and why it was chosen."""
    if args.threads:
        return args.threads, "--threads"
    if args.quick:
        return 1, "--quick (tiny critics gain nothing from threads)"
    return choose_threads(bg)


def _run_keras(backend: str, cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one Keras backend's worker in its own process; its rows, or a failure record."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    fd, path = tempfile.mkstemp(suffix=f"-{backend}.json")
    os.close(fd)
    cmd = [sys.executable, "-m", "benchmarks.keras_worker", "--backend", backend,
           "--config", json.dumps(cfg), "--result", path]
    print(f"\n== Keras on {backend} (own process) ==", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=machine.ROOT, env=env, timeout=timeout_s)
        if proc.returncode != 0:
            return {"status": "failed", "reason": f"worker exit {proc.returncode}"}
        with open(path) as f:
            return {"status": "ok", **json.load(f)}
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"worker timed out after {timeout_s:.0f} s"}
    finally:
        os.unlink(path)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds, warmup and sample length: quick defaults, full defaults, or the user's."""
    if args.quick:
        base = {"rounds": 2, "lazy_rounds": 2, "warmup": 1, "min_sample_s": 0.0}
    else:
        base = {"rounds": 11, "lazy_rounds": 4, "warmup": 1, "min_sample_s": 0.05}
    for key in base:
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    return base


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``; returns the exit status."""
    args = parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        text = report.render(data)
        if args.markdown is None:
            print(text)
        else:
            args.markdown.write_text(text)
        return 0

    t_start = time.perf_counter()
    sections = args.sections or list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    specs = default_specs(args.quick)
    if args.critics:
        by_name = {s.name: s for s in specs}
        missing = [c for c in args.critics if c not in by_name]
        if missing:
            raise SystemExit(f"unknown critics {missing}; expected some of {list(by_name)}")
        specs = [by_name[c] for c in args.critics]
    if args.batch is not None:
        specs = [dataclasses.replace(s, batch=args.batch) for s in specs]
    cuda = args.device.startswith("cuda")
    if args.frameworks is None:
        frameworks = ["torch"]
        if not cuda:
            frameworks += [f for f, b in KERAS_BACKENDS.items() if _importable(b)
                       and _importable("keras")]
    else:
        frameworks = list(dict.fromkeys(["torch", *args.frameworks]))
        bad = sorted(set(frameworks) - set(FRAMEWORKS))
        if bad:
            raise SystemExit(f"unknown frameworks {bad}; expected some of {list(FRAMEWORKS)}")
    settings = _settings(args)
    bg = background_load(0.3 if args.quick else 1.0)

    import torch

    from benchmarks import torch_suite as ts

    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    threads, why = _threads(args, bg)
    torch.set_num_threads(threads)
    gpu = torch.cuda.get_device_name(args.device) if cuda else None
    out = args.out or RESULTS / (machine.host_kind(args.device, gpu)
                                 + ("-quick" if args.quick else "") + ".json")
    result: dict[str, Any] = {
        "schema": 1,
        "machine": machine.describe(args.device, gpu),
        "config": {"quick": args.quick, "device": args.device, "sections": sections,
                   "frameworks": frameworks, "critics": [dataclasses.asdict(s) for s in specs],
                   "seed": args.seed, "interval": 16, **settings,
                   "argv": list(sys.argv[1:] if argv is None else argv)},
        "threads": {"torch_intra_op": torch.get_num_threads(),
                    "torch_interop": torch.get_num_interop_threads(), "chosen_by": why},
        "background_cores_at_start": bg,
        "frameworks": {},
        "failures": [],
    }
    print(f"gpreg benchmarks: device {args.device}{f' ({gpu})' if gpu else ''}, torch threads "
          f"{torch.get_num_threads()}, frameworks {', '.join(frameworks)}, critics "
          f"{', '.join(s.name for s in specs)}; other processes keep {bg} cores busy",
          flush=True)
    print(f"threads: {threads} ({why})", flush=True)
    if bg is not None and bg > 0.25:
        print("warning: this machine is shared with other work; timings will be noisy "
              "(see each table's control ratios).", flush=True)

    suite = ts.TorchSuite(ts.Settings(device=args.device, threads=threads, seed=args.seed,
                                      **settings), specs)
    if "handwritten" in sections:
        print("\n== torch / gpreg's fixed per-call overhead (Linear(16, 1), batch 8) ==",
              flush=True)
        suite.overhead(rounds=5 if args.quick else 41,
                       min_sample_s=0.002 if args.quick else 0.02)
    for spec in specs:
        print(f"\n== torch / {spec.name}: {spec.describe()} ==", flush=True)
        if "checks" in sections:
            suite.checks(spec)
        if "handwritten" in sections:
            suite.handwritten(spec)
        if "steps" in sections:
            suite.steps(spec, list(ts.PENALTIES))
        if "lazy" in sections:
            suite.lazy(spec)
        if "reuse" in sections:
            suite.reuse(spec)
        if "memory" in sections:
            suite.memory(spec)
    suite.predicted_ratios()
    rows = {k: list(v) for k, v in suite.rows.items()}
    result["frameworks"]["torch"] = {"status": "ok", "version": torch.__version__,
                                     "device": args.device}

    keras_cfg = {"threads": threads, "seed": args.seed,
                 "critics": [dataclasses.asdict(s) for s in specs],
                 **{k: settings[k] for k in ("rounds", "warmup", "min_sample_s")}}
    for name, backend in KERAS_BACKENDS.items():
        if name not in frameworks:
            continue
        if not (_importable(backend) and _importable("keras")):
            result["frameworks"][name] = {"status": "failed",
                                          "reason": f"{backend} or keras is not importable"}
        elif not ({"checks", "handwritten"} & set(sections)):
            result["frameworks"][name] = {"status": "skipped", "reason": "no section"}
            continue
        else:
            res = _run_keras(backend, keras_cfg, timeout_s=1800)
            for key in ("checks", "handwritten", "cross_framework"):
                rows[key] += res.pop(key, [])
            result["frameworks"][name] = res
        if result["frameworks"][name]["status"] != "ok":
            result["failures"].append(f"{name}: {result['frameworks'][name]['reason']}")

    result.update(rows)
    bad_checks = [c for c in rows["checks"] if not c["ok"]]
    result["failures"] += [f"check failed: {c['framework']} {c['critic']} {c['check']}"
                           for c in bad_checks]
    result["duration_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out} ({result['duration_s']:.0f} s)")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.render(result))
        print(f"wrote {args.markdown}")
    if result["failures"]:
        print("FAILED:\n  " + "\n  ".join(result["failures"]))
        return 1
    return 0


__all__ = ["main", "parse_args"]
