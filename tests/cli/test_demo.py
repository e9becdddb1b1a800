"""`gpreg demo`: a tiny run writes a valid PNG and prints the metrics table; a seed fixes the
metrics (in this process or in worker processes); bad input fails before any training; an
interrupted run leaves no image behind."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")

from gpreg.tools.demo import NO_PENALTY_NOTE, Progress, _data, _gallery
from gpreg.tools.demo._common import CHOICES, Run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def demo(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``gpreg demo`` as a user's shell starts it: without the TF_CPP_MIN_LOG_LEVEL=1 that
    ``import jax`` leaves in this process's environment when an earlier test imported it (the
    demo shows TensorFlow's error lines at that level, as asked)."""
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "gpreg", "demo", *args], capture_output=True,
                          text=True, cwd=cwd, env={**base, **(env or {})}, timeout=600)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and the end."""
    blob = path.read_bytes()
    assert blob[:8] == PNG_SIGNATURE and blob[12:16] == b"IHDR"
    assert blob[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"  # complete: ends with IEND
    return struct.unpack(">II", blob[16:24])


def metrics(stdout: str) -> list[list[str]]:
    """The metrics table's rows without the wall-time column."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("penalty"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln or ln.split()[0] not in CHOICES:
            break
        rows.append(ln.split()[:-2])  # drop "<seconds> s"
    return rows


def test_tiny_run_writes_the_gallery_and_prints_metrics(tmp_path):
    """Two penalties: trained in 2 worker processes (the default on 2+ cores)."""
    proc = demo("--steps", "3", "--penalties", "wgan_gp,r1,wgan_div", "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "gpreg-demo.png"  # the default: in the current folder
    width, height = png_size(out)
    assert width > 500 and height > 500
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (height, width)  # decodes
    assert f"gallery written to {out}" in proc.stdout
    head = proc.stdout.splitlines()[0]
    for col in ("penalty", "loss", "modes covered", "high-quality", "mean ‖∇D‖ interp.",
                "wall time"):
        assert col in head
    rows = metrics(proc.stdout)
    assert [r[0] for r in rows] == ["wgan_gp", "r1", "wgan_div"]
    assert [r[1] for r in rows] == ["wgan", "ns", "wgan"]
    assert "3/3 steps" in proc.stderr and "2 at a time" in proc.stderr  # progress
    assert NO_PENALTY_NOTE.splitlines()[0] not in proc.stdout  # no "none" run, no note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpreg-demo.png"]  # no temp files
    # the same seed again, in this process and one after the other: the same metrics
    from gpreg.tools.demo import Progress, metrics_table, train_all
    from gpreg.tools.demo._common import Config

    runs = train_all("torch", ["wgan_gp", "r1", "wgan_div"], Config(steps=3), jobs=1,
                     progress=Progress(["wgan_gp", "r1", "wgan_div"], 3, stream=io.StringIO()))
    assert metrics(metrics_table(runs, "ring")) == rows
    other = train_all("torch", ["r1"], Config(steps=3, seed=1), jobs=1,
                      progress=Progress(["r1"], 3, stream=io.StringIO()))
    assert other[0].samples.tolist() != runs[1].samples.tolist()  # another seed: other runs


def test_workers_import_the_running_gpreg_from_any_folder(shadowed_folder):
    """Run from a folder with a directory named gpreg, the demo's worker processes import the
    gpreg that runs, as ``gpreg compare``'s do."""
    work, start = shadowed_folder
    proc = subprocess.run([sys.executable, *start, "demo", "--steps", "2", "--penalties",
                           "r1,none", "--jobs", "2", "--out", "g.png"], capture_output=True,
                          text=True, cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r[0] for r in metrics(proc.stdout)] == ["r1", "none"]
    assert png_size(work / "g.png")[0] > 0
    assert NO_PENALTY_NOTE in proc.stdout  # why "none" can score well, under the table


@pytest.mark.parametrize(("out", "message"), [
    ("missing/x.png", "does not exist"),
    ("file.txt/x.png", "is not a folder"),
    (".", "is a directory"),
    ("gallery.jpg", "ending in .png"),
])
def test_bad_out_fails_before_training(tmp_path, out, message):
    (tmp_path / "file.txt").write_text("not a folder")
    proc = demo("--steps", "100000", "--penalties", "r1", "--out", out, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "|" not in proc.stderr and "runs on" not in proc.stderr  # nothing trained


def test_unwritable_folder_is_reported(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_gallery.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(ValueError, match="cannot write to .*Permission denied"):
        _gallery.check_writable(str(tmp_path / "x.png"))


def test_unknown_names_list_the_valid_ones(tmp_path):
    proc = demo("--penalties", "wgan_gp,wgan", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown penalty wgan; choose from wgan_gp, wgan_lp, zero_gp, r1, r2" in proc.stderr
    assert "none" in proc.stderr
    proc = demo("--backend", "jax", cwd=tmp_path)
    assert proc.returncode == 2 and "choose from torch, keras" in proc.stderr
    proc = demo("--data", "spiral", cwd=tmp_path)
    assert proc.returncode == 2 and "choose from ring, grid" in proc.stderr
    proc = demo("--penalties", ",", cwd=tmp_path)
    assert proc.returncode == 2 and "no penalty given" in proc.stderr
    proc = demo("--seed", "-1", cwd=tmp_path)
    assert proc.returncode == 2 and "--seed must be 0 or more, got -1" in proc.stderr
    for backend, message in (("numpy", "KERAS_BACKEND is 'numpy': set it to one of those"),
                             ("bogus", "--backend keras needs Keras 3")):
        if importlib.util.find_spec("keras") is None:
            break
        proc = demo("--backend", "keras", "--steps", "100000", cwd=tmp_path,
                    env={"KERAS_BACKEND": backend})
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())


def test_ctrl_c_leaves_no_image(tmp_path):
    """SIGINT to the demo's process group, as a terminal's Ctrl-C sends it (the workers
    ignore it; the parent stops them). The demo gets its own session with SIGINT at its
    default, even when this test runs in a process that ignores it (a background job)."""
    proc = subprocess.Popen([sys.executable, "-m", "gpreg", "demo", "--steps", "100000",
                             "--penalties", "r1,r2", "--jobs", "2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = ""
        while "|" not in line:  # the first progress bar: training has started
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the demo ended before training"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the demo and any worker left behind
    assert proc.returncode == 130 and "interrupted; no image written" in err
    assert not any(tmp_path.iterdir())


def test_a_failing_run_is_reported_and_stops_the_others():
    """A run that raises (here: an unknown data set, raised inside each run) is a RunFailed
    naming the penalty, in this process and from worker processes."""
    from gpreg.tools.demo import RunFailed, train_all
    from gpreg.tools.demo._common import Config

    progress = Progress(["r1", "r2"], 5, stream=io.StringIO())
    # in worker processes either run may be the first to fail
    for jobs, first in ((1, "r1"), (2, "r[12]")):
        with pytest.raises(RunFailed, match=f"the {first} run failed: ValueError: unknown data"):
            train_all("torch", ["r1", "r2"], Config(data="spiral", steps=5), jobs, progress)


def test_a_killed_worker_fails_the_run_instead_of_hanging():
    """A worker process that dies (killed, out of memory) is a RunFailed, not a hang; the
    other worker is stopped."""
    import multiprocessing

    from gpreg.tools.demo import RunFailed, train_all
    from gpreg.tools.demo._common import Config

    class KillAWorker(Progress):
        """Kills one worker at the first progress message (training has started)."""

        killed = False

        def update(self, i, done, seconds):
            super().update(i, done, seconds)
            if not self.killed:
                self.killed = True
                os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    progress = KillAWorker(["r1", "r2"], 100_000, stream=io.StringIO())
    with pytest.raises(RunFailed, match="its worker process ended with exit code -9"):
        train_all("torch", ["r1", "r2"], Config(steps=100_000), 2, progress)
    assert progress.killed and not multiprocessing.active_children()


def test_the_progress_line_fits_the_terminal(monkeypatch):
    labels = list(CHOICES)
    progress = Progress(labels, 800, stream=io.StringIO())
    for i in range(len(labels)):
        progress.done[i] = (400, 1.0)
    monkeypatch.setenv("COLUMNS", "80")
    line = progress.status_line(12.0)
    assert len(line) < 80 and line.startswith(f"0/{len(labels)} done, 12 s: wgan_gp 50%")
    monkeypatch.setenv("COLUMNS", "400")
    assert "wgan_gp |##########----------|" in progress.status_line(12.0)


def test_the_image_is_written_atomically(tmp_path, monkeypatch):
    """Interrupted while writing: neither the image nor the temporary file stays."""
    data = _data.dataset("ring")
    run = fake_run("r1", np.random.default_rng(1).uniform(size=50))
    target = tmp_path / "g.png"
    _gallery.write_gallery([run], data, target, "test")
    assert png_size(target)[0] > 0
    from matplotlib.figure import Figure

    def interrupted(self, fh, **kwargs):
        fh.write(PNG_SIGNATURE)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        _gallery.write_gallery([run], data, target, "test")
    assert target.read_bytes() == before  # the old image is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def fake_run(penalty: str, norms: np.ndarray, seed: int = 0) -> Run:
    data = _data.dataset("ring")
    rng = np.random.default_rng(seed)
    return Run(penalty=penalty, loss="wgan", samples=data.sample(rng, 50),
               real=data.sample(rng, 50), landscape=rng.normal(size=(8, 8)),
               interp_norms=norms, wall_s=0.1, d_loss=0.0)


def test_the_histograms_show_every_norm_on_one_axis():
    """Every positive finite norm of every run lies inside the shared histogram range (none
    is clipped into an edge bin); zeros and NaN, which a log axis cannot show, are named."""
    rng = np.random.default_rng(0)
    wide = np.concatenate([rng.uniform(0.5, 2.0, 996), [3e-7, 2e-6, 8e4, 3e5]])
    flat = np.concatenate([rng.uniform(1e-3, 2e-2, 98), [0.0, np.nan]])
    runs = [fake_run("wgan_gp", wide), fake_run("r1", flat, 1)]
    fig = _gallery._figure(runs, _data.dataset("ring"), "test")
    hists = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(hists) == 2
    for ax, run in zip(hists, runs):
        shown = run.interp_norms[np.isfinite(run.interp_norms) & (run.interp_norms > 0)]
        bars = ax.patches
        left, right = bars[0].get_x(), bars[-1].get_x() + bars[-1].get_width()
        assert left <= shown.min() and shown.max() <= right
        assert sum(b.get_height() for b in bars) == shown.size
        assert ax.get_xlim()[0] <= left and right <= ax.get_xlim()[1]
    assert "(1 zero, 1 NaN/Inf not shown)" in hists[1].get_title()
    assert "not shown" not in hists[0].get_title()


def test_the_gallery_is_readable_at_the_docs_width():
    """All eight runs of the default demo: scaled to a docs page's 700 px, the smallest text
    of the gallery is still at least 9 px high (it was under 4 px with one column each)."""
    import matplotlib.text

    rng = np.random.default_rng(0)
    runs = [fake_run(p, rng.uniform(0.1, 2.0, 100), i) for i, p in enumerate(CHOICES)]
    fig = _gallery._figure(runs, _data.dataset("ring"), "a title\nof two lines")
    width_px = fig.get_figwidth() * _gallery.DPI
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    smallest_pt = min(t.get_fontsize() for t in texts)
    assert smallest_pt / 72 * _gallery.DPI * 700 / width_px >= 9


@pytest.mark.parametrize("n", [1, 4, 5, 8, 9])
def test_every_run_gets_its_three_panels_and_empty_slots_none(n):
    """Runs fill bands of four columns, three panels each (samples, landscape, histogram);
    the slots after the last run are hidden. With nine runs (the default demo since WGAN-div)
    the last run lost its landscape and histogram to the wrong slots, and two empty frames
    showed beside it."""
    rng = np.random.default_rng(0)
    runs = [fake_run(p, rng.uniform(0.1, 2.0, 100), i) for i, p in enumerate(CHOICES[:n])]
    fig = _gallery._figure(runs, _data.dataset("ring"), "test")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 3 * n
    assert sum(ax.get_xscale() == "log" for ax in shown) == n  # one histogram per run
    assert sum(bool(ax.images) for ax in shown) == n  # one landscape per run
    titles = [ax.get_title() for ax in shown]
    assert all(any(t.startswith(f"{p} · ") for t in titles) for p in CHOICES[:n])


def test_quality_metrics():
    ring = _data.dataset("ring")
    grid = _data.dataset("grid")
    assert (ring.modes, grid.modes) == (8, 25)
    rng = np.random.default_rng(0)
    perfect = ring.sample(rng, 2500)
    q = _data.quality(perfect, ring)
    assert q.modes_covered == 8 and q.high_quality > 0.98  # 3σ holds ~98.9% in 2-D
    one_mode = np.repeat(ring.centres[:1], 2500, axis=0)
    q = _data.quality(one_mode, ring)
    assert (q.modes_covered, q.high_quality) == (1, 1.0)
    # a mode needs a fifth of its fair share (2500 / 8 / 5 = 62.5) of high-quality samples
    x = np.concatenate([np.repeat(ring.centres[:1], 2500 - 62, axis=0),
                        np.repeat(ring.centres[1:2], 62, axis=0)])
    assert _data.quality(x, ring).modes_covered == 1
    x[0] = ring.centres[1]
    assert _data.quality(x, ring).modes_covered == 2
    far = np.full((100, 2), np.nan)
    assert _data.quality(far, ring).high_quality == 0.0
    assert _data.quality(grid.sample(rng, 2500), grid).modes_covered == 25


TENSORFLOW_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d", re.M)


@pytest.mark.parametrize(("backend", "jobs"), [("tensorflow", "1"), ("jax", "2"), ("torch", "1")])
def test_keras_backend(tmp_path, backend, jobs):
    """``--backend keras`` on each Keras backend: a tf.function step, a jitted stateless step
    and an eager torch step (three penalties, two drawing points with a seed), in this
    process or in worker processes."""
    if not (importlib.util.find_spec("keras") and importlib.util.find_spec(backend)):
        pytest.skip(f"needs keras and {backend}")
    proc = demo("--backend", "keras", "--steps", "2", "--penalties", "dragan,r1,wgan_div",
                "--jobs", jobs, "--out", "k.png", cwd=tmp_path, env={"KERAS_BACKEND": backend})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Keras imports TensorFlow on every backend (when installed): none of its start-up log
    # lines (oneDNN, CUDA drivers, "failed call to cuInit") reach the demo's output
    assert not TENSORFLOW_LOG.search(proc.stderr), proc.stderr
    assert "absl::InitializeLog" not in proc.stderr and "cuInit" not in proc.stderr
    assert f"keras {importlib.metadata.version('keras')} on {backend}" in proc.stderr
    rows = metrics(proc.stdout)
    assert [r[:2] for r in rows] == [["dragan", "wgan"], ["r1", "ns"], ["wgan_div", "wgan"]]
    assert all(float(r[-1]) > 0 for r in rows)  # the mean gradient norm at interpolates
    assert png_size(tmp_path / "k.png")[0] > 0


FILTER_SCRIPT = """
import os, subprocess, sys
from gpreg.tools._env import tensorflow_logs_filtered
lines = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796154720.331558    7662 port.cc:153] oneDNN custom operations are on.",
    "W0000 00:00:1796154720.332436    7662 cudart_stub.cc:31] a warning",
    "E0000 00:00:1796154743.358383    7744 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
    "F0000 00:00:1796154743.358383    7744 check.cc:1] Check failed: a fatal line",
    "an ordinary line",
]
with tensorflow_logs_filtered():
    os.write(2, ("\\n".join(lines[:3]) + "\\n").encode())  # this process, at the C level
    subprocess.run([sys.executable, "-c", "import os, sys; os.write(2, sys.argv[1].encode())",
                    "\\n".join(lines[3:]) + "\\n"])  # a child process
    print("from sys.stderr", file=sys.stderr)
print("after the block", file=sys.stderr)
"""


@pytest.mark.parametrize(("level", "kept"), [
    (None, ["F0000", "an ordinary line"]),
    ("2", ["E0000", "F0000", "an ordinary line"]),
    ("0", ["WARNING: All", "I0000", "W0000", "E0000", "F0000", "an ordinary line"]),
])
def test_tensorflow_log_lines_are_filtered_by_level(level, kept):
    """TF_CPP_MIN_LOG_LEVEL (3 when unset) applied to TensorFlow's log lines from this process
    and its children; every other line passes, FATAL ones always."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    proc = subprocess.run([sys.executable, "-c", FILTER_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = [*kept, "from sys.stderr", "after the block"]
    got = [next((k for k in expected if ln.startswith(k)), ln) for ln in proc.stderr.splitlines()]
    assert sorted(got) == sorted(expected), proc.stderr  # the order between processes varies


def test_the_demo_package_ships_in_the_wheel():
    """setuptools lists packages explicitly: gpreg.tools.demo must be among them (and matplotlib
    in the demo extra), or `gpreg demo` breaks outside an editable install."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "gpreg.tools.demo" in project["tool"]["setuptools"]["packages"]
    demo_extra = project["project"]["optional-dependencies"]["demo"]
    assert any(req.startswith("matplotlib") for req in demo_extra)
