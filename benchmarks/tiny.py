"""``python -m benchmarks.tiny``: gpreg's fixed per-call cost in every eager path.

On a tiny critic (Linear(16→32), LeakyReLU(0.2), Linear(32→1); batch 16; one thread) a
penalty call does little arithmetic, so what gpreg adds per call (checks, dispatch, the extra
ops of its exact norm and of its zero gradients) shows. Each path runs in a process of its
own (Keras reads ``KERAS_BACKEND`` once):

- ``torch``: PyTorch eager;
- ``keras-tensorflow``: Keras on TensorFlow, eager and under ``tf.function``;
- ``keras-jax``: Keras on JAX, ``jax.value_and_grad`` without ``jax.jit`` and with it;
- ``keras-torch``: Keras on its torch backend, eager.

A timed unit is one penalty and the gradient of it for every critic parameter, for gpreg's
one line and for the same penalty written by hand in that framework (WGAN-GP and R1, from
the published formulas). Before timing, the two must agree in value and in every parameter
gradient (float32). Groups are paired and interleaved (``gpreg.tools.timing``) with the
hand-written unit timed twice: its second copy (``control``) shows the noise of the ratio.
Output: a Markdown table on stdout and, with ``--out``, the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PATHS = ("torch", "keras-tensorflow", "keras-jax", "keras-torch")
PENALTIES = ("wgan_gp", "r1")
BATCH, FEATURES, HIDDEN = 16, 16, 32
CHECK_RTOL = 2e-4


def _data(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, FEATURES)).astype(np.float32),
            rng.standard_normal((BATCH, FEATURES)).astype(np.float32),
            rng.random(BATCH).astype(np.float32))


def _weights(seed: int = 0) -> list[np.ndarray]:
    """Kernel, bias, kernel, bias (Keras layout: kernels are (in, out))."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32) / 4,
            rng.standard_normal(HIDDEN).astype(np.float32) / 4,
            rng.standard_normal((HIDDEN, 1)).astype(np.float32) / 4,
            rng.standard_normal(1).astype(np.float32)]


def _rel_err(a: Sequence[Any], b: Sequence[Any]) -> float:
    """‖a − b‖ / ‖b‖ over all arrays together; a ``None`` gradient (a parameter the penalty
    does not reach, left without one) counts as zeros."""
    a = [np.zeros_like(np.asarray(y)) if x is None else x for x, y in zip(a, b)]
    b = [np.zeros_like(np.asarray(x)) if y is None else y for x, y in zip(a, b)]
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
              for x, y in zip(a, b))
    den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in b)
    return (num / max(den, 1e-300)) ** 0.5


# ----------------------------------------------------------------------------- units
# Each ``_units_*`` returns {mode: {penalty: (gpreg_unit, hand_unit)}}; a unit returns
# (value, [gradient of every parameter]) as framework arrays.


def torch_setup() -> tuple[Any, list[Any], Any, Any, Any, Callable[[Any], Any]]:
    """The tiny critic as a torch module, its parameters, real, fake and alpha, and
    ``grads_of(loss)``: the loss's value and every parameter's gradient (by ``backward``)."""
    import torch

    w = _weights()
    lin1, lin2 = torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Linear(HIDDEN, 1)
    with torch.no_grad():
        for lin, k, b in ((lin1, w[0], w[1]), (lin2, w[2], w[3])):
            lin.weight.copy_(torch.from_numpy(k.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
    critic = torch.nn.Sequential(lin1, torch.nn.LeakyReLU(0.2), lin2)
    params = list(critic.parameters())
    real, fake, alpha = (torch.from_numpy(a) for a in _data())

    def grads_of(loss: Any) -> tuple[Any, list[Any]]:
        loss.backward()
        out = [p.grad for p in params]
        for p in params:
            p.grad = None
        return loss.detach(), out

    return critic, params, real, fake, alpha, grads_of


def _units_torch() -> dict[str, Any]:
    import gpreg_torch as gp

    critic, _, real, fake, alpha, grads_of = torch_setup()
    return {"eager": torch_pairs(gp, critic, real, fake, alpha, grads_of)}


def torch_pairs(gp: Any, critic: Any, real: Any, fake: Any, alpha: Any,
                 grads_of: Callable[[Any], Any], zero: bool = True) -> dict[str, Any]:
    """(gpreg, hand-written, hand-written with zero gradients) units of WGAN-GP and R1 in
    PyTorch autograd, for a torch module or a Keras model on the torch backend (``gp`` is
    gpreg_torch or gpreg_keras).

    gpreg hands every parameter its penalty does not reach (here the last bias) an exact zero
    gradient, as the reference trainers do, so that Adam steps it after a penalty-only
    backward and DDP sees every parameter used. The plain hand-written unit leaves that
    gradient ``None``; the third unit adds the public fix, ``out.sum() * 0`` (StyleGAN2-ADA's
    ``real_logits * 0``), so that it does the same work. Keras on torch leaves that gradient
    ``None`` as Keras on TensorFlow does (``zero=False``: no third unit)."""
    import torch

    def hand_gp() -> Any:
        a = alpha.view(-1, 1)
        x = (a * real + (1 - a) * fake).requires_grad_(True)
        out = critic(x)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
        return grads_of(((g.norm(2, dim=1) - 1) ** 2).mean() * 10)

    def hand_r1() -> Any:
        x = real.detach().requires_grad_(True)
        out = critic(x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return grads_of(g.square().sum(dim=1).mean() * 5)

    def hand_gp_zero() -> Any:
        a = alpha.view(-1, 1)
        x = (a * real + (1 - a) * fake).requires_grad_(True)
        out = critic(x)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
        return grads_of(((g.norm(2, dim=1) - 1) ** 2).mean() * 10 + out.sum() * 0)

    def hand_r1_zero() -> Any:
        x = real.detach().requires_grad_(True)
        out = critic(x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return grads_of(g.square().sum(dim=1).mean() * 5 + out.sum() * 0)

    units = {"wgan_gp": (lambda: grads_of(gp.wgan_gp(critic, real, fake, alpha=alpha)), hand_gp,
                         hand_gp_zero),
             "r1": (lambda: grads_of(gp.r1(critic, real)), hand_r1, hand_r1_zero)}
    return units if zero else {k: u[:2] for k, u in units.items()}


def _keras_model() -> Any:
    import keras

    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(HIDDEN),
                              keras.layers.LeakyReLU(0.2), keras.layers.Dense(1)])
    model.set_weights(_weights())
    return model


def _units_tensorflow() -> dict[str, Any]:
    import tensorflow as tf

    import gpreg_keras as gp

    model = _keras_model()
    tvars = model.trainable_variables
    real, fake, alpha = (tf.constant(a) for a in _data())

    def gpreg_gp() -> Any:
        with tf.GradientTape() as tape:
            pen = gp.wgan_gp(model, real, fake, alpha=alpha)
        return pen, tape.gradient(pen, tvars)

    def hand_gp() -> Any:
        with tf.GradientTape() as outer:
            a = tf.reshape(alpha, (-1, 1))
            x = a * real + (1.0 - a) * fake
            with tf.GradientTape() as inner:
                inner.watch(x)
                out = model(x)
            g = inner.gradient(out, x)
            norm = tf.sqrt(tf.reduce_sum(tf.square(g), axis=1))
            pen = 10.0 * tf.reduce_mean(tf.square(norm - 1.0))
        return pen, outer.gradient(pen, tvars)

    def gpreg_r1() -> Any:
        with tf.GradientTape() as tape:
            pen = gp.r1(model, real)
        return pen, tape.gradient(pen, tvars)

    def hand_r1() -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(real)
                out = model(real)
            g = inner.gradient(out, real)
            pen = 5.0 * tf.reduce_mean(tf.reduce_sum(tf.square(g), axis=1))
        return pen, outer.gradient(pen, tvars)

    eager = {"wgan_gp": (gpreg_gp, hand_gp), "r1": (gpreg_r1, hand_r1)}
    graph = {k: (tf.function(a), tf.function(b)) for k, (a, b) in eager.items()}
    return {"eager": eager, "tf.function": graph}


def _units_jax() -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    import gpreg_keras as gp

    model = _keras_model()
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    real, fake, alpha = (jnp.asarray(a) for a in _data())

    def scores(tv: Any, x: Any) -> Any:
        return model.stateless_call(tv, ntv, x)[0]

    def gpreg_gp(tv: Any) -> Any:
        return gp.wgan_gp(gp.stateless_critic(model, tv, ntv), real, fake, alpha=alpha)

    def hand_gp(tv: Any) -> Any:
        a = alpha.reshape(-1, 1)
        x = a * real + (1.0 - a) * fake
        g = jax.grad(lambda x: jnp.sum(scores(tv, x)))(x)
        return 10.0 * jnp.mean(jnp.square(jnp.sqrt(jnp.sum(jnp.square(g), axis=1)) - 1.0))

    def gpreg_r1(tv: Any) -> Any:
        return gp.r1(gp.stateless_critic(model, tv, ntv), real)

    def hand_r1(tv: Any) -> Any:
        g = jax.grad(lambda x: jnp.sum(scores(tv, x)))(real)
        return 5.0 * jnp.mean(jnp.sum(jnp.square(g), axis=1))

    def unit(f: Callable[[Any], Any], jit: bool) -> Callable[[], Any]:
        vg = jax.value_and_grad(f)
        vg = jax.jit(vg) if jit else vg
        return lambda: jax.block_until_ready(vg(tv))

    pairs = {"wgan_gp": (gpreg_gp, hand_gp), "r1": (gpreg_r1, hand_r1)}
    return {mode: {k: (unit(a, jit), unit(b, jit)) for k, (a, b) in pairs.items()}
            for mode, jit in (("jax.grad, no jit", False), ("jax.jit", True))}


def _units_keras_torch() -> dict[str, Any]:
    import torch

    import gpreg_keras as gp

    model = _keras_model()
    params = [v.value for v in model.trainable_variables]
    real, fake, alpha = (torch.from_numpy(a) for a in _data())

    def grads_of(loss: Any) -> tuple[Any, list[Any]]:
        return loss.detach(), list(torch.autograd.grad(loss, params, allow_unused=True))

    return {"eager": torch_pairs(gp, model, real, fake, alpha, grads_of, zero=False)}


# ----------------------------------------------------------------------------- one path


def run_path(path: str, rounds: int, warmup: int, min_sample_s: float) -> list[dict[str, Any]]:
    """Check, then time, every (mode, penalty) group of ``path`` in this process."""
    from gpreg.tools.timing import Variant, limit_threads, time_group

    framework = {"torch": "torch", "keras-tensorflow": "tensorflow", "keras-jax": "jax",
                 "keras-torch": "torch"}[path]
    threads = limit_threads(framework, 1)
    units = {"torch": _units_torch, "keras-tensorflow": _units_tensorflow,
             "keras-jax": _units_jax, "keras-torch": _units_keras_torch}[path]()
    rows = []
    for mode, pairs in units.items():
        for penalty, (mine, hand, *zero) in pairs.items():
            (v1, g1), (v2, g2) = mine(), hand()
            err = _rel_err([v1, *g1], [v2, *g2])
            if not err <= CHECK_RTOL:
                raise AssertionError(f"{path} {mode} {penalty}: gpreg and the hand-written "
                                     f"penalty disagree (relative error {err:.2e})")
            variants = [Variant("gpreg", mine), Variant("hand", hand), Variant("control", hand)]
            if zero:
                v3, g3 = zero[0]()
                err3 = _rel_err([v3, *g3], [v2, *g2])
                if not err3 <= CHECK_RTOL or any(x is None for x in g3) or any(
                        (x is None) != (y is None) for x, y in zip(g1, g3)):
                    raise AssertionError(f"{path} {mode} {penalty}: the hand-written penalty "
                                         "with zero gradients disagrees with gpreg (relative "
                                         f"error {err3:.2e}, or a gradient left None)")
                variants.append(Variant("hand_zero", zero[0]))
            g = time_group(variants, rounds=rounds, warmup=warmup, min_sample_s=min_sample_s)
            rows.append({
                "path": path, "mode": mode, "penalty": penalty, "check_rel_err": err,
                "gpreg_us": g.median_s("gpreg") * 1e6, "hand_us": g.median_s("hand") * 1e6,
                "ratio": g.ratio_stats("gpreg", "hand"),
                "control": g.ratio_stats("control", "hand"),
                "rounds": rounds, "inner": g.inner, "threads": threads,
                "background_cores": g.extra.get("background_cores"),
            })
            if zero:
                rows[-1].update(hand_zero_us=g.median_s("hand_zero") * 1e6,
                                ratio_zero=g.ratio_stats("gpreg", "hand_zero"))
    return rows


# ----------------------------------------------------------------------------- runner


def _child(path: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if path.startswith("keras-"):
        env["KERAS_BACKEND"] = path.removeprefix("keras-")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "benchmarks.tiny", "--child", path, "--rounds",
           str(args.rounds), "--warmup", str(args.warmup), "--min-sample-s",
           str(args.min_sample_s)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    out = ["| path | mode | penalty | gpreg µs | hand-written µs | gpreg − hand µs | "
           "gpreg ÷ hand (median [min–max]) | control ÷ hand | "
           "gpreg ÷ hand with zero gradients |",
           "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        q, c, z = r["ratio"], r["control"], r.get("ratio_zero")
        zs = f"{z['median']:.2f} [{z['min']:.2f}–{z['max']:.2f}]" if z else "–"
        out.append(f"| {r['path']} | {r['mode']} | {r['penalty']} | {r['gpreg_us']:.0f} | "
                   f"{r['hand_us']:.0f} | {r['gpreg_us'] - r['hand_us']:+.0f} | "
                   f"{q['median']:.2f} [{q['min']:.2f}–{q['max']:.2f}] | "
                   f"{c['median']:.2f} | {zs} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiny", description=__doc__.split(
        "\n")[0])
    p.add_argument("--paths", default=",".join(PATHS),
                   help=f"comma list of {','.join(PATHS)} (default: all)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--min-sample-s", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="3 rounds: checks the harness only")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.min_sample_s = 3, 2, 0.0
    if args.child:
        print(json.dumps(run_path(args.child, args.rounds, args.warmup, args.min_sample_s)))
        return 0
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        p.error(f"unknown paths {unknown}; choose from {', '.join(PATHS)}")
    rows: list[dict[str, Any]] = []
    for path in paths:
        print(f"[tiny] {path} ...", file=sys.stderr, flush=True)
        rows += _child(path, args)
    print(markdown(rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
