"""Shared pieces of the property tests: hypothesis strategies that draw small random critics,
data and penalty options, and the independent float64 reference for them.

The reference is ``gpreg/fixtures/generate.py`` (second-order forward-mode hyper-dual numbers
in NumPy, no code from gpreg): its functions are called directly and the result is wrapped in
the same :class:`gpreg.fixtures.Fixture` / :class:`gpreg.fixtures.Case` objects the shipped
fixtures use, so ``gpreg_torch._fixture.run_case`` and ``gpreg_keras._fixture.run_case`` run a
drawn case exactly as they run a stored one.

Every draw is deterministic (``derandomize=True``); ``GPREG_PROPERTY_SCALE`` (a float, default
1) multiplies every example budget, e.g. for a longer local or nightly run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from gpreg.fixtures import Case, Fixture
from gpreg.fixtures import generate as ref

PENALTIES = ("wgan_gp", "wgan_lp", "zero_gp", "max_gp", "r1", "r2", "dragan", "wgan_div")
#: penalties that evaluate the critic at interpolates and take ``alpha``
INTERPOLATING = ("wgan_gp", "wgan_lp", "zero_gp", "max_gp")
USES_TARGET = ("wgan_gp", "wgan_lp", "dragan")
#: DRAGAN's shapes, and WGAN-div's exponents (1 and 1.5: the exact-at-zero cases below 2)
DRAGAN_SHAPES = ("two_sided", "one_sided", "squared")
POWERS = (1.0, 1.5, 2.0, 3.0, 6.0)


#: WGAN-div's and DRAGAN's variants, each checked on drawn critics by its own property test
#: (the drawn mix of ``cases`` reaches each of them only now and then)
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("wgan_div", {"k": 2.0, "p": 6.0}),
    ("wgan_div", {"k": 3.0, "p": 1.5, "points": "real_fake"}),
    ("wgan_div", {"k": 0.5, "p": 1.0}),
    ("dragan", {"weight": 10.0, "c": 0.5, "ddof": 1, "target_factor": 0.75}),
    ("dragan", {"weight": 5.0, "c": 0.3, "perturbation": "gaussian", "target_factor": 1.5,
                "ratio": True}),
    ("dragan", {"weight": 10.0, "c": 0.5, "ddof": 1, "shape": "one_sided",
                "target_factor": 0.75}),
    ("dragan", {"weight": 2.0, "c": 1.0, "perturbation": "gaussian", "shape": "squared"}),
)


def data_roles(name: str) -> tuple[str, ...]:
    """The data arguments of penalty ``name``: ``("real", "fake")``, ``("real",)`` or
    ``("fake",)``."""
    if name in INTERPOLATING or name == "wgan_div":
        return ("real", "fake")
    return ("fake",) if name == "r2" else ("real",)


def random_keys(name: str, options: dict[str, Any]) -> tuple[str, ...]:
    """Which of ``alpha`` and ``noise`` penalty ``name`` takes with ``options``."""
    if name in INTERPOLATING:
        return ("alpha",)
    if name == "wgan_div":
        return () if options.get("points") == "real_fake" else ("alpha",)
    if name == "dragan":
        return ("noise",) if options.get("perturbation") == "gaussian" else ("alpha", "noise")
    return ()
ACTIVATIONS = ("tanh", "softplus", "leaky_relu", "elu")
REDUCTIONS = ("mean", "sum", "max")

#: Kinked activations are kept this far from their kink: wider than the generator's own
#: 1e-6, so that float32 round-off (about 1e-7 relative) can never move a pre-activation
#: across the kink and change which branch a framework takes.
KINK_MARGIN = 1e-4
#: Targets are kept this far (relative) from every norm, and the largest per-sample penalty
#: this far from the second largest for ``reduction="max"``: otherwise float32 round-off in
#: ``n - t`` (or in choosing the maximum) is amplified past the float32 tolerance.
TARGET_GAP = 0.02
MAX_GAP = 1e-3
#: Norms are kept above this: a gradient that cancels to a small fraction of its terms (a
#: norm of 3e-4 from O(1) paths was drawn) carries float32 round-off of about 1e-7 / norm
#: relative, past the float32 tolerance (Keras on JAX and torch computes float64 in float32).
MIN_NORM = 1e-2


def examples(n: int) -> int:
    """The example budget ``n`` times ``GPREG_PROPERTY_SCALE``."""
    return max(1, round(n * float(os.environ.get("GPREG_PROPERTY_SCALE", "1"))))


def bounded(n: int) -> settings:
    """Deterministic, CI-sized hypothesis settings with a budget of ``n`` examples."""
    return settings(
        max_examples=examples(n),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def _f32(x: np.ndarray) -> np.ndarray:
    """Round to float32 and back, so that float32 and float64 runs start from the same
    numbers and the reference sees exactly what every framework sees."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


@dataclass(frozen=True)
class Problem:
    """A drawn critic (generator layer format) with its data and explicit randomness."""

    layers: tuple[dict[str, Any], ...]
    params: dict[str, np.ndarray]
    real: tuple[np.ndarray, ...]
    fake: tuple[np.ndarray, ...]
    alpha: np.ndarray
    noise: tuple[np.ndarray, ...]

    @property
    def batch(self) -> int:
        return int(self.real[0].shape[0])

    def describe(self) -> str:
        arch = " -> ".join(
            f"{layer['type']}({self.params[layer['params']['weight']].shape[0]})"
            if layer["type"] == "linear"
            else layer["type"]
            for layer in self.layers
        )
        shapes = ", ".join(str(r.shape) for r in self.real)
        return f"{shapes}: {arch}"

    def fixture(self, cases: tuple[Case, ...] = ()) -> Fixture:
        return Fixture(
            name="property",
            description=self.describe(),
            layers=self.layers,
            params=self.params,
            real=self.real,
            fake=self.fake,
            alpha=self.alpha,
            noise=self.noise,
            cases=cases,
        )

    def take(self, index: Any) -> Problem:
        """The samples ``index`` (an int array) of the batch, in that order."""
        index = np.asarray(index)
        return Problem(
            layers=self.layers,
            params=self.params,
            real=tuple(r[index] for r in self.real),
            fake=tuple(f[index] for f in self.fake),
            alpha=self.alpha[index],
            noise=tuple(e[index] for e in self.noise),
        )


@st.composite
def problems(draw: Any, max_batch: int = 5) -> Problem:
    """A random small critic and its data.

    Inputs: a vector (B, F), an image (B, C, H, W) flattened by the first layer, or two parts
    (B, F1), (B, F2) concatenated by the first layer. Then 1 to 3 linear layers (widths 1-8,
    optional bias; the last one has 1 or 2 outputs, summed per sample), each hidden one
    followed by an optional layer norm (widths >= 3) and an activation drawn from tanh,
    softplus, leaky_relu, elu. Parameters and data come from a drawn NumPy seed (weights
    N(0, 1/fan_in), real N(0, 1), fake 0.5 + 1.5 N(0, 1), noise N(0, 1)); alpha is drawn
    by hypothesis itself, endpoints included.
    """
    batch = draw(st.integers(1, max_batch), label="batch")
    kind = draw(st.sampled_from(("vector", "image", "two_part")), label="input")
    architecture: list[dict[str, Any]]
    if kind == "vector":
        shapes = [(batch, draw(st.integers(1, 8)))]
        architecture = []
    elif kind == "image":
        channels, height, width = (draw(st.integers(1, n)) for n in (3, 4, 4))
        shapes = [(batch, channels, height, width)]
        architecture = [{"type": "flatten"}]
    else:
        shapes = [(batch, draw(st.integers(1, 4))), (batch, draw(st.integers(1, 4)))]
        architecture = [{"type": "concat"}]
    depth = draw(st.integers(1, 3), label="linear layers")
    for k in range(depth):
        last = k == depth - 1
        width = draw(st.integers(1, 2) if last else st.integers(1, 8))
        architecture.append({"type": "linear", "out": width, "bias": draw(st.booleans())})
        if last:
            break
        if width >= 3 and draw(st.booleans(), label="layer_norm"):
            architecture.append({"type": "layer_norm", "eps": 1e-5})
        act = draw(st.sampled_from(ACTIVATIONS))
        if act == "leaky_relu":
            # float32-representable slopes: Keras on TensorFlow passes the slope to the
            # LeakyRelu op as a float32 attribute, even for float64 tensors
            slope = float(np.float32(draw(st.sampled_from((0.01, 0.2)))))
            architecture.append({"type": act, "slope": slope})
        else:
            architecture.append({"type": act})
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    layers, params = ref.make_layers(architecture, shapes, rng)
    alpha = draw(
        st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=batch, max_size=batch),
        label="alpha",
    )
    return Problem(
        layers=tuple(layers),
        params={name: _f32(value) for name, value in params.items()},
        real=tuple(_f32(rng.standard_normal(s)) for s in shapes),
        fake=tuple(_f32(0.5 + 1.5 * rng.standard_normal(s)) for s in shapes),
        alpha=_f32(np.array(alpha)),
        noise=tuple(_f32(rng.standard_normal(s)) for s in shapes),
    )


@st.composite
def penalty_options(draw: Any, penalty: str) -> dict[str, Any]:
    """Keyword options for ``penalty``. ``target`` is given as ``target_factor``, a multiple
    of the median norm, resolved by :func:`reference_case` once the norms are known."""
    weight = draw(st.floats(0.1, 20.0), label="weight")
    if penalty in ("r1", "r2"):
        return {"gamma": weight}
    if penalty == "wgan_div":
        return {"k": weight, "p": draw(st.sampled_from(POWERS), label="p"),
                "points": draw(st.sampled_from(("interpolates", "real_fake")), label="points")}
    options: dict[str, Any] = {"weight": weight}
    shape = "two_sided"
    if penalty == "dragan":
        options["c"] = draw(st.sampled_from((0.1, 0.5, 1.0)))
        options["ddof"] = draw(st.sampled_from((0, 1)), label="ddof")
        options["perturbation"] = draw(st.sampled_from(("uniform", "gaussian")))
        shape = options["shape"] = draw(st.sampled_from(DRAGAN_SHAPES), label="shape")
    if penalty in USES_TARGET and shape != "squared":
        options["target_factor"] = draw(st.sampled_from((0.5, 0.75, 1.5, 2.0)))
        options["ratio"] = draw(st.booleans())
    return options


def _evaluate(problem: Problem) -> Any:
    """``at(kind, kwargs)`` for :func:`ref.case_values`: the reference's points, norms and
    norm derivatives; rejects the draw (``assume``) when a kinked activation comes within
    :data:`KINK_MARGIN` of its kink."""

    def at(kind: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if kind == "dragan" and kwargs.get("ddof", 0) and min(r.size for r in problem.real) <= 1:
            assume(False)  # no unbiased standard deviation of a single element
        points = ref.evaluation_points(
            kind, list(problem.real), list(problem.fake), problem.alpha, list(problem.noise),
            c=float(kwargs.get("c", 0.0)), ddof=int(kwargs.get("ddof", 0)),
            perturbation=str(kwargs.get("perturbation", "uniform")),
        )
        with mock.patch.object(ref, "KINK_MARGIN", KINK_MARGIN):
            try:
                g, dg = ref.input_gradients(list(problem.layers), problem.params, points)
            except ValueError as exc:
                if "kink" not in str(exc):
                    raise
                assume(False)
        norms, dnorms = ref.norms_and_derivatives(g, dg)
        return points, norms, dnorms

    return at


def reference_norms(
    problem: Problem, penalty: str, options: dict[str, Any] | float | None = None
) -> tuple[Any, ...]:
    """Evaluation points, norms and norm derivatives (B, K) of ``penalty`` with ``options``
    (or just DRAGAN's ``c``) from the reference; at WGAN-div's ``"real_fake"`` points, the
    real then the fake ones (2B). Rejects draws near a kink (see :func:`_evaluate`)."""
    kwargs = {"c": float(options)} if isinstance(options, (int, float)) else dict(options or {})
    at = _evaluate(problem)
    kind = ref.case_points(penalty, kwargs)
    if kind != "real_fake":
        return at(kind, kwargs)
    (pr, nr, dr), (pf, nf, df) = at("real", kwargs), at("fake", kwargs)
    return ([np.concatenate([r, f]) for r, f in zip(pr, pf)], np.concatenate([nr, nf]),
            np.concatenate([dr, df]))


def target_for(norms: np.ndarray, factor: float) -> float:
    """``factor`` times the median norm, rejected when it lies within :data:`TARGET_GAP`
    (relative) of any norm."""
    target = factor * float(np.median(norms))
    assume(target > 0)
    assume(float(np.min(np.abs(norms - target))) > TARGET_GAP * target)
    return target


def reference_case(
    problem: Problem, penalty: str, options: dict[str, Any], reduction: str
) -> Case:
    """The float64 reference for ``penalty`` with ``options`` on ``problem``."""
    factor = options.get("target_factor")
    kwargs = {k: v for k, v in options.items() if k != "target_factor"}
    if factor is not None:
        kwargs["target"] = None
    kwargs, points, norms, per_sample, dper = ref.case_values(
        penalty, kwargs, _evaluate(problem), resolve_target=lambda n: target_for(n, factor)
    )
    assume(float(np.min(norms)) > MIN_NORM)
    if reduction == "sum":
        value, grad = float(np.sum(per_sample)), np.sum(dper, axis=0)
    else:
        if reduction == "max" and problem.batch > 1:
            order = np.argsort(per_sample)
            top, second = per_sample[order[-1]], per_sample[order[-2]]
            if top - second <= MAX_GAP * top:  # a near tie: fine only with equal gradients
                scale = max(float(np.max(np.abs(dper))), 1e-300)
                tied = np.flatnonzero(per_sample >= top - MAX_GAP * top)
                assume(all(np.max(np.abs(dper[i] - dper[order[-1]])) <= 1e-9 * scale
                           for i in tied))
        try:
            value, grad = ref.reduce_penalty(per_sample, dper, reduction)
        except AssertionError:  # the reference refuses an ambiguous maximum
            assume(False)
    return Case(
        id=f"{penalty}-{reduction}",
        penalty=penalty,
        kwargs=kwargs,
        reduction=reduction,
        points=tuple(points),
        norms=norms,
        per_sample=per_sample,
        value=value,
        grads=ref._split(grad, problem.params),
    )


@st.composite
def cases(draw: Any, max_batch: int = 5) -> tuple[Problem, Case]:
    """A drawn problem with one drawn penalty, options and reduction, and its reference."""
    problem = draw(problems(max_batch=max_batch))
    penalty = draw(st.sampled_from(PENALTIES), label="penalty")
    options = draw(penalty_options(penalty))
    reduction = draw(st.sampled_from(REDUCTIONS), label="reduction")
    return problem, reference_case(problem, penalty, options, reduction)


def check_run(got: dict[str, Any], case: Case, tolerance: str, where: str) -> None:
    """A ``run_case`` result against the reference ``case`` (value, per-sample, norms,
    every parameter gradient) with the shared tolerance table."""
    from gpreg._tolerances import assert_case

    assert_case(got, case, tolerance, where)


def check_same(a: dict[str, Any], b: dict[str, Any], tolerance: str, where: str) -> None:
    """Two ``run_case`` results (two frameworks) against each other."""
    from gpreg._tolerances import assert_close

    for key in ("value", "per_sample", "norms"):
        assert_close(a[key], b[key], tolerance, err_msg=f"{where}: {key}")
    assert set(a["grads"]) == set(b["grads"]), where
    for name in a["grads"]:
        assert_close(a["grads"][name], b["grads"][name], tolerance, err_msg=f"{where}: d/d{name}")


# --- sampling statistics --------------------------------------------------------------------

def ks_uniform(samples: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic of ``samples`` against U[0, 1)."""
    u = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    n = u.size
    upper = np.arange(1, n + 1) / n - u
    lower = u - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


#: With n = 20000 draws the 0.1 % critical value of the KS statistic is 1.95 / sqrt(n) =
#: 0.0138; the seeds are fixed, so 0.02 fails only for a wrong distribution, never by chance.
KS_BOUND = 0.02


def check_uniform(samples: np.ndarray, what: str, n_min: int = 20000) -> None:
    """``samples`` look like independent U[0, 1) draws (fixed seed: a bound that cannot
    flake): all in [0, 1), KS statistic < 0.02, mean 1/2 and variance 1/12 within 0.01."""
    u = np.asarray(samples, dtype=np.float64).ravel()
    assert u.size >= n_min, f"{what}: only {u.size} samples"
    assert np.all((u >= 0.0) & (u < 1.0)), f"{what}: values outside [0, 1): {u.min()}, {u.max()}"
    ks = ks_uniform(u)
    assert ks < KS_BOUND, f"{what}: KS statistic {ks:.4f} against U[0, 1) (bound {KS_BOUND})"
    assert abs(u.mean() - 0.5) < 0.01, f"{what}: mean {u.mean():.4f}, expected 0.5"
    assert abs(u.var() - 1 / 12) < 0.01, f"{what}: variance {u.var():.4f}, expected 1/12"
    assert len(np.unique(u)) > 0.99 * u.size, f"{what}: repeated values"


def check_normal(samples: np.ndarray, std: float, what: str) -> None:
    """``samples`` look like N(0, std**2) draws: their normal CDF values pass
    :func:`check_uniform`."""
    z = np.asarray(samples, dtype=np.float64).ravel() / (std * math.sqrt(2.0))
    cdf = 0.5 * (1.0 + np.array([math.erf(v) for v in z]))
    check_uniform(np.clip(cdf, 0.0, np.nextafter(1.0, 0.0)), what)


def dragan_ddof_case(ddof: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(real, noise, alpha, expected points)`` for DRAGAN with ``c = 0.5`` and ``ddof``: a
    batch of 12 elements, sigma the standard deviation over all of them with ``ddof``
    degrees of freedom removed (ddof=1 is sqrt(12/11) times the population value)."""
    rng = np.random.default_rng(4)
    real = rng.standard_normal((3, 4))
    noise, alpha = rng.uniform(size=(3, 4)), rng.uniform(size=3)
    sigma = np.sqrt(np.sum((real - real.mean()) ** 2) / (real.size - ddof))
    return real, noise, alpha, real + alpha[:, None] * 0.5 * sigma * noise


def plus_minus_one(shape: tuple[int, ...]) -> np.ndarray:
    """An array of +1 and -1 (half each, alternating): mean 0, population std exactly 1."""
    size = math.prod(shape)
    assert size % 2 == 0
    return np.where(np.arange(size) % 2 == 0, 1.0, -1.0).reshape(shape)
