"""``python -m benchmarks.tiny_floor``: what is left of gpreg's per-call cost without its checks.

On the tiny critic of :mod:`benchmarks.tiny` (PyTorch eager, one thread), three units of
WGAN-GP and its gradient for every parameter, paired and interleaved:

- ``hand``: the penalty as written by hand (the published formula, as in ``benchmarks.tiny``);
- ``floor``: gpreg's own operations in gpreg's order and nothing else: the points, the critic,
  the input gradient (by the autograd engine's call, as gpreg makes it), one ``vector_norm``
  with the host read of its exact-range check, the penalty, and the exact zero gradient of
  the parameter the penalty does not reach (the last bias, joined by ``where`` as gpreg
  joins it) — no argument checks, no critic inspection, no kernel switches;
- ``gpreg``: ``gpreg_torch.wgan_gp``.

``floor / hand`` is what gpreg's exact norm and zero gradients cost on this critic;
``gpreg / floor`` is what its per-call checks cost. The three are first checked to agree in
value and in every parameter gradient.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks import tiny


def units() -> dict[str, Any]:
    """The three units (each returns the penalty's value and every parameter gradient)."""
    import math

    import torch

    import gpreg_torch as gp

    critic, params, real, fake, alpha, grads_of = tiny.torch_setup()
    mine, hand, _ = tiny.torch_pairs(gp, critic, real, fake, alpha, grads_of)["wgan_gp"]
    info = torch.finfo(torch.float32)
    lo, hi = math.sqrt(2.0 * tiny.FEATURES * info.tiny), math.sqrt(info.max) / 16.0
    true = torch.ones((), dtype=torch.bool)
    engine = torch.autograd.graph._engine_run_backward

    def floor() -> Any:
        a = alpha.reshape(-1, 1)
        x = (a * real + (1.0 - a) * fake).requires_grad_(True)
        out = critic(x)
        # the autograd engine's call, as gpreg makes it (torch.autograd.grad's own checks hold
        # by construction here)
        (g,) = engine((out,), (torch.ones_like(out),), True, True, (x,), True,
                      accumulate_grad=False)
        norms = torch.linalg.vector_norm(g, dim=(1,))
        values = norms.detach().numpy().tolist()
        if not (lo <= min(values) and max(values) <= hi):  # gpreg would scale: not here
            raise AssertionError("the tiny critic's norms left the plain range")
        d = norms - 1.0
        # the last bias (which the penalty does not reach) joins as gpreg joins it: its zero
        # gradient through where(True, values, bias)
        return grads_of(torch.mean(torch.where(true, d * d * 10.0, params[-1])))

    return {"hand": hand, "floor": floor, "gpreg": mine}


def run(rounds: int, warmup: int, min_sample_s: float) -> dict[str, Any]:
    from gpreg.tools.timing import Variant, limit_threads, time_group

    threads = limit_threads("torch", 1)
    u = units()
    (vh, gh), (vf, gf), (vg, gg) = u["hand"](), u["floor"](), u["gpreg"]()
    for name, (v, g) in (("floor", (vf, gf)), ("gpreg", (vg, gg))):
        err = tiny._rel_err([v, *g], [vh, *gh])
        if not err <= tiny.CHECK_RTOL:
            raise AssertionError(f"{name} and the hand-written penalty disagree ({err:.2e})")
    g = time_group([Variant(k, f) for k, f in u.items()] + [Variant("control", u["hand"])],
                   rounds=rounds, warmup=warmup, min_sample_s=min_sample_s)
    return {"us": {k: g.median_s(k) * 1e6 for k in ("hand", "floor", "gpreg", "control")},
            "floor_over_hand": g.ratio_stats("floor", "hand"),
            "gpreg_over_floor": g.ratio_stats("gpreg", "floor"),
            "gpreg_over_hand": g.ratio_stats("gpreg", "hand"),
            "control_over_hand": g.ratio_stats("control", "hand"),
            "rounds": rounds, "threads": threads}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiny_floor",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--min-sample-s", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="3 rounds: checks the harness only")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.min_sample_s = 3, 2, 0.0
    r = run(args.rounds, args.warmup, args.min_sample_s)
    us = r["us"]
    print(f"µs per unit: hand {us['hand']:.0f}, floor {us['floor']:.0f}, gpreg "
          f"{us['gpreg']:.0f}, control {us['control']:.0f}")
    for k in ("floor_over_hand", "gpreg_over_floor", "gpreg_over_hand", "control_over_hand"):
        q = r[k]
        print(f"{k.replace('_over_', ' / ')}: {q['median']:.2f} [{q['min']:.2f}–{q['max']:.2f}]")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
