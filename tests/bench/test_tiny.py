"""Smoke test of ``python -m benchmarks.tiny --quick``: every eager path that can be imported
here runs, gpreg and the hand-written penalty agreed (value and parameter gradients) before
timing, and every row has finite, positive times. The speed itself is not checked."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _paths() -> list[str]:
    paths = ["torch"]
    if importlib.util.find_spec("keras") is not None:
        for backend, module in (("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")):
            if importlib.util.find_spec(module) is not None:
                paths.append(f"keras-{backend}")
    return paths


def test_tiny_quick(tmp_path: Path) -> None:
    paths = _paths()
    out = tmp_path / "tiny.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tiny", "--quick", "--paths",
                           ",".join(paths), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["path"] for r in rows} == set(paths)
    assert {(r["path"], r["penalty"]) for r in rows} >= {(p, k) for p in paths
                                                         for k in ("wgan_gp", "r1")}
    for r in rows:
        assert r["check_rel_err"] <= 2e-4, r
        for key in ("gpreg_us", "hand_us"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["threads"]["requested"] == 1
        if r["path"] == "torch":  # also timed against the hand-written
            # penalty that gives every parameter a zero gradient as gpreg does
            assert math.isfinite(r["hand_zero_us"]) and r["hand_zero_us"] > 0, r
            assert r["ratio_zero"]["median"] > 0, r
        assert f"| {r['path']} | {r['mode']} | {r['penalty']} |" in proc.stdout


def test_tiny_unknown_path() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tiny", "--paths", "mxnet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown paths ['mxnet']" in proc.stderr


def test_tiny_floor_quick(tmp_path: Path) -> None:
    """``python -m benchmarks.tiny_floor --quick``: the floor unit (gpreg's ops without its
    checks) agreed with the hand-written penalty and with gpreg before timing, and every
    ratio is finite and positive."""
    out = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tiny_floor", "--quick", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["us"]) == {"hand", "floor", "gpreg", "control"}
    for key in ("floor_over_hand", "gpreg_over_floor", "gpreg_over_hand"):
        assert math.isfinite(result[key]["median"]) and result[key]["median"] > 0
    assert "floor / hand:" in proc.stdout
