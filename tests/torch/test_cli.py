"""`gpreg compare`: runs the fixtures through a framework path and exits non-zero on any
disagreement; unknown names and missing frameworks are reported, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys

from gpreg import fixtures
from gpreg.tools import compare_worker as _worker


def run(*args):
    return subprocess.run([sys.executable, "-m", "gpreg", "compare", *args], capture_output=True,
                          text=True)


def test_compare_torch_json():
    proc = run("--frameworks", "torch", "--penalties", "r1,wgan_gp", "--dtype", "float64",
               "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["failed"] == 0
    assert doc["frameworks"]["torch"]["status"] == "ok"
    n_cases = sum(c.penalty in ("r1", "wgan_gp") for f in fixtures.load() for c in f.cases)
    assert len(doc["rows"]) == n_cases
    assert all(r["ok"] and r["err_grads"] < 1e-9 for r in doc["rows"])


def test_compare_table_output():
    proc = run("--frameworks", "torch", "--penalties", "dragan", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert "err grads" in proc.stdout and "checks agree with the float64 reference" in proc.stdout


def test_unknown_names_list_the_valid_ones():
    proc = run("--frameworks", "pytorch")
    assert proc.returncode == 2
    assert "unknown framework pytorch; choose from torch, keras-tensorflow" in proc.stderr
    proc = run("--penalties", "wgan")
    assert proc.returncode == 2 and "wgan_gp" in proc.stderr


def test_missing_framework_is_reported(monkeypatch):
    monkeypatch.setitem(_worker.PATHS, "nothing", ("gpreg_no_such_adapter", {}))
    out = _worker.run("nothing", ["float64"], None)
    assert out["status"] == "not installed" and "gpreg_no_such_adapter" in out["reason"]
