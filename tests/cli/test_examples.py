"""Every script in examples/ runs as a script (a subprocess, its main guard, its --steps)
for a handful of steps; Keras and TensorFlow ones with KERAS_BACKEND set."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def needs(*modules: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not installed(*modules), reason=f"needs {', '.join(modules)}")


def run_example(name: str, *args: str, backend: str | None = None) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend:
        env["KERAS_BACKEND"] = backend
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def finite_numbers(line: str) -> list[float]:
    assert not re.search(r"\b(nan|inf)\b", line, flags=re.I), line
    values = [float(x) for x in re.findall(r"-?\d+\.\d+", line)]
    assert values and all(abs(v) < 1e6 for v in values), line
    return values


def test_every_example_has_a_smoke_test():
    tested = {"torch_wgan_gp.py", "torch_r1_lazy.py", "torch_amp_wgan_gp.py",
              "tf_mirrored_wgan_gp.py", "keras_fit_wgan_gp.py", "flax_wgan_gp.py",
              "lightning_wgan_gp.py", "accelerate_wgan_gp.py", "torch_conditional_wgan_gp.py",
              "keras_conditional_wgan_gp.py"}
    assert {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == tested


@needs("torch")
def test_torch_wgan_gp():
    out = run_example("torch_wgan_gp.py", "--steps", "3")
    final = next(ln for ln in out.splitlines() if ln.startswith("final:"))
    assert "penalty" in final
    finite_numbers(final)


@needs("torch")
def test_torch_conditional_wgan_gp():
    out = run_example("torch_conditional_wgan_gp.py", "--steps", "3")
    assert "check_critic: OK" in out
    final = next(ln for ln in out.splitlines() if ln.startswith("final:"))
    assert "penalty" in final and "on_class" in final
    finite_numbers(final)


@needs("torch")
def test_torch_r1_lazy_regularizes_every_16th_step():
    out = run_example("torch_r1_lazy.py", "--steps", "17")
    assert "R1 evaluated on 2 of 17 critic steps" in out  # steps 0 and 16
    finite_numbers(out.splitlines()[-1])


@needs("torch")
def test_torch_amp_bfloat16():
    out = run_example("torch_amp_wgan_gp.py", "--steps", "3")
    assert "autocast torch.bfloat16" in out and "GradScaler" not in out
    finite_numbers(out.splitlines()[-1])


@needs("torch")
def test_torch_amp_float16_with_the_scaler():
    """float16 on the CPU (or CUDA): the default scale overflows the first critic steps,
    the scaler skips them and backs off, and training goes on with finite losses."""
    out = run_example("torch_amp_wgan_gp.py", "--steps", "3", "--dtype", "float16")
    line = next(ln for ln in out.splitlines() if ln.startswith("autocast"))
    skipped = int(re.search(r"skipped (\d+) critic steps", line).group(1))
    assert 1 <= skipped < 15, line  # 3 generator steps × 5 critic steps
    finite_numbers(out.splitlines()[-1])


@needs("tensorflow", "keras")
def test_tf_mirrored_strategy_scales_the_penalty_per_replica():
    out = run_example("tf_mirrored_wgan_gp.py", "--steps", "2", "--check",
                      backend="tensorflow")
    assert "2 replicas" in out
    check = next(ln for ln in out.splitlines() if ln.startswith("scaling check"))
    assert float(check.rsplit(" ", 1)[1]) < 1e-4
    finite_numbers(out.splitlines()[-1])
    proc = subprocess.run([sys.executable, str(EXAMPLES / "tf_mirrored_wgan_gp.py")],
                          capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert proc.returncode != 0 and "KERAS_BACKEND is 'jax'" in proc.stderr


# tests/keras/test_fit.py trains this example's model in-process on every backend; here it
# runs once as a script, on the first installed backend, to cover its main guard and --steps
KERAS_BACKEND = next((b for b in ("tensorflow", "jax", "torch") if installed("keras", b)),
                     None)


@pytest.mark.skipif(KERAS_BACKEND is None, reason="needs keras and one of its backends")
def test_keras_fit_as_a_script():
    out = run_example("keras_fit_wgan_gp.py", "--steps", "2", backend=KERAS_BACKEND)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"{KERAS_BACKEND}: final d_loss")
    finite_numbers(last)


@needs("jax", "flax", "optax", "keras")
def test_flax_nnx_with_optax_under_jit():
    out = run_example("flax_wgan_gp.py", "--steps", "3", backend="jax")
    final = out.strip().splitlines()[-1]
    assert final.startswith("final: wasserstein") and "grad_norm" in final
    finite_numbers(final)
    proc = subprocess.run([sys.executable, str(EXAMPLES / "flax_wgan_gp.py")],
                          capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "torch"})
    assert proc.returncode != 0 and "KERAS_BACKEND is 'torch'" in proc.stderr


@needs("torch", "lightning")
def test_lightning_16_mixed_with_its_grad_scaler():
    """float16 on the CPU through Lightning's MixedPrecision plugin: the default scale
    overflows the first critic steps, Lightning's scaler skips them, training goes on."""
    out = run_example("lightning_wgan_gp.py", "--steps", "3", "--precision", "16-mixed")
    line = next(ln for ln in out.splitlines() if ln.startswith("lightning"))
    assert "MixedPrecision 16-mixed" in line, line
    skipped = int(re.search(r"skipped (\d+) critic steps", line).group(1))
    assert 1 <= skipped < 15, line
    finite_numbers(out.splitlines()[-1])


@needs("torch", "lightning")
def test_lightning_bf16_mixed():
    out = run_example("lightning_wgan_gp.py", "--steps", "3", "--precision", "bf16-mixed")
    assert "MixedPrecision bf16-mixed, no scaler" in out
    finite_numbers(out.splitlines()[-1])


@needs("torch", "accelerate")
def test_accelerate_bf16_and_fp16_on_the_cpu():
    out = run_example("accelerate_wgan_gp.py", "--steps", "3", "--mixed-precision", "bf16")
    assert "mixed_precision bf16, no scaler" in out
    finite_numbers(out.splitlines()[-1])
    out = run_example("accelerate_wgan_gp.py", "--steps", "2", "--mixed-precision", "fp16")
    assert "fp16 is off on a CPU" in out or "GradScaler skipped" in out
    finite_numbers(out.splitlines()[-1])


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_conditional_fit_on_every_backend(backend):
    if not installed("keras", backend):
        pytest.skip(f"needs keras and {backend}")
    out = run_example("keras_conditional_wgan_gp.py", "--steps", "2", backend=backend)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"{backend}: final d_loss") and "on_class" in last
    finite_numbers(last)
