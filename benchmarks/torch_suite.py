"""The PyTorch sections: correctness checks, gpreg vs hand-written, step costs with FLOPs, lazy
R1, forward reuse and peak memory. Everything runs in this process, eagerly, on one device.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gpreg_torch as gp
from benchmarks import torch_handwritten as hw
from gpreg.tools import torch_critics as tc
from gpreg.tools.timing import GroupResult, Variant, time_group
from gpreg_torch._cost import count_flops, peak_memory_bytes

#: relative tolerance (‖a − b‖ / ‖b‖) of the float32 agreement checks made before timing
CHECK_RTOL = 2e-4

#: whether the installed gpreg has its forward-reuse API (added after these benchmarks)
HAS_FROM_SCORES = hasattr(gp, "from_scores")

#: the penalties whose full critic step is timed, and how each is called
PENALTIES: dict[str, Callable[..., torch.Tensor]] = {
    "wgan_gp": lambda d, real, fake: gp.wgan_gp(d, real, fake),
    "wgan_lp": lambda d, real, fake: gp.wgan_lp(d, real, fake),
    "zero_gp": lambda d, real, fake: gp.zero_gp(d, real, fake),
    "max_gp": lambda d, real, fake: gp.max_gp(d, real, fake),
    "r1": lambda d, real, fake: gp.r1(d, real),
    "r2": lambda d, real, fake: gp.r2(d, fake),
    "dragan": lambda d, real, fake: gp.dragan(d, real),
}


@dataclass
class Settings:
    """What one run of the PyTorch sections does."""

    device: str
    threads: int
    rounds: int
    warmup: int
    min_sample_s: float
    lazy_rounds: int
    interval: int = 16
    seed: int = 0

    def sync(self) -> Callable[[], None] | None:
        """``torch.cuda.synchronize`` on a GPU, nothing on the CPU."""
        return torch.cuda.synchronize if self.device.startswith("cuda") else None


class CheckFailed(AssertionError):
    """A hand-written baseline and gpreg disagreed beyond float32 tolerance."""


# ----------------------------------------------------------------------------- helpers


def _zero(params: Sequence[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def _rel_err(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors together (float64 accumulation)."""
    num = sum(float((x.double() - y.double()).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.double().pow(2).sum()) for y in b)
    return (num / max(den, 1e-300)) ** 0.5


def _value_and_grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    out = [loss.detach().reshape(1)]
    out += [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]
    return out


def _compare(name: str, critic: str, ref: Callable[[], torch.Tensor],
             other: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Value and parameter gradients of ``other`` against ``ref`` on identical inputs."""
    a = _value_and_grads(ref(), params)
    b = _value_and_grads(other(), params)
    err_value = _rel_err(b[:1], a[:1])
    err_grads = _rel_err(b[1:], a[1:])
    ok = err_value <= CHECK_RTOL and err_grads <= CHECK_RTOL and all(
        bool(torch.isfinite(t).all()) for t in b)
    return {"framework": "torch", "check": name, "critic": critic, "value": float(a[0]),
            "err_value": err_value, "err_grads": err_grads, "rtol": CHECK_RTOL, "ok": ok}


def _ratio_row(g: GroupResult, name: str, baseline: str) -> dict[str, Any]:
    return {"ms": 1e3 * g.median_s(name), "baseline_ms": 1e3 * g.median_s(baseline),
            "ratio": g.ratio_stats(name, baseline)}


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (each is at least one kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(penalty: Callable[[], torch.Tensor]) -> tuple[int, int]:
    """ATen ops of ``penalty()`` (points, forward, inner gradient, penalty) and of its
    ``backward()`` to the parameters."""
    with _OpCounter() as fwd:
        value = penalty()
    with _OpCounter() as bwd:
        value.backward()
    return fwd.count, bwd.count


# ----------------------------------------------------------------------------- the suite


class TorchSuite:
    """Runs the PyTorch sections for a list of critics and collects JSON-ready rows."""

    def __init__(self, settings: Settings, specs: Sequence[tc.CriticSpec],
                 log: Callable[[str], None] = print) -> None:
        self.s = settings
        self.specs = list(specs)
        self.log = log
        self.rows: dict[str, list[dict[str, Any]]] = {
            "checks": [], "overhead": [], "handwritten": [], "steps": [], "lazy": [],
            "reuse": [], "memory": [], "cross_framework": []}

    # -- setup
    def _setup(self, spec: tc.CriticSpec) -> tuple[torch.nn.Module, list[torch.Tensor],
                                                     torch.Tensor, torch.Tensor, torch.Tensor]:
        critic = tc.build(spec, self.s.device, seed=self.s.seed)
        real, fake, alpha = tc.batch(spec, self.s.device, seed=self.s.seed + 1)
        return critic, list(critic.parameters()), real, fake, alpha

    def _optimizer(self, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        # WGAN-GP's Adam settings; the learning rate is small so that weights barely move.
        return torch.optim.Adam(params, lr=1e-5, betas=(0.0, 0.9))

    def _time(self, variants: Sequence[Variant], rounds: int | None = None) -> GroupResult:
        return time_group(variants, rounds=rounds or self.s.rounds, warmup=self.s.warmup,
                          min_sample_s=self.s.min_sample_s, sync=self.s.sync(),
                          seed=self.s.seed)

    def _base(self, spec: tc.CriticSpec, g: GroupResult) -> dict[str, Any]:
        return {"critic": spec.name, "critic_desc": spec.describe(), "framework": "torch",
                "mode": "eager", "device": self.s.device, "threads": torch.get_num_threads(),
                "rounds": g.rounds, "inner": g.inner,
                "background_cores": g.extra.get("background_cores")}

    # -- checks
    def checks(self, spec: tc.CriticSpec) -> None:
        """gpreg against every hand-written baseline on identical inputs (value + grads)."""
        critic, params, real, fake, alpha = self._setup(spec)
        ref_gp = lambda: gp.wgan_gp(critic, real, fake, alpha=alpha)  # noqa: E731
        ref_r1 = lambda: gp.r1(critic, real)  # noqa: E731
        cases = [
            ("wgan_gp vs canonical", ref_gp,
             lambda: hw.canonical_wgan_gp(critic, real, fake, alpha)),
            ("wgan_gp vs studiogan-style", ref_gp,
             lambda: hw.studiogan_style_wgan_gp(critic, real, fake, alpha)),
            ("r1 vs stylegan2-style", ref_r1, lambda: hw.stylegan2_style_r1(critic, real)),
            ("r1 step: separate forward vs reuse",
             lambda: hw.nonsaturating_loss(critic(real), critic(fake)) + gp.r1(critic, real),
             lambda: hw.r1_step_loss_reuse(critic, real, fake)),
        ]
        if HAS_FROM_SCORES:
            cases.append((
                "r1 step: separate forward vs gp.from_scores",
                lambda: hw.nonsaturating_loss(critic(real), critic(fake)) + gp.r1(critic, real),
                lambda: hw.r1_step_loss_from_scores(critic, real, fake)))
        for name, ref, other in cases:
            row = _compare(name, spec.name, ref, other, params)
            self.rows["checks"].append(row)
            self.log(f"  check {spec.name:10s} {name:36s} value {row['err_value']:.1e} "
                     f"grads {row['err_grads']:.1e} {'ok' if row['ok'] else 'FAIL'}")

    # -- gpreg vs hand-written (and the torch row of the cross-framework table)
    def handwritten(self, spec: tc.CriticSpec) -> None:
        """Penalty units (points → penalty → backward to the weights), paired with baselines."""
        critic, params, real, fake, alpha = self._setup(spec)

        def unit(penalty: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                _zero(params)
                penalty().backward()
            return run

        def plain() -> None:
            _zero(params)
            (critic(fake).mean() - critic(real).mean()).backward()

        g = self._time([
            Variant("gpreg", unit(lambda: gp.wgan_gp(critic, real, fake, alpha=alpha))),
            Variant("canonical", unit(lambda: hw.canonical_wgan_gp(critic, real, fake, alpha))),
            Variant("canonical (repeat)",
                    unit(lambda: hw.canonical_wgan_gp(critic, real, fake, alpha))),
            Variant("studiogan-style",
                    unit(lambda: hw.studiogan_style_wgan_gp(critic, real, fake, alpha))),
            Variant("plain", plain),
        ])
        base = self._base(spec, g)
        for other in ("canonical", "studiogan-style"):
            self.rows["handwritten"].append({
                **base, "penalty": "wgan_gp", "baseline": other,
                **_ratio_row(g, "gpreg", other),
                "control": g.ratio_stats("canonical (repeat)", "canonical")})
        self.rows["cross_framework"].append({
            **base, "penalty": "wgan_gp", "penalty_ms": 1e3 * g.median_s("gpreg"),
            "plain_ms": 1e3 * g.median_s("plain"), "ratio": g.ratio_stats("gpreg", "plain"),
            "group": g.summary()})
        self._log_ratio(spec, "wgan_gp: gpreg / canonical", g, "gpreg", "canonical")
        self._log_ratio(spec, "wgan_gp: gpreg / studiogan", g, "gpreg", "studiogan-style")
        self._log_ratio(spec, "control: canonical / canonical", g, "canonical (repeat)",
                        "canonical")

        g = self._time([
            Variant("gpreg", unit(lambda: gp.r1(critic, real))),
            Variant("stylegan2-style", unit(lambda: hw.stylegan2_style_r1(critic, real))),
            Variant("stylegan2-style (repeat)",
                    unit(lambda: hw.stylegan2_style_r1(critic, real))),
        ])
        self.rows["handwritten"].append({
            **self._base(spec, g), "penalty": "r1", "baseline": "stylegan2-style",
            **_ratio_row(g, "gpreg", "stylegan2-style"),
            "control": g.ratio_stats("stylegan2-style (repeat)", "stylegan2-style"),
            "group": g.summary()})
        self._log_ratio(spec, "r1: gpreg / stylegan2-style", g, "gpreg", "stylegan2-style")

    def overhead(self, rounds: int = 41, min_sample_s: float = 0.02) -> None:
        """gpreg's fixed per-call cost over the hand-written code, on a trivial critic.

        On a real critic the difference is a small fraction of a noisy time; on
        ``Linear(16, 1)`` with a batch of 8 the unit is so short that many rounds fit in a
        second, and the per-round difference gpreg − baseline estimates the extra time per
        call (Python checks and the few extra elementwise ops on (B,) vectors). Dividing it
        by a critic's unit time predicts that critic's ratio more precisely than timing it.
        """
        torch.manual_seed(self.s.seed)
        critic = torch.nn.Linear(16, 1).to(self.s.device)
        params = list(critic.parameters())
        g = torch.Generator().manual_seed(self.s.seed)
        real, fake = (torch.randn(8, 16, generator=g).to(self.s.device) for _ in range(2))
        alpha = torch.rand(8, generator=g).to(self.s.device)

        def unit(penalty: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                _zero(params)
                penalty().backward()
            return run

        penalties: dict[tuple[str, str], dict[str, Callable[[], torch.Tensor]]] = {
            ("wgan_gp", "canonical"): {
                "gpreg": lambda: gp.wgan_gp(critic, real, fake, alpha=alpha),
                "canonical": lambda: hw.canonical_wgan_gp(critic, real, fake, alpha),
                "six-op norm by hand": lambda: hw.safe_norm_wgan_gp(critic, real, fake, alpha)},
            ("r1", "stylegan2-style"): {
                "gpreg": lambda: gp.r1(critic, real),
                "stylegan2-style": lambda: hw.stylegan2_style_r1(critic, real),
                "six-op norm by hand": lambda: hw.safe_norm_r1(critic, real)},
        }
        for (penalty, baseline), fns in penalties.items():
            variants = [Variant(name, unit(fn)) for name, fn in fns.items()]
            variants.append(Variant(f"{baseline} (repeat)", unit(fns[baseline])))
            res = time_group(variants, rounds=rounds, warmup=max(self.s.warmup, 5),
                             min_sample_s=min_sample_s, sync=self.s.sync(), seed=self.s.seed)

            def diff_us(name: str, base: str, res: GroupResult = res) -> float:
                return 1e6 * statistics.median(
                    a - b for a, b in zip(res.samples[name], res.samples[base]))

            diff = [a - b for a, b in zip(res.samples["gpreg"], res.samples[baseline])]
            row = {"framework": "torch", "device": self.s.device, "critic": "Linear(16, 1)",
                   "batch": 8, "penalty": penalty, "baseline": baseline,
                   "threads": torch.get_num_threads(), "rounds": res.rounds,
                   "inner": res.inner, "background_cores": res.extra.get("background_cores"),
                   "gpreg_us": 1e6 * res.median_s("gpreg"),
                   "baseline_us": 1e6 * res.median_s(baseline),
                   "overhead_us": 1e6 * statistics.median(diff),
                   "control_us": diff_us(f"{baseline} (repeat)", baseline),
                   "safe_norm_us": diff_us("six-op norm by hand", baseline),
                   "python_us": diff_us("gpreg", "six-op norm by hand"),
                   "overhead_us_quartiles": [1e6 * q for q in statistics.quantiles(diff, n=4)],
                   "aten_ops": {name: count_ops(fn) for name, fn in fns.items()}}
            self.rows["overhead"].append(row)
            ops = row["aten_ops"]
            self.log(f"  overhead {penalty:8s} vs {baseline:16s} {row['overhead_us']:7.1f} µs "
                     f"per call (six-op norm {row['safe_norm_us']:+.1f}, gpreg − six-op "
                     f"{row['python_us']:+.1f}, control {row['control_us']:+.1f}; aten ops "
                     f"{sum(ops['gpreg'])} vs {sum(ops[baseline])})")

    def predicted_ratios(self) -> None:
        """Add ``predicted`` = 1 + overhead / baseline time to every torch hand-written row."""
        over = {(r["penalty"], r["baseline"]): r["overhead_us"] for r in self.rows["overhead"]}
        for row in self.rows["handwritten"]:
            key = (row["penalty"], "canonical" if row["penalty"] == "wgan_gp"
                   else row["baseline"])
            if key in over and row["baseline_ms"] > 0:
                row["predicted_ratio"] = 1 + over[key] / (1e3 * row["baseline_ms"])

    def _log_ratio(self, spec: tc.CriticSpec, label: str, g: GroupResult, a: str,
                   b: str) -> None:
        r = g.ratio_stats(a, b)
        self.log(f"  {spec.name:10s} {label:36s} {1e3 * g.median_s(a):9.2f} ms / "
                 f"{1e3 * g.median_s(b):9.2f} ms  ratio {r['median']:.3f} "
                 f"[{r['min']:.3f}, {r['max']:.3f}]  bg {g.extra.get('background_cores')}")

    # -- full critic steps
    def _step(self, critic: torch.nn.Module, params: Sequence[torch.Tensor],
              opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
              penalty: Callable[..., torch.Tensor] | None, scale: float = 1.0) -> None:
        opt.zero_grad(set_to_none=True)
        loss = critic(fake).mean() - critic(real).mean()
        if penalty is not None:
            loss = loss + scale * penalty(critic, real, fake)
        loss.backward()
        opt.step()

    def steps(self, spec: tc.CriticSpec, penalties: Sequence[str]) -> None:
        """WGAN critic step with each penalty against the plain step; FLOP ratios beside."""
        critic, params, real, fake, _ = self._setup(spec)
        opt = self._optimizer(params)

        def make(pen: Callable[..., torch.Tensor] | None) -> Callable[[], None]:
            return lambda: self._step(critic, params, opt, real, fake, pen)

        variants = [Variant("plain", make(None))]
        variants += [Variant(name, make(PENALTIES[name])) for name in penalties]
        flops = {v.name: count_flops(v.fn) for v in variants}
        g = self._time(variants)
        base = self._base(spec, g)
        for name in penalties:
            row = {**base, "penalty": name, "step_ms": 1e3 * g.median_s(name),
                   "plain_ms": 1e3 * g.median_s("plain"), "ratio": g.ratio_stats(name, "plain"),
                   "flops_step": flops[name], "flops_plain": flops["plain"],
                   "flop_ratio": flops[name] / max(flops["plain"], 1),
                   "samples_ms": {k: g.summary()["samples_ms"][k] for k in ("plain", name)}}
            self.rows["steps"].append(row)
            self._log_ratio(spec, f"step {name} / plain (FLOPs ×{row['flop_ratio']:.2f})", g,
                            name, "plain")

    # -- lazy regularization
    def lazy(self, spec: tc.CriticSpec) -> None:
        """Blocks of ``interval`` steps: all plain, or R1 (× interval) on the last one."""
        critic, params, real, fake, _ = self._setup(spec)
        opt = self._optimizer(params)
        n = self.s.interval
        r1 = PENALTIES["r1"]

        def plain_block() -> None:
            for _ in range(n):
                self._step(critic, params, opt, real, fake, None)

        def lazy_block() -> None:
            for _ in range(n - 1):
                self._step(critic, params, opt, real, fake, None)
            self._step(critic, params, opt, real, fake, r1, scale=float(n))

        g = time_group([Variant("plain", plain_block), Variant("lazy", lazy_block)],
                       rounds=self.s.lazy_rounds, warmup=1, min_sample_s=0.0,
                       sync=self.s.sync(), seed=self.s.seed)
        row = {**self._base(spec, g), "penalty": "r1", "interval": n,
               "plain_step_ms": 1e3 * g.median_s("plain") / n,
               "lazy_step_ms": 1e3 * g.median_s("lazy") / n,
               "ratio": g.ratio_stats("lazy", "plain"), "group": g.summary()}
        step_r1 = [r for r in self.rows["steps"] if r["critic"] == spec.name
                   and r["penalty"] == "r1"]
        if step_r1:  # what the per-step ratio predicts: 1 + (r − 1) / N
            row["predicted_ratio"] = 1 + (step_r1[0]["ratio"]["median"] - 1) / n
        self.rows["lazy"].append(row)
        self._log_ratio(spec, f"lazy R1/{n}: block / plain block", g, "lazy", "plain")

    # -- forward reuse
    def reuse(self, spec: tc.CriticSpec) -> None:
        """R1 sharing the adversarial loss's D(real) against R1 with its own forward."""
        critic, params, real, fake, _ = self._setup(spec)
        opt = self._optimizer(params)

        def separate() -> None:
            opt.zero_grad(set_to_none=True)
            loss = hw.nonsaturating_loss(critic(real), critic(fake)) + gp.r1(critic, real)
            loss.backward()
            opt.step()

        def reuse() -> None:
            opt.zero_grad(set_to_none=True)
            hw.r1_step_loss_reuse(critic, real, fake).backward()
            opt.step()

        def reuse_params_only() -> None:
            opt.zero_grad(set_to_none=True)
            hw.r1_step_loss_reuse(critic, real, fake).backward(inputs=params)
            opt.step()

        def from_scores() -> None:
            opt.zero_grad(set_to_none=True)
            hw.r1_step_loss_from_scores(critic, real, fake).backward()
            opt.step()

        def forward() -> None:
            critic(real)

        variants = [Variant("separate", separate), Variant("reuse", reuse),
                    Variant("reuse, backward(inputs=params)", reuse_params_only),
                    Variant("forward", forward)]
        if HAS_FROM_SCORES:
            variants.append(Variant("gp.from_scores", from_scores))
        g = self._time(variants)
        sep = g.median_s("separate")
        row = {**self._base(spec, g), "penalty": "r1", "separate_ms": 1e3 * sep,
               "reuse_ms": 1e3 * g.median_s("reuse"),
               "reuse_inputs_ms": 1e3 * g.median_s("reuse, backward(inputs=params)"),
               "forward_ms": 1e3 * g.median_s("forward"),
               "ratio": g.ratio_stats("reuse", "separate"),
               "ratio_inputs": g.ratio_stats("reuse, backward(inputs=params)", "separate"),
               "forward_share": g.ratio_stats("forward", "separate"), "group": g.summary()}
        if HAS_FROM_SCORES:
            row["from_scores_ms"] = 1e3 * g.median_s("gp.from_scores")
            row["ratio_from_scores"] = g.ratio_stats("gp.from_scores", "separate")
            row["from_scores_vs_hand"] = g.ratio_stats("gp.from_scores", "reuse")
        row["saving_share"] = 1 - row["ratio"]["median"]
        row["goal_met"] = row["saving_share"] >= row["forward_share"]["median"]
        self.rows["reuse"].append(row)
        self._log_ratio(spec, "r1 reuse / separate forward", g, "reuse", "separate")
        self._log_ratio(spec, "forward / separate step", g, "forward", "separate")
        if HAS_FROM_SCORES:
            self._log_ratio(spec, "gp.from_scores / reuse by hand", g, "gp.from_scores",
                            "reuse")

    # -- memory
    def memory(self, spec: tc.CriticSpec) -> None:
        """Peak tensor memory of one step: plain, WGAN-GP, R1, R1 with forward reuse."""
        critic, params, real, fake, _ = self._setup(spec)
        opt = self._optimizer(params)

        def reuse() -> None:
            opt.zero_grad(set_to_none=True)
            hw.r1_step_loss_reuse(critic, real, fake).backward()
            opt.step()

        fns: dict[str, Callable[[], None]] = {
            "plain": lambda: self._step(critic, params, opt, real, fake, None),
            "wgan_gp": lambda: self._step(critic, params, opt, real, fake,
                                          PENALTIES["wgan_gp"]),
            "r1": lambda: self._step(critic, params, opt, real, fake, PENALTIES["r1"]),
            "r1 (reuse)": reuse,
        }
        peaks = {}
        for name, fn in fns.items():
            fn()  # optimizer state and caches exist before the measured call
            opt.zero_grad(set_to_none=True)
            peaks[name] = peak_memory_bytes(fn, self.s.device)
        method = ("torch.cuda.max_memory_allocated" if self.s.device.startswith("cuda")
                  else "torch.profiler memory events (CPU allocator)")
        for name, peak in peaks.items():
            if name == "plain":
                continue
            self.rows["memory"].append({
                "critic": spec.name, "critic_desc": spec.describe(), "framework": "torch",
                "device": self.s.device, "variant": name, "method": method,
                "peak_mib": peak / 2**20, "plain_peak_mib": peaks["plain"] / 2**20,
                "ratio": peak / max(peaks["plain"], 1)})
            self.log(f"  {spec.name:10s} memory {name:12s} {peak / 2**20:8.2f} MiB vs plain "
                     f"{peaks['plain'] / 2**20:8.2f} MiB  ×{peak / max(peaks['plain'], 1):.2f}")
