"""Run the whole gpreg test suite: lint, core, PyTorch, Keras on each backend, doctests.

Each group runs in its own pytest process (Keras reads KERAS_BACKEND once per process, so
every Keras backend will get a process of its own). A group that collects no tests fails the
run, as does any failure. Usage: ``python tools/run_tests.py [extra pytest args]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GROUPS: list[tuple[str, dict[str, str], list[str]]] = [
    ("core", {}, ["tests/core"]),
    ("torch", {}, ["tests/torch", "tests/property", "--ignore",
                   "tests/property/test_keras_agree.py", "--doctest-modules", "gpreg_torch",
                   "gpreg"]),
] + [
    (f"keras-{b}", {"KERAS_BACKEND": b},
     ["tests/keras", "tests/property/test_keras_agree.py", "--doctest-modules",
      "gpreg_keras/_penalties.py", "gpreg_keras/_stateless.py", "gpreg_keras/_exact.py",
      "gpreg_keras/_check.py", "gpreg_keras/_cost.py"])
    for b in ("tensorflow", "jax", "torch")
] + [
    # the Sphinx build (warnings are errors) and every code block of the docs pages
    ("docs", {"GPREG_DOCS_STRICT": "1"}, ["tests/docs"]),
    # `gpreg compare`, `gpreg demo` and `gpreg cost` with tiny settings, and every script in
    # examples/
    ("cli", {}, ["tests/cli"]),
    # gpreg.tools: the cost report, its FLOP counts and levers, the shared timing harness
    ("tools", {}, ["tests/tools"]),
    # the benchmark harness in --quick mode (correctness of the harness, not speed)
    ("bench", {}, ["tests/bench"]),
]


def main(argv: list[str]) -> int:
    failures = []
    t0 = time.perf_counter()
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT)
    if lint.returncode != 0:
        failures.append("ruff")
    for name, env, args in GROUPS:
        print(f"\n=== {name} ===", flush=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *argv]
        rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}).returncode
        if rc != 0:  # includes 5: no tests collected
            failures.append(f"{name} (pytest exit {rc})")
    took = time.perf_counter() - t0
    if failures:
        print(f"\nFAILED groups: {', '.join(failures)} ({took:.0f} s)")
        return 1
    print(f"\nall test groups passed ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
