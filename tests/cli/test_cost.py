"""`gpreg cost`: a built-in critic and your own (module:factory from the current folder), in
PyTorch and in Keras on JAX; the table, the JSON, the progress on stderr, and the bad options
that end with exit status 2. One timed round each: what is checked is the command, not the
speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpreg.tools import cli, cost_cli

CRITICS = textwrap.dedent("""
    def make_critic():
        import torch
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8),
                                   torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1))

    def make_keras_critic():
        import keras
        return keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(),
                                 keras.layers.Dense(8), keras.layers.LeakyReLU(0.2),
                                 keras.layers.Dense(1)])

    not_a_factory = 3
""")

QUICK = ("--quick", "--rounds", "1", "--threads", "1")


def gpreg_cost(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpreg", "cost", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "mycritics.py").write_text(CRITICS)
    return tmp_path


def test_own_torch_critic_as_json(folder):
    pytest.importorskip("torch")
    proc = gpreg_cost("--critic", "mycritics:make_critic", "--input-shape", "3,2,2",
                      "--batch", "4", "--penalties", "wgan_gp,r1", "--lazy", "4,16", "--json",
                      *QUICK, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["command"]["critic"] == "mycritics:make_critic"
    assert doc["info"]["framework"] == "torch" and doc["info"]["batch"] == 4
    assert set(doc["steps"]) == {"plain", "wgan_gp", "r1", "wgan_gp alone", "r1 alone",
                                 "r1 from_scores"}
    # 12 → 8 → 1 on a batch of 4: f = (768, 64); plain 6Σf − 2f_1 = 3456
    assert doc["steps"]["plain"]["flops"] == 3456
    assert [p["penalty"] for p in doc["penalties"]] == ["wgan_gp", "r1"]
    assert set(doc["penalties"][1]["lazy"]) == {"4", "16"}
    assert doc["reading"].startswith("wgan_gp makes a critic step")
    assert "gpreg cost [" in proc.stderr and "round 1/1" in proc.stderr  # progress
    assert "SyncActivityProfilerHandler" not in proc.stderr  # the profiler's chatter


def test_builtin_torch_critic_prints_the_table(tmp_path):
    pytest.importorskip("torch")
    proc = gpreg_cost("--critic", "dcgan32", "--batch", "2", "--penalties", "r1", "--lazy",
                      "0", "--no-memory", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "DCGANCritic (167,649 parameters), batch 2" in out
    for words in ("plain (control)", "r1 from_scores", "FLOPs ×", "reading: r1 makes"):
        assert words in out
    assert "lazy /" not in out and "memory:" not in out


def test_own_keras_critic_on_jax(folder):
    pytest.importorskip("jax")
    pytest.importorskip("keras")
    proc = gpreg_cost("--critic", "mycritics:make_keras_critic", "--framework", "keras",
                      "--backend", "jax", "--input-shape", "2,2,3", "--batch", "4",
                      "--penalties", "r1", "--lazy", "8", "--device", "cpu", *QUICK,
                      cwd=folder, env={"KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0, proc.stderr
    assert "keras-jax (jax.jit)" in proc.stdout
    assert "r1 alone" in proc.stdout and "PyTorch-only" in proc.stdout
    assert "reading: r1 makes a critic step" in proc.stdout


def test_a_factory_that_cannot_be_found(folder, monkeypatch):
    pytest.importorskip("torch")
    proc = gpreg_cost("--critic", "nosuchmodule:make", "--input-shape", "3,2,2", *QUICK,
                      cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert "cannot import 'nosuchmodule'" in proc.stderr and "Traceback" not in proc.stderr
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for ref, words in (("mycritics:missing", "has no attribute 'missing'"),
                       ("mycritics:not_a_factory", "is a int, not a factory"),
                       ("mycritics", "neither a built-in critic")):
        with pytest.raises(cost_cli.UsageError, match=words):
            cost_cli._factory(ref)
    assert cost_cli._factory("mycritics:make_critic").__name__ == "make_critic"


@pytest.mark.parametrize(("args", "words"), [
    (["--critic", "dcgan99"], "unknown critic 'dcgan99'"),
    (["--critic", "mycritics:make_critic"], "--input-shape is needed"),
    (["--critic", "dcgan32", "--input-shape", "3,8,8"], "--input-shape is for your own"),
    (["--critic", "dcgan32", "--penalties", "wgan"], "unknown penalty wgan"),
    (["--critic", "dcgan32", "--backend", "jax"], "--backend is for --framework keras"),
    (["--critic", "dcgan32", "--lazy", "4,x"], "--lazy takes comma-separated integers"),
    (["--critic", "dcgan32", "--batch", "0"], "--batch must be at least 1"),
])
def test_bad_options_exit_2(args, words, capsys):
    assert cli.main(["cost", *args]) == 2
    assert words in capsys.readouterr().err
