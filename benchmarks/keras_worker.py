"""The Keras sections, one backend per process (Keras reads ``KERAS_BACKEND`` once).

Run by the runner as ``python -m benchmarks.keras_worker --backend tensorflow|jax|torch
--config JSON --result FILE``; only the torch backend imports torch. On TensorFlow it pairs
gpreg with a TF-GAN-style penalty (graph mode, ``tf.function``) and with a keras-io-style
nested-tape penalty, eagerly and under XLA (``tf.function(jit_compile=True)``); on JAX it
pairs gpreg with a hand-written ``jax.grad`` penalty, under ``jax.jit`` and eagerly (an outer
``jax.value_and_grad`` without ``jit``); on Keras's torch backend it pairs gpreg with the
canonical PyTorch penalty (nested ``torch.autograd.grad``) on the same Keras model, eagerly.
Each timed unit is the penalty *and* its gradient with respect to the critic's trainable
variables; the plain unit is the WGAN loss and its gradient. Every pair is first checked for
equal values and gradients.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gpreg.tools.critics import CriticSpec
from gpreg.tools.timing import GroupResult, Variant, limit_threads, time_group

#: relative tolerance (‖a − b‖ / ‖b‖) of the float32 agreement checks made before timing
CHECK_RTOL = 2e-4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rel_err(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
              for x, y in zip(a, b))
    den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in b)
    return (num / max(den, 1e-300)) ** 0.5


def _check(framework: str, name: str, spec: CriticSpec, ref: Any, other: Any) -> dict[str, Any]:
    """Compare two ``(value, grads)`` results converted to NumPy."""
    (va, ga), (vb, gb) = ref, other
    err_value = _rel_err([vb], [va])
    err_grads = _rel_err(gb, ga)
    finite = bool(np.all(np.isfinite(vb))) and all(bool(np.all(np.isfinite(g))) for g in gb)
    ok = err_value <= CHECK_RTOL and err_grads <= CHECK_RTOL and finite
    _log(f"  check {spec.name:10s} {name:40s} value {err_value:.1e} grads {err_grads:.1e} "
         f"{'ok' if ok else 'FAIL'}")
    return {"framework": framework, "check": name, "critic": spec.name, "value": float(va),
            "err_value": err_value, "err_grads": err_grads, "rtol": CHECK_RTOL, "ok": ok}


def _first_call_s(fn: Callable[[], Any]) -> float:
    """Seconds of the first call (tracing and compilation included)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _log_ratio(spec: CriticSpec, label: str, g: GroupResult, a: str, b: str) -> None:
    r = g.ratio_stats(a, b)
    _log(f"  {spec.name:10s} {label:40s} {1e3 * g.median_s(a):9.2f} ms / "
         f"{1e3 * g.median_s(b):9.2f} ms  ratio {r['median']:.3f} "
         f"[{r['min']:.3f}, {r['max']:.3f}]  bg {g.extra.get('background_cores')}")


class Runner:
    """Shared bookkeeping of one worker process."""

    def __init__(self, cfg: dict[str, Any], framework: str, threads: dict[str, Any]) -> None:
        self.cfg = cfg
        self.framework = framework
        self.threads = threads
        self.rows: dict[str, list[dict[str, Any]]] = {"checks": [], "handwritten": [],
                                                      "cross_framework": []}

    def time(self, variants: Sequence[Variant]) -> GroupResult:
        """Time a group with the run's settings."""
        return time_group(variants, rounds=self.cfg["rounds"], warmup=self.cfg["warmup"],
                          min_sample_s=self.cfg["min_sample_s"], seed=self.cfg["seed"])

    def base(self, spec: CriticSpec, mode: str, g: GroupResult) -> dict[str, Any]:
        """Fields every row of this worker carries."""
        return {"critic": spec.name, "critic_desc": spec.describe(),
                "framework": self.framework, "mode": mode, "device": "cpu",
                "threads": self.threads, "rounds": g.rounds, "inner": g.inner,
                "background_cores": g.extra.get("background_cores")}

    def record(self, spec: CriticSpec, mode: str, g: GroupResult, *, baseline: str,
               compile_s: dict[str, float], plain: bool) -> None:
        """Rows for gpreg vs ``baseline`` (and the cross-framework row when ``plain``)."""
        base = self.base(spec, mode, g)
        self.rows["handwritten"].append({
            **base, "penalty": "wgan_gp", "baseline": baseline,
            "ms": 1e3 * g.median_s("gpreg"), "baseline_ms": 1e3 * g.median_s(baseline),
            "ratio": g.ratio_stats("gpreg", baseline),
            "control": g.ratio_stats(f"{baseline} (repeat)", baseline),
            "first_call_s": compile_s, "group": g.summary()})
        _log_ratio(spec, f"[{mode}] gpreg / {baseline}", g, "gpreg", baseline)
        _log_ratio(spec, f"[{mode}] control", g, f"{baseline} (repeat)", baseline)
        if plain:
            self.rows["cross_framework"].append({
                **base, "penalty": "wgan_gp", "penalty_ms": 1e3 * g.median_s("gpreg"),
                "plain_ms": 1e3 * g.median_s("plain"), "ratio": g.ratio_stats("gpreg", "plain"),
                "first_call_s": compile_s})


# ----------------------------------------------------------------------------- TensorFlow


def tfgan_style_wgan_gp(critic: Callable[[Any], Any], real: Any, fake: Any, alpha: Any, *,
                        weight: float = 10.0, target: float = 1.0,
                        epsilon: float = 1e-10) -> Any:
    """TF-GAN's formulation, written from its formula: graph-mode ``tf.gradients``, the
    ratio form (‖g‖/t − 1)² and an epsilon inside the square root.

    Points are real + α·(fake − real), TF-GAN's convention (pass 1 − α for gpreg's).
    """
    import tensorflow as tf

    a = tf.reshape(alpha, [-1] + [1] * (len(real.shape) - 1))
    x = real + a * (fake - real)
    scores = critic(x)
    (grad,) = tf.gradients(scores, [x])
    sq = tf.reduce_sum(tf.square(grad), axis=list(range(1, len(grad.shape))))
    slopes = tf.sqrt(sq + epsilon)
    return weight * tf.reduce_mean(tf.square(slopes / target - 1.0))


def kerasio_style_wgan_gp(critic: Callable[[Any], Any], real: Any, fake: Any,
                          alpha: Any) -> Any:
    """The keras-io WGAN-GP example's formulation, written from its formula: a nested
    ``GradientTape`` watching the interpolates, sqrt of the sum of squares, weight 10.

    Points are real + α·(fake − real) (pass 1 − α for gpreg's convention).
    """
    import tensorflow as tf

    a = tf.reshape(alpha, [-1] + [1] * (len(real.shape) - 1))
    x = real + a * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(x)
        scores = critic(x)
    grad = tape.gradient(scores, x)
    norm = tf.sqrt(tf.reduce_sum(tf.square(grad), axis=list(range(1, len(grad.shape)))))
    return 10.0 * tf.reduce_mean((norm - 1.0) ** 2)


def _filled(grads: Sequence[Any], tvars: Sequence[Any]) -> list[Any]:
    """Zeros for the variables a loss does not reach (a penalty never reaches the head's bias).

    Asking the tape for ``UnconnectedGradients.ZERO`` instead fails on Keras variables
    ("'str' object has no attribute '_type_enum'": their dtype is a string).
    """
    import tensorflow as tf

    return [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, tvars)]


def run_tensorflow(run: Runner, specs: Sequence[CriticSpec]) -> None:
    """gpreg vs TF-GAN style (tf.function) and vs keras-io style (XLA), plus the plain unit."""
    for spec in specs:
        _tensorflow_critic(run, spec)


def _tensorflow_critic(run: Runner, spec: CriticSpec) -> None:
    """Check, then time, the TensorFlow groups of one critic."""
    import tensorflow as tf

    import gpreg_keras as gp
    from gpreg.tools import keras_critics as kc

    model = kc.build(spec, seed=run.cfg["seed"])
    tvars = model.trainable_variables
    real, fake, alpha = (tf.constant(a) for a in kc.batch(spec, seed=run.cfg["seed"] + 1))
    alpha_tf = 1.0 - alpha  # TF-GAN / keras-io interpolate the other way round

    def gpreg_unit(real: Any, fake: Any, alpha: Any, ratio: bool) -> Any:
        with tf.GradientTape() as tape:
            pen = gp.wgan_gp(model, real, fake, alpha=alpha, ratio=ratio)
        return pen, _filled(tape.gradient(pen, tvars), tvars)

    def tfgan_unit(real: Any, fake: Any, alpha: Any) -> Any:
        pen = tfgan_style_wgan_gp(model, real, fake, alpha)
        return pen, _filled(tf.gradients(pen, [v.value for v in tvars]), tvars)

    def kerasio_unit(real: Any, fake: Any, alpha: Any) -> Any:
        with tf.GradientTape() as tape:
            pen = kerasio_style_wgan_gp(model, real, fake, alpha)
        return pen, _filled(tape.gradient(pen, tvars), tvars)

    def plain_unit(real: Any, fake: Any, alpha: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(fake)) - tf.reduce_mean(model(real))
        return loss, _filled(tape.gradient(loss, tvars), tvars)

    fns = {
        "eager/gpreg": (functools.partial(gpreg_unit, ratio=False), alpha),
        "eager/kerasio": (kerasio_unit, alpha_tf),
        "graph/gpreg": (tf.function(functools.partial(gpreg_unit, ratio=True)), alpha),
        "graph/tfgan": (tf.function(tfgan_unit), alpha_tf),
        "xla/gpreg": (tf.function(functools.partial(gpreg_unit, ratio=False),
                                  jit_compile=True), alpha),
        "xla/kerasio": (tf.function(kerasio_unit, jit_compile=True), alpha_tf),
        "xla/plain": (tf.function(plain_unit, jit_compile=True), alpha),
    }

    def call(key: str) -> Callable[[], None]:
        fn, a = fns[key]
        return lambda: fn(real, fake, a)[0].numpy()

    compile_s = {k: _first_call_s(call(k)) for k in fns}

    def result(key: str) -> tuple[np.ndarray, list[np.ndarray]]:
        fn, a = fns[key]
        v, grads = fn(real, fake, a)
        return v.numpy(), [g.numpy() for g in grads]

    run.rows["checks"].append(_check(
        "keras-tensorflow", "wgan_gp vs keras-io style [eager]", spec,
        result("eager/kerasio"), result("eager/gpreg")))
    run.rows["checks"].append(_check(
        "keras-tensorflow", "wgan_gp (ratio) vs tf-gan style [tf.function]", spec,
        result("graph/tfgan"), result("graph/gpreg")))
    run.rows["checks"].append(_check(
        "keras-tensorflow", "wgan_gp vs keras-io style [XLA]", spec,
        result("xla/kerasio"), result("xla/gpreg")))

    def group(mode: str, mine: str, theirs: str, baseline: str, plain: bool) -> None:
        variants = [Variant("gpreg", call(mine)), Variant(baseline, call(theirs)),
                    Variant(f"{baseline} (repeat)", call(theirs))]
        keys = [mine, theirs]
        if plain:
            variants.append(Variant("plain", call("xla/plain")))
            keys.append("xla/plain")
        run.record(spec, mode, run.time(variants), baseline=baseline,
                   compile_s={k: compile_s[k] for k in keys}, plain=plain)

    group("eager", "eager/gpreg", "eager/kerasio", "keras-io style", plain=False)
    group("tf.function", "graph/gpreg", "graph/tfgan", "tf-gan style", plain=False)
    group("tf.function(jit_compile=True)", "xla/gpreg", "xla/kerasio", "keras-io style",
          plain=True)


# ----------------------------------------------------------------------------- JAX


def run_jax(run: Runner, specs: Sequence[CriticSpec]) -> None:
    """gpreg vs a hand-written ``jax.grad`` WGAN-GP under ``jax.jit`` (plus the plain unit)
    and without ``jit``."""
    for spec in specs:
        _jax_critic(run, spec)


def _jax_critic(run: Runner, spec: CriticSpec) -> None:
    """Check, then time, the JAX group of one critic."""
    import jax
    import jax.numpy as jnp

    import gpreg_keras as gp
    from gpreg.tools import keras_critics as kc

    model = kc.build(spec, seed=run.cfg["seed"])
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    real, fake, alpha = (jnp.asarray(a) for a in kc.batch(spec, seed=run.cfg["seed"] + 1))

    def scores(tv: Any, x: Any) -> Any:
        return model.stateless_call(tv, ntv, x)[0]

    def gpreg_penalty(tv: Any, real: Any, fake: Any, alpha: Any) -> Any:
        return gp.wgan_gp(gp.stateless_critic(model, tv, ntv), real, fake, alpha=alpha)

    def hand_penalty(tv: Any, real: Any, fake: Any, alpha: Any) -> Any:
        a = alpha.reshape((-1,) + (1,) * (real.ndim - 1))
        x = a * real + (1.0 - a) * fake
        grad = jax.grad(lambda x: jnp.sum(scores(tv, x)))(x)
        norm = jnp.sqrt(jnp.sum(jnp.square(grad.reshape(grad.shape[0], -1)), axis=1))
        return 10.0 * jnp.mean(jnp.square(norm - 1.0))

    def plain_loss(tv: Any, real: Any, fake: Any, alpha: Any) -> Any:
        return jnp.mean(scores(tv, fake)) - jnp.mean(scores(tv, real))

    units = (("gpreg", gpreg_penalty), ("hand", hand_penalty), ("plain", plain_loss))
    fns = {name: jax.jit(jax.value_and_grad(f)) for name, f in units}
    fns.update({f"eager/{name}": jax.value_and_grad(f) for name, f in units[:2]})

    def call(key: str) -> Callable[[], None]:
        fn = fns[key]
        return lambda: jax.block_until_ready(fn(tv, real, fake, alpha))

    compile_s = {f"jit/{k}": _first_call_s(call(k)) for k in fns if "/" not in k}

    def result(key: str) -> tuple[np.ndarray, list[np.ndarray]]:
        v, grads = fns[key](tv, real, fake, alpha)
        return np.asarray(v), [np.asarray(g) for g in grads]

    run.rows["checks"].append(_check("keras-jax", "wgan_gp vs jax.grad by hand [jit]", spec,
                                     result("hand"), result("gpreg")))
    run.rows["checks"].append(_check("keras-jax", "wgan_gp vs jax.grad by hand [no jit]",
                                     spec, result("eager/hand"), result("eager/gpreg")))
    g = run.time([Variant("gpreg", call("gpreg")),
                  Variant("jax.grad by hand", call("hand")),
                  Variant("jax.grad by hand (repeat)", call("hand")),
                  Variant("plain", call("plain"))])
    run.record(spec, "jax.jit", g, baseline="jax.grad by hand", compile_s=compile_s,
               plain=True)
    g = run.time([Variant("gpreg", call("eager/gpreg")),
                  Variant("jax.grad by hand", call("eager/hand")),
                  Variant("jax.grad by hand (repeat)", call("eager/hand"))])
    run.record(spec, "jax.grad, no jit", g, baseline="jax.grad by hand", compile_s={},
               plain=False)


# ----------------------------------------------------------------------------- Keras on torch


def run_keras_torch(run: Runner, specs: Sequence[CriticSpec]) -> None:
    """gpreg vs the canonical PyTorch WGAN-GP on the same Keras model, eagerly."""
    for spec in specs:
        _keras_torch_critic(run, spec)


def _keras_torch_critic(run: Runner, spec: CriticSpec) -> None:
    """Check, then time, the Keras-on-torch group of one critic."""
    import torch

    import gpreg_keras as gp
    from gpreg.tools import keras_critics as kc

    model = kc.build(spec, seed=run.cfg["seed"])
    params = [v.value for v in model.trainable_variables]
    real, fake, alpha = (torch.from_numpy(np.ascontiguousarray(a))
                         for a in kc.batch(spec, seed=run.cfg["seed"] + 1))

    def grads_of(loss: Any) -> tuple[Any, list[Any]]:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [torch.zeros_like(p) if g is None else g
                               for g, p in zip(grads, params)]

    def gpreg_unit() -> Any:
        return grads_of(gp.wgan_gp(model, real, fake, alpha=alpha))

    def canonical_unit() -> Any:
        a = alpha.reshape((-1,) + (1,) * (real.dim() - 1))
        x = (a * real + (1 - a) * fake).requires_grad_(True)
        out = model(x)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
        return grads_of(((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean() * 10)

    def result(fn: Callable[[], Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        v, grads = fn()
        return v.numpy(), [g.numpy() for g in grads]

    run.rows["checks"].append(_check("keras-torch", "wgan_gp vs canonical [eager]", spec,
                                     result(canonical_unit), result(gpreg_unit)))
    g = run.time([Variant("gpreg", gpreg_unit), Variant("canonical", canonical_unit),
                  Variant("canonical (repeat)", canonical_unit)])
    run.record(spec, "eager", g, baseline="canonical", compile_s={}, plain=False)


# ----------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    """Run one backend's sections and write the rows as JSON to ``--result``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.keras_worker")
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"], required=True)
    p.add_argument("--config", required=True, help="JSON: rounds, warmup, ... critics")
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    cfg = json.loads(args.config)
    if os.environ.get("KERAS_BACKEND") != args.backend:
        raise SystemExit(f"KERAS_BACKEND must be {args.backend!r} in this process, got "
                         f"{os.environ.get('KERAS_BACKEND')!r}")
    threads = limit_threads(args.backend, int(cfg["threads"]))
    versions: dict[str, str] = {}
    if args.backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif args.backend == "torch":
        import torch

        versions["torch"] = torch.__version__
    else:
        import jax

        versions["jax"] = jax.__version__
        versions["jax_devices"] = ", ".join(str(d) for d in jax.devices())
    import keras

    if keras.backend.backend() != args.backend:
        raise SystemExit(f"Keras picked backend {keras.backend.backend()!r}")
    versions["keras"] = keras.__version__
    framework = f"keras-{args.backend}"
    run = Runner(cfg, framework, threads)
    specs = [CriticSpec(**d) for d in cfg["critics"]]
    t0 = time.perf_counter()
    {"tensorflow": run_tensorflow, "jax": run_jax, "torch": run_keras_torch}[args.backend](
        run, specs)
    out = {"framework": framework, "versions": versions, "threads": threads,
           "duration_s": time.perf_counter() - t0, **run.rows}
    with open(args.result, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
