"""``gpreg_torch.cost`` and the framework-free half of ``cost`` (``gpreg.tools``).

Expected numbers come from closed forms: the matmul FLOPs of a Linear stack, derived by hand
below; the ratios and the lazy amortization from a fake clock whose step times are known;
the HLO FLOP count against XLA's own cost analysis. Nothing here asserts a wall-clock time.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import gpreg_torch as gp
from gpreg.tools import cost as tc
from gpreg.tools import hlo, timing

DIMS = (6, 10, 7, 1)  # a LeakyReLU MLP 6 → 10 → 7 → 1
BATCH = 5


def mlp(dims=DIMS) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.LeakyReLU(0.2)]
    return torch.nn.Sequential(*layers[:-1])


def quick(critic, real, **kw):
    opts = {"rounds": 1, "warmup": 0, "min_sample_s": 0.0, **kw}
    return gp.cost(critic, real, **opts)


def linear_flops(dims=DIMS, batch=BATCH) -> tuple[int, int, int]:
    """Σf, f_1, f_k: the forward FLOPs of the stack and of its first and last Linear, with
    f_i = 2·B·in·out (one multiply and one add per weight and sample)."""
    f = [2 * batch * a * b for a, b in itertools.pairwise(dims)]
    return sum(f), f[0], f[-1]


def test_flop_ratios_match_the_closed_form():
    """Counted by hand, per matmul that autograd runs (Adam and elementwise ops: none).

    plain step: the forward on real and on fake (2Σf); each backward computes every weight
    gradient (Σf) and every input gradient but the first layer's, whose input needs none
    (Σf − f_1): 6Σf − 2f_1.

    penalty: its forward (Σf); the inner gradient with respect to the points only, one input
    gradient per layer (Σf); the backward through that backward: for each inner matmul
    g_{i-1} = g_i W_i a gradient for W_i (Σf) and one for g_i except the last layer's, whose
    g is the constant seed (Σf − f_k); and LeakyReLU's second derivative, which is zero but
    which autograd sends back through the forward of every layer but the last: a weight and
    an input gradient each (2(Σf − f_k)); in all 6Σf − 3f_k.

    from_scores: the plain step, its real batch now requiring a gradient (+ f_1), plus the
    inner gradient and the backward through it (Σf + 2Σf − f_k); the forward and its
    backward are shared with the adversarial loss.
    """
    s, f1, fk = linear_flops()
    plain, pen = 6 * s - 2 * f1, 6 * s - 3 * fk
    report = quick(mlp(), torch.randn(BATCH, DIMS[0]), penalties=["wgan_gp", "r1", "r2"],
                   memory=False)
    assert report.plain.flops == plain
    for name in ("wgan_gp", "r1", "r2"):
        assert report.steps[name].flops == plain + pen
        assert report.steps[f"{name} alone"].flops == pen
        assert_allclose(report[name].flop_ratio, (plain + pen) / plain, rtol=1e-12)
    for name in ("r1", "r2"):
        assert report.steps[f"{name} from_scores"].flops == plain + f1 + 3 * s - fk
    assert report["wgan_gp"].reuse_ratio is None  # interpolates: nothing to reuse


class FakeClock:
    """``time.perf_counter`` of a machine on which each step takes a known time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float):
        def run() -> None:
            self.now += seconds
        return run


def test_ratios_and_lazy_amortization_from_a_fake_clock(monkeypatch):
    """plain 10 ms, wgan_gp 25 ms, its penalty-only step 15 ms, r1 22 ms, alone 12 ms,
    r1 from_scores 16.5 ms: every ratio and lever follows by arithmetic."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    times = {"plain": 0.010, "wgan_gp": 0.025, "r1": 0.022, "wgan_gp alone": 0.015,
             "r1 alone": 0.012, "r1 from_scores": 0.0165}
    info = tc.Info(framework="fake", mode="eager", device="cpu", critic="C", batch=8,
                   optimizer="Adam", threads="1 CPU thread")
    report = tc.measure(steps={k: clock.step(v) for k, v in times.items()},
                        penalties=["wgan_gp", "r1"], lazy=(4, 16), rounds=3, warmup=1,
                        min_sample_s=0.0, info=info,
                        flops=lambda n: {"plain": 100}.get(n, 250),
                        memory=lambda n: {"plain": 1000}.get(n, 1500))
    assert report.control == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert_allclose(report.plain.ms, 10.0)
    assert_allclose(report["wgan_gp"].ratio["median"], 2.5)
    assert_allclose(report["r1"].alone_ratio["median"], 1.2)
    # N batches: N plain steps and one penalty-only step, against N plain steps
    for name, alone in (("wgan_gp", 0.015), ("r1", 0.012)):
        for n in (4, 16):
            expected = (n * 0.010 + alone) / (n * 0.010)
            assert_allclose(report[name].lazy[n]["median"], expected, rtol=1e-12)
            assert_allclose(report[name].lazy[n]["max"], expected, rtol=1e-12)
    assert_allclose(report["r1"].reuse_saving["median"], 1 - 16.5 / 22)
    assert_allclose(report["r1"].flop_ratio, 2.5)
    assert_allclose(report["r1"].memory_ratio, 1.5)
    reading = report.reading()
    assert reading.startswith("wgan_gp makes a critic step 2.50× slower (2.50× the FLOPs)")
    assert "lazy r1 every 16 steps costs 1.07×" in reading  # 1 + 1.2 / 16 = 1.075
    assert "from_scores saves 25% of the r1 step" in reading
    table = report.table()
    assert table.splitlines()[0].split() == ["step", "ms", "×", "plain", "(min–max)", "FLOPs",
                                             "×", "memory", "×", "lazy", "/4", "lazy", "/16"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == [
        "plain", "wgan_gp", "r1", "wgan_gp", "r1", "r1"]


def test_lazy_ratios_follow_the_per_round_samples():
    """On a real critic: every lazy entry is 1 + (alone / plain) / N of the same round."""
    report = quick(mlp(), torch.randn(BATCH, DIMS[0]), penalties=["r1"], rounds=3,
                   lazy=(2, 8), flops=False, memory=False)
    s = report.samples_ms
    per_round = np.array(s["r1 alone"]) / np.array(s["plain"])
    for n in (2, 8):
        lazy = 1 + per_round / n
        got = report["r1"].lazy[n]
        assert_allclose([got["median"], got["min"], got["max"]],
                        [np.median(lazy), lazy.min(), lazy.max()], rtol=1e-12)


class Conditional(torch.nn.Module):
    """A critic with conditioning and a structured output, like StudioGAN's."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp((6, 8, 1))
        self.embed = torch.nn.Embedding(3, 6)
        self.calls: list[tuple[bool, float]] = []

    def forward(self, x, labels, *, scale=1.0):
        self.calls.append((labels is not None, scale))
        return {"adv_output": scale * self.net(x + self.embed(labels)), "extra": x.sum()}


def test_report_structure_and_state_restored():
    critic = Conditional()
    opt = torch.optim.SGD(critic.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 6)
    critic(x, torch.zeros(4, dtype=torch.long))["adv_output"].sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    grads = [p.grad.clone() for p in critic.parameters()]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in critic.parameters()]
    critic.calls.clear()

    labels = torch.tensor([0, 1, 2, 1])
    report = quick(critic, x, penalties=["wgan_gp", "r1"], args=(labels,),
                   kwargs={"scale": 2.0}, output="adv_output", optimizer=opt, lazy=(4,))
    assert critic.calls and all(c == (True, 2.0) for c in critic.calls)
    for k, v in critic.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(p.grad, g) for p, g in zip(critic.parameters(), grads))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], m)
               for p, m in zip(critic.parameters(), momentum))

    assert report.info.framework == "torch" and report.info.optimizer == "SGD"
    assert report.info.batch == 4 and "Conditional" in report.info.critic
    assert set(report.steps) == {"plain", "wgan_gp", "r1", "wgan_gp alone", "r1 alone",
                                 "r1 from_scores"}
    assert [p.penalty for p in report.penalties] == ["wgan_gp", "r1"]
    for p in report.penalties:
        assert set(p.lazy) == {4}
        assert p.ratio["min"] <= p.ratio["median"] <= p.ratio["max"]
        assert p.memory_ratio is not None and p.memory_ratio > 0
    assert report["r1"].reuse_saving is not None
    assert all(len(v) == 1 for v in report.samples_ms.values())
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["reading"] == report.reading()
    assert doc["penalties"][1]["lazy"]["4"]["median"] > 1
    text = report.summary()
    for words in ("plain (control)", "r1 from_scores", "lazy /4", "reading: wgan_gp makes",
                  "torch.profiler", "flop_counter"):
        assert words in text
    with pytest.raises(KeyError, match="no penalty 'r2'"):
        report["r2"]


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), [
    ({"penalties": []}, ValueError, "penalties is empty"),
    ({"penalties": ["wgan"]}, KeyError, "known penalties: wgan_gp"),
    ({"lazy": (0,)}, ValueError, "lazy must be a sequence of positive int"),
    ({"rounds": 0}, ValueError, "rounds must be a positive int"),
])
def test_bad_options_are_explained(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        gp.cost(mlp(), torch.randn(4, 6), **kwargs)


def test_a_function_critic_needs_an_optimizer():
    net = mlp()
    with pytest.raises(TypeError, match="not a torch.nn.Module.*optimizer="):
        gp.cost(lambda x: net(x), torch.randn(4, 6))
    report = quick(lambda x: net(x), torch.randn(4, 6), penalties=["r1"], lazy=(),
                   optimizer=torch.optim.Adam(net.parameters()), memory=False, flops=False)
    assert set(report.steps) == {"plain", "r1", "r1 from_scores"}
    assert report["r1"].lazy == {}


def test_benchmarks_share_the_timing_and_flop_code():
    from benchmarks import keras_worker, torch_suite
    from gpreg_torch import _cost

    assert torch_suite.time_group is timing.time_group is keras_worker.time_group
    assert torch_suite.count_flops is _cost.count_flops
    assert torch_suite.peak_memory_bytes is _cost.peak_memory_bytes
    assert torch_suite.tc.build.__module__ == "gpreg.tools.torch_critics"


needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="JAX is not installed")


@needs_jax
def test_hlo_count_agrees_with_xla_cost_analysis():
    """Programs of dots and convolutions only: XLA's count is the reference, including the
    padding, strides, dilations and feature groups of the convolutions autodiff emits."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)

    def conv(x, w, stride=(2, 2), groups=1):
        return jax.lax.conv_general_dilated(x, w, stride, ((1, 2), (1, 1)),
                                            rhs_dilation=(1, 2), feature_group_count=groups,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = rng.standard_normal((2, 9, 8, 4)).astype("float32")
    w = rng.standard_normal((3, 3, 2, 6)).astype("float32")
    a = rng.standard_normal((3, 5, 7)).astype("float32")
    b = rng.standard_normal((3, 7, 4)).astype("float32")
    programs = [
        (lambda a, b: jnp.einsum("bij,bjk->bik", a, b), (a, b)),
        (lambda x, w: conv(x, w, groups=2), (x, w)),
        (lambda x, w: jax.grad(lambda w: jnp.sum(conv(x, w, groups=2)))(w), (x, w)),
        (lambda x, w: jax.grad(lambda x: jnp.sum(conv(x, w, groups=2)))(x), (x, w)),
    ]
    for fn, inputs in programs:
        compiled = jax.jit(fn).lower(*inputs).compile()
        analysis = compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0]
        counted = hlo.count(compiled.as_text())
        assert counted.total == int(analysis["flops"]), compiled.as_text()
        assert counted.total > 0


def test_hlo_count_reads_inline_operand_shapes():
    text = "\n".join([
        "HloModule m, entry_computation_layout={(f32[4,3]{1,0}, f32[3,5]{1,0})->f32[4,5]}",
        "",
        "ENTRY %main (a: f32[4,3], b: f32[3,5]) -> f32[4,5] {",
        "  %a = f32[4,3]{1,0} parameter(0)",
        "  %b = f32[3,5]{1,0} parameter(1)",
        "  ROOT %d = f32[4,5]{1,0} dot(f32[4,3]{1,0} %a, f32[3,5]{1,0} %b), "
        "lhs_contracting_dims={1}, rhs_contracting_dims={0}",
        "}",
    ])
    assert hlo.count(text) == hlo.HloFlops(dot=2 * 4 * 5 * 3, convolution=0, dots=1,
                                           convolutions=0)


def test_hlo_peak_bytes_follows_the_schedule():
    """a (64 B) and b (32 B) live together, then a dies; c (16 B) joins b; the outputs are
    the tuple of c and b, which takes no buffer of its own: the peak is 96 bytes (112 if a
    were never freed)."""
    text = "\n".join([
        "HloModule m, is_scheduled=true",
        "",
        "ENTRY %main (p: f32[16]) -> (f32[4], f32[8]) {",
        "  %p = f32[16]{0} parameter(0)",
        "  %a = f32[16]{0} negate(f32[16]{0} %p)",
        "  %b = f32[8]{0} slice(%a), slice={[0:8]}",
        "  %c = f32[4]{0} slice(%b), slice={[0:4]}",
        "  ROOT %d = (f32[4]{0}, f32[8]{0}) tuple(%c, %b)",
        "}",
    ])
    assert hlo.peak_bytes(text) == 96


@needs_jax
def test_hlo_peak_bytes_estimates_xla_buffer_assignment():
    """The live-buffer peak of JAX's compiled conv-critic steps against the temporary and
    output bytes of XLA's buffer assignment (memory_analysis): within 25% (12% seen)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 16, 16, 3)).astype("float32")
    w1 = rng.standard_normal((4, 4, 3, 16)).astype("float32")
    w2 = rng.standard_normal((4, 4, 16, 32)).astype("float32")

    def critic(ws, x):
        h = x
        for w in ws:
            h = jax.lax.conv_general_dilated(h, w, (2, 2), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.leaky_relu(h, 0.2)
        return jnp.sum(h, axis=(1, 2, 3))

    def plain(ws, x):
        return jax.grad(lambda ws: jnp.mean(critic(ws, x)))(ws)

    def penalized(ws, x):
        def loss(ws):
            g = jax.grad(lambda x: jnp.sum(critic(ws, x)))(x)
            return jnp.mean(critic(ws, x)) + jnp.mean(jnp.sum(g * g, axis=(1, 2, 3)))
        return jax.grad(loss)(ws)

    for fn in (plain, penalized):
        compiled = jax.jit(fn).lower([w1, w2], x).compile()
        m = compiled.memory_analysis()
        reference = m.temp_size_in_bytes + m.output_size_in_bytes
        assert 0.75 * reference <= hlo.peak_bytes(compiled.as_text()) <= 1.25 * reference
