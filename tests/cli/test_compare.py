"""`gpreg compare`: the timing column, the summary and full views, and the worker's timed
paths (one fixture per Keras backend, each in its own process).

One real torch worker run (module fixture) feeds the in-process view tests, so they cost no
extra process."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import pytest

from gpreg.tools import cli
from gpreg.tools import compare_worker as _worker
from gpreg.tools._text import name_list


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpreg", "compare", *args],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def torch_worker_output():
    pytest.importorskip("torch")
    out = cli._run_path("torch", ["float32"], ["r1", "wgan_gp"], 3, ["linear", "conv"])
    assert out["status"] == "ok", out
    return out


@pytest.fixture
def canned(monkeypatch, torch_worker_output):
    """``gpreg compare`` in this process, its torch worker replaced by the module's run;
    ``canned(args, edit=None)`` returns (exit code, stdout)."""

    def call(args: list[str], edit=None, capsys=None):
        out = copy.deepcopy(torch_worker_output)
        if edit:
            edit(out)
        monkeypatch.setattr(cli, "_run_path", lambda *a, **k: out)
        return cli.main(["compare", "--frameworks", "torch", "--penalties", "r1,wgan_gp",
                         "--fixtures", "linear,conv", "--dtype", "float32", "--repeats", "3",
                         *args])

    return call


def test_worker_times_every_row(torch_worker_output):
    rows = torch_worker_output["results"]
    assert len(rows) == 2 * 3  # 2 fixtures × (r1, wgan_gp, wgan_gp_ratio)
    assert torch_worker_output["timed_as"].startswith("eager")
    for row in rows:
        assert row["repeats"] == 3 and 0 < row["median_ms"] < 10_000


def test_json_summary_takes_worst_errors_and_median_times(canned, capsys):
    assert canned(["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == 0 and doc["repeats"] == 3 and len(doc["rows"]) == 6
    summary = {(s["penalty"], s["dtype"]): s for s in doc["summary"]}
    assert set(summary) == {("r1", "float32"), ("wgan_gp", "float32")}
    wgan = summary[("wgan_gp", "float32")]
    assert wgan["checks"] == wgan["agree"] == 4 and wgan["ok"]
    rows = [r for r in doc["rows"] if r["penalty"] == "wgan_gp"]
    times = sorted(r["median_ms"] for r in rows)
    assert wgan["median_ms"] == pytest.approx((times[1] + times[2]) / 2)
    assert wgan["err_grads"] == max(r["err_grads"] for r in rows)


def test_summary_is_the_default_view_and_all_rows_the_full_one(canned, capsys):
    assert canned([]) == 0
    short = capsys.readouterr().out
    assert canned(["--all-rows"]) == 0
    full = capsys.readouterr().out
    assert short.splitlines()[0].split()[:3] == ["framework", "penalty", "dtype"]
    body = [ln for ln in short.splitlines() if ln.startswith("torch ")]
    assert len(body) == 2 and "4/4" in body[0] and body[0].endswith("ok") and "ms" in body[0]
    assert "time/call" in short and "median of 3 calls after a warm-up" in short
    assert full.splitlines()[0].split()[:2] == ["fixture", "case"]
    assert "conv" in full and "conv" not in short
    assert "6 of 6 checks agree with the float64 reference" in short


def test_disagreements_are_listed_in_full_and_fail_the_run(canned, capsys):
    def corrupt(out):
        out["results"][0]["value"] *= 1.01

    assert canned([], edit=corrupt) == 1
    out = capsys.readouterr().out
    assert "3/4" in out and "FAIL" in out  # results[0] is linear/wgan_gp
    assert "disagreements:" in out and "linear" in out.split("disagreements:")[1]
    assert "5 of 6 checks agree" in out


LONG_ERROR = ("check: ImportError: cannot import name 'TOLERANCES' from 'gpreg' (unknown "
              "location)")


@pytest.mark.parametrize("view", [["--all-rows"], []])
def test_a_worker_error_is_a_failed_row_shown_in_full(canned, capsys, view):
    """The table's cell is cut to fit; the error follows in full, once per distinct error,
    with the number of checks it ended and its traceback."""

    def error(out):
        for i in (1, 2):
            keep = {k: out["results"][i][k] for k in ("fixture", "case", "dtype")}
            out["results"][i] = {**keep, "error": LONG_ERROR,
                                 "traceback": "Traceback (most recent call last):\n  File x\n"
                                              "ImportError: cannot import name 'TOLERANCES'"}

    assert canned(view, edit=error) == 1
    out = capsys.readouterr().out
    assert LONG_ERROR[:39] + "…" in out
    full = out.split("errors, in full:")[1]
    assert f"torch, 2 checks (linear/wgan_gp_ratio/float32 and 1 more): {LONG_ERROR}" in full
    assert "    Traceback (most recent call last):" in full and full.count("Traceback") == 1


def test_a_failed_worker_process_shows_its_output(monkeypatch, capsys):
    """A worker process that exits with an error: its last line is the reason, and its last
    lines are printed under the status line."""
    trace = ["Traceback (most recent call last):", '  File "<frozen runpy>", line 1',
             "ImportError: cannot import name 'fixtures' from 'gpreg' (unknown location)"]

    class Failed:
        returncode, stdout, stderr = 1, "", "\n".join(["noise"] * 50 + trace) + "\n"

    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: Failed())
    assert cli.main(["compare", "--frameworks", "torch"]) == 1
    out = capsys.readouterr().out
    assert f"torch: failed (exit code 1: {trace[-1]})" in out
    after = out.split("the torch process's last output:\n")[1].splitlines()
    shown = [ln for ln in after if ln.startswith("    ")]
    assert len(shown) == cli.WORKER_LINES and shown[-3:] == ["    " + ln for ln in trace]


def test_workers_import_the_running_gpreg_from_any_folder(shadowed_folder):
    """Run from a folder with a directory named gpreg, the worker processes still import the
    gpreg that runs (they used to import that folder: "0 of 832 checks agree")."""
    pytest.importorskip("torch")
    work, start = shadowed_folder
    proc = subprocess.run([sys.executable, *start, "compare", "--frameworks", "torch",
                           "--penalties", "r1", "--fixtures", "linear", "--repeats", "0"],
                          capture_output=True, text=True, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 2 checks agree" in proc.stdout


def test_a_crashed_framework_process_fails_the_run(monkeypatch, torch_worker_output, capsys):
    """An installed framework whose worker process dies is a failure, not a skipped path."""
    outputs = {"torch": torch_worker_output,
               "keras-jax": {"status": "failed", "reason": "Segmentation fault"}}
    monkeypatch.setattr(cli, "_run_path", lambda path, *a, **k: copy.deepcopy(outputs[path]))
    args = ["compare", "--frameworks", "torch,keras-jax", "--penalties", "r1,wgan_gp",
            "--fixtures", "linear,conv", "--dtype", "float32", "--repeats", "3"]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert "keras-jax: failed (Segmentation fault)" in captured.out
    assert "the keras-jax process failed" in captured.err
    assert "6 of 6 checks agree" in captured.out
    outputs["torch"] = {"status": "not installed", "reason": "ImportError: torch"}
    assert cli.main(args) == 1  # nothing agreed, and a process failed: still 1, not 2


def test_end_to_end_with_repeats_zero_and_bad_arguments():
    proc = run("--frameworks", "torch", "--penalties", "r2", "--fixtures", "linear",
               "--dtype", "float32", "--repeats", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert all("median_ms" not in r for r in doc["rows"]) and doc["rows"]
    assert "timed_as" not in doc["frameworks"]["torch"]
    assert doc["summary"][0]["median_ms"] is None
    proc = run("--fixtures", "linear,convolution")
    assert proc.returncode == 2
    assert "unknown fixture convolution; choose from linear, quadratic" in proc.stderr
    proc = run("--repeats", "-1")
    assert proc.returncode == 2 and "--repeats must be 0" in proc.stderr
    proc = run("--frameworks", " , ")
    assert proc.returncode == 2 and "no framework given" in proc.stderr


def test_name_lists_are_stripped_and_deduplicated():
    known = ["torch", "keras-jax"]
    assert name_list(None, "framework", known) == known
    assert name_list(" keras-jax,torch,keras-jax, ", "framework", known) == ["keras-jax", "torch"]
    with pytest.raises(ValueError, match="unknown framework jax; choose from torch, keras-jax"):
        name_list("torch,jax", "framework", known)
    with pytest.raises(ValueError, match="no framework given in ','"):
        name_list(",", "framework", known)


def test_unreadable_worker_output_is_a_failed_path(monkeypatch):
    class Done:
        returncode, stdout, stderr = 0, "Loading weights...\n{", ""

    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: Done())
    out = cli._run_path("torch", ["float32"], ["r1"])
    assert out["status"] == "failed" and "unreadable worker output" in out["reason"]


def test_median_seconds_warms_up_and_takes_the_median(monkeypatch):
    """A fake clock: the first (compiling) call takes 100 s, the timed ones 3, 1, 2, 5, 4."""
    clock = [0.0]
    costs = iter([100.0, 3.0, 1.0, 2.0, 5.0, 4.0])
    monkeypatch.setattr(_worker.time, "perf_counter", lambda: clock[0])
    calls = []

    def step():
        calls.append(clock[0])
        clock[0] += next(costs)

    assert _worker.median_seconds(step, 5) == 3.0
    assert len(calls) == 6
    costs = iter([7.0, 9.0, 8.0])
    assert _worker.median_seconds(step, 3, warmed_up=True) == 8.0  # no warm-up call


@pytest.mark.skipif(not (importlib.util.find_spec("jax") and importlib.util.find_spec("keras")),
                    reason="JAX with Keras not installed")
def test_keras_jax_is_checked_and_timed_under_jit():
    """The keras-jax path checks and times through its own jitted functions (the other paths
    check through run_case, which the Keras fixture tests cover)."""
    proc = run("--frameworks", "keras-jax", "--penalties", "dragan", "--fixtures", "two_input",
               "--dtype", "float64", "--repeats", "2", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["frameworks"]["keras-jax"]["status"] == "ok"
    assert doc["frameworks"]["keras-jax"]["timed_as"].startswith("jax.jit")
    assert doc["frameworks"]["keras-jax"]["checked_as"] == "jax.jit"
    rows = doc["rows"]  # the five DRAGAN cases: reference code, ddof=1, Gaussian, LP, 0-GP
    assert len(rows) == 5
    assert all(r["ok"] and r["median_ms"] > 0 and r["tolerance"] == "float32" for r in rows)
