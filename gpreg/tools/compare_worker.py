"""Run the shipped fixtures through one framework path and print the results as JSON.

Invoked by ``gpreg compare`` in a subprocess per framework path (so each Keras backend gets
its own process)::

    python -m gpreg.tools.compare_worker torch float64 float32 --penalties r1,wgan_gp --repeats 5

It prints one JSON document on stdout; a framework that is not installed yields
``{"status": "not installed", ...}``.

Per case, the worker first checks: it computes the penalty's value, per-sample values, the
gradient norms at the stored points and the gradient of the penalty with respect to the
critic's parameters (double backprop), for the caller to compare with the float64 reference.
Then, with ``--repeats N`` (N > 0), it times one *penalty call*: the penalty's forward pass and
its gradient with respect to the critic's parameters, run the way training code on that path
runs by default (:data:`TIMED_AS`): one untimed warm-up call (it includes any tracing or
compilation), then N calls timed one by one; the row gets their median.

Keras on JAX, when timed, is checked *and* timed through one ``jax.jit``-compiled
``jax.value_and_grad`` per case (the per-sample values and norms through a second jitted
function): timing eager JAX calls would measure op-by-op dispatch, not what JAX training runs,
and one compilation per case then serves both the check and the timing. Without timing
(``--repeats 0``) it is checked eagerly, as ``run_case`` does: eager JAX compiles every
primitive once per shape (about 1,200 XLA compilations for all fixtures) but shares them
across cases, which is cheaper than two compilations per case. ``tests/keras`` compares the
compiled and eager results.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

# framework path -> (module with run_case/dtype/versions, environment of its process)
PATHS: dict[str, tuple[str, dict[str, str]]] = {
    "torch": ("gpreg_torch._fixture", {}),
    "keras-tensorflow": ("gpreg_keras._fixture", {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": ("gpreg_keras._fixture", {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("gpreg_keras._fixture", {"KERAS_BACKEND": "torch"}),
}

#: how each path runs the timed penalty call: the default of training code on that path
#: (every path runs on one thread: see ``_one_thread``)
TIMED_AS: dict[str, str] = {
    "torch": "eager, 1 thread",
    "keras-tensorflow": "tf.function, 1 thread",
    "keras-jax": "jax.jit, 1 thread",
    "keras-torch": "eager, 1 thread",
}


def _one_thread(path: str) -> None:
    """Run the framework on one thread (called before it starts computing).

    The fixture critics are tiny, so intra-op threads cannot help them; on a busy machine
    their spin-waiting makes calls up to a hundred times slower (a conv fixture: 2 ms on one
    thread, 176 ms on two while other jobs held the cores), which would drown the timings.
    One thread everywhere also puts every framework on equal terms."""

    if path == "keras-jax":
        from gpreg.tools._env import xla_one_thread

        xla_one_thread()
        return
    if path == "keras-tensorflow":
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except (ImportError, RuntimeError):  # not installed: reported by the import below
            pass
        return
    try:  # torch, and Keras's torch backend
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _tolist(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tolist(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


def median_seconds(step: Callable[[], Any], repeats: int,
                   block: Callable[[Any], Any] = lambda out: out,
                   warmed_up: bool = False) -> float:
    """Median wall time of ``repeats`` calls of ``step`` (after one untimed warm-up call
    unless ``warmed_up``); ``block`` waits for a call's result (JAX dispatches
    asynchronously). The garbage collector is off while timing (and not run before: a full
    collection costs 0.1–0.3 s once torch or TensorFlow is loaded, more than the timing)."""
    if not warmed_up:
        block(step())
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            block(step())
            samples.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(samples)


# --- the timed penalty call per path: the penalty and its parameter gradient ----------------
def _torch_step(mod: Any, fx: Any, case: Any, dtype: Any) -> Callable[[], Any]:
    import torch

    import gpreg_torch as gp

    critic = mod.build_critic(fx, dtype)
    params = list(critic.parameters())
    fn = gp.get_penalty(case.penalty)
    args, kwargs = mod.case_arguments(fx, case, dtype)
    kwargs = {**kwargs, "reduction": case.reduction}

    def step() -> Any:
        value = fn(critic, *args, **kwargs)
        return torch.autograd.grad(value, params, allow_unused=True)

    return step


def _keras_step(mod: Any, fx: Any, case: Any, dtype: Any) -> Callable[[], Any]:
    import keras

    import gpreg_keras as gp

    model, _ = mod.build_critic(fx, dtype)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = mod.case_arguments(fx, case, dtype)
    kwargs = {**kwargs, "reduction": case.reduction}
    variables = model.trainable_variables
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function
        def compiled(*a: Any) -> Any:
            with tf.GradientTape() as tape:
                value = fn(model, *a, **kwargs)
            return value, tape.gradient(value, variables)

        return lambda: compiled(*args)
    import torch  # Keras's torch backend: eager, like gpreg_torch

    params = [v.value for v in variables]

    def step() -> Any:
        value = fn(model, *args, **kwargs)
        return torch.autograd.grad(value, params, allow_unused=True)

    return step


def _keras_jax_case(mod: Any, fx: Any, case: Any,
                    dtype: str) -> tuple[dict[str, Any], Callable[[], Any]]:
    """One case on Keras's JAX backend through jitted functions (see the module docstring):
    the results in ``run_case``'s format, and the compiled (already warm) penalty call."""
    import jax
    import numpy as np
    from keras import ops

    import gpreg_keras as gp

    model, mapping = mod.build_critic(fx, dtype)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = mod.case_arguments(fx, case, dtype)
    pts = mod.tensors(case.points, dtype)
    variables = model.trainable_variables

    def loss(tv: list[Any], *a: Any) -> Any:
        return fn(gp.stateless_critic(model, tv), *a, **kwargs, reduction=case.reduction)

    def side(tv: list[Any], a: tuple[Any, ...], p: tuple[Any, ...]) -> Any:
        critic = gp.stateless_critic(model, tv)
        per_sample = fn(critic, *a, **kwargs, reduction="none", create_graph=False)
        return per_sample, gp.grad_norm(critic, p[0] if len(p) == 1 else p)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    tv = [v.value for v in variables]
    value, grads = jax.block_until_ready(value_and_grad(tv, *args))  # compiles: the warm-up
    # not timed: compiled with fewer LLVM optimizations, which compiles faster
    side_compiled = jax.jit(side).lower(tv, args, pts).compile(
        {"xla_backend_optimization_level": 0})
    per_sample, norms = side_compiled(tv, args, pts)

    def np64(x: Any) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)

    by_var = {id(v): g for v, g in zip(variables, grads)}
    got = {
        "value": float(np64(value)),
        "per_sample": np64(per_sample),
        "norms": np64(norms),
        "grads": {name: back(np64(by_var[id(var)])) for name, (var, back) in mapping.items()},
    }
    return got, lambda: value_and_grad(tv, *args)


def run(path: str, dtypes: list[str], penalties: list[str] | None,
        repeats: int = 0, fixture_names: list[str] | None = None) -> dict[str, Any]:
    import importlib

    from gpreg import fixtures

    if path not in PATHS:
        return {"status": "unknown", "reason": f"unknown framework path {path!r}"}
    module, env = PATHS[path]
    _one_thread(path)
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
    # Keras on JAX: check and time under jax.jit when timing; without timing the eager
    # check is cheaper (it shares compiled primitives across cases)
    jitted = env.get("KERAS_BACKEND") == "jax" and repeats > 0
    make_step = _torch_step if path == "torch" else _keras_step
    results = []
    for dtype in dtypes:
        for fx in fixtures.load():
            if fixture_names and fx.name not in fixture_names:
                continue
            for case in fx.cases:
                if penalties and case.penalty not in penalties:
                    continue
                tol = getattr(mod, "tolerance_key", lambda d: d)(dtype)
                row: dict[str, Any] = {"fixture": fx.name, "case": case.id, "dtype": dtype,
                                       "tolerance": tol}
                where = "check"
                try:
                    t0 = time.perf_counter()
                    if jitted:
                        got, step = _keras_jax_case(mod, fx, case, dtype)
                    else:
                        got = mod.run_case(fx, case, mod.dtype(dtype))
                    row["seconds"] = time.perf_counter() - t0
                    row.update(_tolist(got))
                    if repeats > 0:
                        where = "timing"
                        if jitted:
                            import jax

                            seconds = median_seconds(step, repeats, block=jax.block_until_ready,
                                                     warmed_up=True)
                        else:
                            step = make_step(mod, fx, case, mod.dtype(dtype))
                            seconds = median_seconds(step, repeats)
                        row["median_ms"] = 1e3 * seconds
                        row["repeats"] = repeats
                except Exception as exc:  # report, do not crash the whole table
                    row["error"] = f"{where}: {type(exc).__name__}: {exc}"
                    row["traceback"] = traceback.format_exc(limit=-4)  # the innermost frames
                results.append(row)
    out = {"status": "ok", "results": results, "versions": mod.versions(),
           "checked_as": "jax.jit" if jitted else "eager"}
    if repeats > 0:
        out["timed_as"] = TIMED_AS.get(path, "eager")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpreg.tools.compare_worker")
    parser.add_argument("path", help=f"one of: {', '.join(PATHS)}")
    parser.add_argument("dtypes", nargs="*", default=["float64"])
    parser.add_argument("--penalties", default=None, help="comma-separated penalty names")
    parser.add_argument("--fixtures", default=None, help="comma-separated fixture names")
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per case (0: none)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    penalties = args.penalties.split(",") if args.penalties else None
    names = args.fixtures.split(",") if args.fixtures else None
    json.dump(run(args.path, args.dtypes or ["float64"], penalties, args.repeats, names),
              sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
