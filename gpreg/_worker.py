"""Run the shipped fixtures through one framework path and print the results as JSON.

Invoked by ``gpreg compare`` in a subprocess per framework path (so each Keras backend gets
its own process): ``python -m gpreg._worker torch float64 float32``. It prints one JSON
document on stdout; a framework that is not installed yields ``{"status": "not installed"}``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

# framework path -> (module with run_case/dtype/versions, environment of its process)
PATHS: dict[str, tuple[str, dict[str, str]]] = {
    "torch": ("gpreg_torch._fixture", {}),
    "keras-tensorflow": ("gpreg_keras._fixture", {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": ("gpreg_keras._fixture", {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("gpreg_keras._fixture", {"KERAS_BACKEND": "torch"}),
}


def _tolist(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tolist(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


def run(path: str, dtypes: list[str], penalties: list[str] | None) -> dict[str, Any]:
    import importlib

    from gpreg import fixtures

    if path not in PATHS:
        return {"status": "unknown", "reason": f"unknown framework path {path!r}"}
    module, env = PATHS[path]
    if env.get("KERAS_BACKEND") == "jax":
        try:
            import jax

            jax.config.update("jax_enable_x64", True)  # before Keras creates any array
        except ImportError as exc:
            return {"status": "not installed", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return {"status": "not installed", "reason": f"{type(exc).__name__}: {exc}"}
    results = []
    for dtype in dtypes:
        for fx in fixtures.load():
            for case in fx.cases:
                if penalties and case.penalty not in penalties:
                    continue
                tol = getattr(mod, "tolerance_key", lambda d: d)(dtype)
                row: dict[str, Any] = {"fixture": fx.name, "case": case.id, "dtype": dtype,
                                       "tolerance": tol}
                try:
                    t0 = time.perf_counter()
                    got = mod.run_case(fx, case, mod.dtype(dtype))
                    row["seconds"] = time.perf_counter() - t0
                    row.update(_tolist(got))
                except Exception as exc:  # report, do not crash the whole table
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    row["traceback"] = traceback.format_exc(limit=4)
                results.append(row)
    return {"status": "ok", "results": results, "versions": mod.versions()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path, rest = argv[0], argv[1:]
    penalties = None
    if "--penalties" in rest:
        i = rest.index("--penalties")
        penalties = rest[i + 1].split(",")
        rest = rest[:i] + rest[i + 2 :]
    json.dump(run(path, rest or ["float64"], penalties), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
