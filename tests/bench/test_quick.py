"""Smoke test of the benchmark harness: ``python -m benchmarks --quick``.

The PyTorch path is mandatory; it runs every section on the convolutional and the attention
critic (the MLP and the 64×64 DCGAN use the same code paths). The Keras paths (one process
per backend) run on the MLP critic only, to stay inside the test budget (about a minute on
two free cores), and are skipped where TensorFlow/JAX (or Keras) cannot be imported. What is
checked is the harness, not the speed: every hand-written baseline agreed with gpreg (value
and parameter gradients) before it was timed, every section produced rows with finite,
positive numbers, and the Markdown rendering has them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRITICS = {"dcgan32", "attention"}


def _run(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out, md = tmp_path / "result.json", tmp_path / "result.md"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--markdown",
           str(md), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), md.read_text()


def _importable(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_quick_torch(tmp_path: Path) -> None:
    data, md = _run(tmp_path, "--frameworks", "torch", "--critics", ",".join(sorted(CRITICS)))
    assert data["failures"] == []
    assert data["config"]["quick"] is True
    assert data["threads"]["torch_intra_op"] == 1
    assert data["machine"]["versions"]["torch"]
    assert data["frameworks"]["torch"]["status"] == "ok"

    checks = data["checks"]
    assert {c["critic"] for c in checks} == CRITICS
    for critic in CRITICS:  # gp.from_scores adds a fifth check where gpreg has it
        assert {c["check"] for c in checks if c["critic"] == critic} >= {
            "wgan_gp vs canonical", "wgan_gp vs studiogan-style", "r1 vs stylegan2-style",
            "r1 step: separate forward vs reuse"}
    assert all(c["ok"] and c["err_grads"] <= c["rtol"] for c in checks)

    hw = data["handwritten"]
    assert {(r["critic"], r["baseline"]) for r in hw} == {
        (c, b) for c in CRITICS for b in ("canonical", "studiogan-style", "stylegan2-style")}
    assert all(_positive(r["ms"]) and _positive(r["baseline_ms"]) for r in hw)
    assert all(r["ratio"]["min"] <= r["ratio"]["median"] <= r["ratio"]["max"] for r in hw)

    steps = data["steps"]
    assert {r["penalty"] for r in steps} == {"wgan_gp", "wgan_lp", "zero_gp", "max_gp", "r1",
                                             "r2", "dragan"}
    # double backprop: a penalty step does more matmul/conv arithmetic than a plain one
    assert all(r["flops_plain"] > 0 and r["flop_ratio"] > 1.2 for r in steps)

    assert {r["critic"] for r in data["lazy"]} == CRITICS
    assert all(r["interval"] == 16 and _positive(r["ratio"]["median"]) for r in data["lazy"])
    assert all(_positive(r["forward_ms"]) for r in data["reuse"])
    assert all(r["peak_mib"] > 0 and r["plain_peak_mib"] > 0 for r in data["memory"])
    assert {r["framework"] for r in data["cross_framework"]} == {"torch"}

    for heading in ("gpreg against hand-written", "Critic step", "Lazy R1", "forward",
                    "Peak memory", "across frameworks", "Agreement checks"):
        assert heading in md
    assert "FAIL" not in md


@pytest.mark.skipif(not _importable("keras", "tensorflow", "jax"),
                    reason="Keras with TensorFlow and JAX is not importable")
def test_quick_keras_backends(tmp_path: Path) -> None:
    data, md = _run(tmp_path, "--frameworks", "torch,tensorflow,jax,keras-torch", "--critics",
                    "mlp", "--sections", "checks,handwritten")
    assert data["failures"] == []
    for backend in ("tensorflow", "jax", "keras-torch"):
        assert data["frameworks"][backend]["status"] == "ok"
    checks = {(c["framework"], c["check"]): c for c in data["checks"]}
    keras_checks = [c for (fw, _), c in checks.items() if fw.startswith("keras-")]
    # keras-io style eager and under XLA, TF-GAN style, jax.grad by hand with and without
    # jit, the canonical PyTorch penalty on the Keras model
    assert len(keras_checks) == 6
    assert all(c["ok"] for c in keras_checks)
    modes = {(r["framework"], r["mode"]) for r in data["handwritten"]}
    assert modes >= {("keras-tensorflow", "eager"), ("keras-tensorflow", "tf.function"),
                     ("keras-tensorflow", "tf.function(jit_compile=True)"),
                     ("keras-jax", "jax.jit"), ("keras-jax", "jax.grad, no jit"),
                     ("keras-torch", "eager")}
    assert {r["framework"] for r in data["cross_framework"]} == {
        "torch", "keras-tensorflow", "keras-jax"}
    assert "Keras/jax jax.jit" in md
