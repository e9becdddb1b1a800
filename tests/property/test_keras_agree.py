"""Property-based tests of gpreg_keras on the active Keras backend (hypothesis, bounded).

Runs only when KERAS_BACKEND is set, once per backend in its own process (tensorflow, jax,
torch). On random small critics, gpreg_keras agrees with the independent float64 hyper-dual
reference and, in the same process, with gpreg_torch (value, per-sample values, norms, every
parameter gradient); the penalty invariants hold; alpha and DRAGAN's noise are drawn as
specified and a seed reproduces a penalty.

Keras 3 computes some float64 ops in float32 on JAX and torch, so float64 there is held to
the float32 row of the tolerance table (``gpreg_keras._fixture.tolerance_key``). On JAX each
drawn case runs under one ``jax.jit`` (eager JAX compiles every op anew for every new shape,
which random shapes make too slow for CI); tests/keras covers eager JAX on the fixtures.
"""

from __future__ import annotations

import os

import pytest

BACKEND = os.environ.get("KERAS_BACKEND")
if not BACKEND:
    pytest.skip(
        "KERAS_BACKEND is not set: the Keras property tests run once per backend, each in its "
        "own process (KERAS_BACKEND=tensorflow|jax|torch)",
        allow_module_level=True,
    )

if BACKEND == "jax":  # float64 needs x64, switched on before Keras creates any array
    import jax

    jax.config.update("jax_enable_x64", True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _property_support import (  # noqa: E402
    PENALTIES,
    REDUCTIONS,
    VARIANTS,
    bounded,
    cases,
    check_normal,
    check_run,
    check_same,
    check_uniform,
    data_roles,
    dragan_ddof_case,
    penalty_options,
    plus_minus_one,
    problems,
    random_keys,
    reference_case,
    reference_norms,
    target_for,
)
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from keras import ops  # noqa: E402

import gpreg_keras as gp  # noqa: E402
import gpreg_torch._fixture as torch_fixture  # noqa: E402
from gpreg._tolerances import assert_close  # noqa: E402
from gpreg_keras._fixture import (  # noqa: E402
    build_critic,
    case_arguments,
    run_case,
    tensors,
    tolerance_key,
)

assert keras.backend.backend() == BACKEND, (
    f"KERAS_BACKEND={BACKEND} was requested but Keras runs {keras.backend.backend()}"
)

JAX = BACKEND == "jax"
DTYPES = st.sampled_from(("float64", "float32"))
N = 20000
#: Examples per property. JAX compiles every drawn critic anew (its variable initializers
#: and the jitted penalty), about 2 s of CPU each, so it draws fewer to stay within ~60 s.
BUDGET = {"agree": 8, "invariants": 6, "no_grad": 4, "variant": 2} if JAX else {
    "agree": 12, "invariants": 10, "no_grad": 6, "variant": 4}


def jit(fn):
    """``jax.jit`` on JAX (one compilation per drawn case), the function itself elsewhere."""
    if JAX:
        import jax

        return jax.jit(fn)
    return fn


def numpy(x):
    return np.asarray(ops.convert_to_numpy(ops.stop_gradient(x)), dtype=np.float64)


def as_function(model, values=None):
    """The critic as a plain function of the parts: ``stateless_critic`` on JAX (over
    ``values`` when given), the model called the Keras way elsewhere."""
    if JAX:
        return gp.stateless_critic(model, values)

    def critic(*parts):
        return model(parts[0] if len(parts) == 1 else list(parts))

    return critic


def one(parts):
    return parts[0] if len(parts) == 1 else tuple(parts)


def call(name, critic, real, fake, **kw):
    data = {"real": one(real), "fake": one(fake)}
    return gp.get_penalty(name)(critic, *(data[r] for r in data_roles(name)), **kw)


def randomness(name, alpha, noise, options=None):
    draws = {"alpha": alpha, "noise": one(noise)}
    return {k: draws[k] for k in random_keys(name, options or {})}


# --- agreement with the reference and with gpreg_torch --------------------------------------

def run_jitted(fixture, case, dtype):
    """``run_case`` on JAX with everything (value, parameter gradients, per-sample values,
    norms) under one ``jax.jit``; same result layout."""
    import jax

    model, mapping = build_critic(fixture, dtype)
    fn = gp.get_penalty(case.penalty)
    args, kwargs = case_arguments(fixture, case, dtype)
    points = tensors(case.points, dtype)
    variables = model.trainable_variables

    def loss(values, args):
        return fn(gp.stateless_critic(model, values), *args, **kwargs, reduction=case.reduction)

    @jax.jit
    def everything(values, args, points):
        value, grads = jax.value_and_grad(loss)(values, args)
        critic = gp.stateless_critic(model, values)
        per_sample = fn(critic, *args, **kwargs, reduction="none", create_graph=False)
        return value, grads, per_sample, gp.grad_norm(critic, one(points))

    value, grads, per_sample, norms = everything([v.value for v in variables], args, points)
    by_var = {id(v): g for v, g in zip(variables, grads)}
    return {
        "value": float(numpy(value)),
        "per_sample": numpy(per_sample),
        "norms": numpy(norms),
        "grads": {name: back(numpy(by_var[id(var)])) for name, (var, back) in mapping.items()},
    }


@bounded(BUDGET["agree"])
@given(drawn=cases(), dtype=DTYPES)
def test_keras_matches_reference_and_torch(drawn, dtype):
    problem, case = drawn
    fixture = problem.fixture((case,))
    got = (run_jitted if JAX else run_case)(fixture, case, dtype)
    tol = tolerance_key(dtype)
    where = f"keras-{BACKEND}/{dtype}/{case.id}/{problem.describe()}"
    check_run(got, case, tol, where)
    from_torch = torch_fixture.run_case(fixture, case, getattr(torch, dtype))
    check_run(from_torch, case, dtype, f"torch/{dtype}/{case.id}")
    check_same(got, from_torch, tol, f"{where} against gpreg_torch")


@pytest.mark.parametrize(("name", "options"), VARIANTS,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for n, o in VARIANTS])
@bounded(BUDGET["variant"])
@given(problem=problems(max_batch=4), reduction=st.sampled_from(REDUCTIONS), dtype=DTYPES)
def test_keras_variants_match_reference(name, options, problem, reduction, dtype):
    """WGAN-div's and DRAGAN's variants one by one (the mix above reaches each rarely)."""
    case = reference_case(problem, name, options, reduction)
    got = (run_jitted if JAX else run_case)(problem.fixture((case,)), case, dtype)
    check_run(got, case, tolerance_key(dtype),
              f"keras-{BACKEND}/{dtype}/{case.id}/{case.kwargs}/{problem.describe()}")


# --- invariants -----------------------------------------------------------------------------

@bounded(BUDGET["invariants"])
@given(problem=problems(max_batch=4), data=st.data(), dtype=DTYPES)
def test_keras_invariants(problem, data, dtype):
    """On one drawn critic: reduction="none" reduces to mean, sum and max; a permuted batch
    permutes the per-sample values; grad_norm(a * D) = |a| grad_norm(D); r1(2 w) =
    zero_gp(w, alpha = 1); wgan_lp <= wgan_gp, equal above the target, zero below."""
    name = data.draw(st.sampled_from(PENALTIES), label="penalty")
    options = dict(data.draw(penalty_options(name)))
    _, norms, _ = reference_norms(problem, name, options)
    if "target_factor" in options:
        options["target"] = target_for(norms, options.pop("target_factor"))
    _, interp_norms, _ = reference_norms(problem, "wgan_gp")
    lp_target = target_for(interp_norms, data.draw(st.sampled_from((0.5, 0.75, 1.5, 2.0))))
    reference_norms(problem, "r1")
    perm = np.array(data.draw(st.permutations(range(problem.batch)), label="permutation"))
    scale = data.draw(st.floats(-8.0, 8.0).filter(lambda a: abs(a) > 0.05), label="scale")
    weight = data.draw(st.floats(0.1, 20.0), label="zero_gp weight")
    model, _ = build_critic(problem.fixture(), dtype)
    moved = problem.take(perm)

    def data_of(p):
        return (tensors(p.real, dtype), tensors(p.fake, dtype),
                ops.convert_to_tensor(p.alpha, dtype=dtype), tensors(p.noise, dtype))

    @jit
    def compute(values, batch, moved_batch):
        critic = as_function(model, values)
        real, fake, alpha, noise = batch
        kw = {**options, **randomness(name, alpha, noise, options)}
        out = {red: call(name, critic, real, fake, **kw, reduction=red)
               for red in ("none", "mean", "sum", "max")}
        m_real, m_fake, m_alpha, m_noise = moved_batch
        out["permuted"] = call(name, critic, m_real, m_fake, **options,
                               **randomness(name, m_alpha, m_noise, options), reduction="none")
        out["norms"] = gp.grad_norm(critic, one(real))
        out["scaled"] = gp.grad_norm(lambda *parts: scale * critic(*parts), one(real))
        out["r1"] = gp.r1(critic, one(real), gamma=2 * weight, reduction="none")
        out["zero_gp"] = gp.zero_gp(critic, one(real), one(fake), weight=weight, alpha=1.0,
                                    reduction="none")
        kw = {"target": lp_target, "alpha": alpha, "reduction": "none"}
        out["wgan_lp"] = gp.wgan_lp(critic, one(real), one(fake), **kw)
        out["wgan_gp"] = gp.wgan_gp(critic, one(real), one(fake), **kw)
        return out

    values = [v.value for v in model.trainable_variables] if JAX else None
    out = {k: numpy(v) for k, v in compute(values, data_of(problem), data_of(moved)).items()}
    tol = tolerance_key(dtype)
    per_sample = out["none"]
    assert per_sample.shape == (problem.batch,)
    for red, reduce in (("mean", np.mean), ("sum", np.sum), ("max", np.max)):
        assert out[red].shape == ()
        assert_close(out[red], reduce(per_sample), tol, err_msg=red)
    assert_close(out["permuted"], per_sample[perm], tol, err_msg="permuted batch")
    assert_close(out["scaled"], abs(scale) * out["norms"], tol, err_msg="scaled output")
    assert_close(out["r1"], out["zero_gp"], tol, err_msg="r1 against zero_gp at alpha = 1")
    lp, two_sided = out["wgan_lp"], out["wgan_gp"]
    assert np.all(lp <= two_sided), (lp, two_sided)
    above = interp_norms >= lp_target  # never within 2 % of the target
    assert_close(lp[above], two_sided[above], tol, err_msg="wgan_lp above the target")
    assert np.all(lp[~above] == 0), lp


@bounded(BUDGET["no_grad"])
@given(problem=problems(max_batch=3), name=st.sampled_from(PENALTIES))
def test_keras_points_never_receive_a_gradient(problem, name):
    """Differentiating the penalty gives the critic's variables a gradient and the points,
    and a generator variable upstream of fake, none (None on TensorFlow and torch, exact
    zeros from jax.grad)."""
    reference_norms(problem, name)
    dtype = "float32"
    seed = {"seed": 0} if random_keys(name, {}) else {}  # alpha/noise drawn
    model, _ = build_critic(problem.fixture(), dtype)
    real, fake_base = tensors(problem.real, dtype), tensors(problem.fake, dtype)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        g = tf.Variable(1.0)
        with tf.GradientTape(persistent=True) as tape:
            for r in real:
                tape.watch(r)
            value = call(name, model, real, tuple(g * f for f in fake_base), **seed)
        assert all(x is None for x in tape.gradient(value, [*real, g]))
        grads = tape.gradient(value, model.trainable_variables)
        assert any(x is not None for x in grads)
    elif JAX:
        import jax

        def loss(values, real, g):
            critic = gp.stateless_critic(model, values)
            return call(name, critic, real, tuple(g * f for f in fake_base), **seed)

        values = [v.value for v in model.trainable_variables]
        d_values, d_real, d_g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
            values, real, np.float32(1.0))
        assert all(np.all(numpy(x) == 0) for x in d_real)
        assert numpy(d_g) == 0
        assert any(np.any(numpy(x) != 0) for x in d_values)
    else:
        real = tuple(r.detach().requires_grad_() for r in real)
        g = torch.nn.Parameter(torch.ones(()))
        value = call(name, model, real, tuple(g * f for f in fake_base), **seed)
        value.backward()
        assert all(r.grad is None for r in real)
        assert g.grad is None
        assert any(v.value.grad is not None for v in model.trainable_variables)


# --- sampling -------------------------------------------------------------------------------

class Recorder:
    """A critic that records the points it is called with: D(x) = sum of all elements.
    (On JAX the points are traced: a debug callback records their values.)"""

    def __init__(self):
        self.calls = []

    def _record(self, *parts):
        self.calls.append([np.asarray(p, dtype=np.float64).copy() for p in parts])

    def __call__(self, *parts):
        if JAX:
            import jax

            jax.debug.callback(self._record, *parts)
        else:
            self._record(*[numpy(p) for p in parts])
        return sum(ops.sum(ops.reshape(p, (p.shape[0], -1)), axis=1) for p in parts)

    @property
    def points(self):
        assert self.calls, "the critic was never called"
        for other in self.calls[1:]:  # JAX may trace the critic again for its checks
            for a, b in zip(self.calls[0], other):
                np.testing.assert_array_equal(a, b)
        return self.calls[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["wgan_gp", "zero_gp", "wgan_div"])
def test_keras_alpha_is_uniform_per_sample(name, dtype):
    rec = Recorder()
    gp.get_penalty(name)(rec, ops.ones((N, 1), dtype=dtype), ops.zeros((N, 1), dtype=dtype),
                         seed=2024)
    check_uniform(rec.points[0], f"{name} alpha ({BACKEND}, {dtype})")


@pytest.mark.parametrize("batch", [2, 64])
def test_keras_one_alpha_per_sample_shared_by_every_element_and_part(batch):
    for seed in range(3):
        rec = Recorder()
        real = (ops.ones((batch, 4, 2, 3)), ops.ones((batch, 5)))
        fake = (ops.zeros((batch, 4, 2, 3)), ops.zeros((batch, 5)))
        gp.wgan_gp(rec, real, fake, seed=seed)
        image, vector = rec.points
        alpha = image[:, 0, 0, 0]
        assert np.all(image == alpha[:, None, None, None])
        assert np.all(vector == alpha[:, None])
        assert np.all((alpha >= 0) & (alpha < 1))
        assert len(np.unique(alpha)) == batch, f"alpha repeats within a batch: {alpha}"


def test_keras_dragan_noise_is_uniform_elementwise_with_reals_shape():
    shape = (1000, 4, 3, 2)
    real = plus_minus_one(shape)
    rec = Recorder()
    gp.dragan(rec, ops.convert_to_tensor(real, dtype="float64"), c=1.0,
              alpha=ops.ones((shape[0],), dtype="float64"), seed=99)
    noise = rec.points[0] - real
    assert noise.shape == shape
    tol = 1e-6  # float64 on JAX and torch is computed partly in float32
    assert np.all(noise > -tol) and np.all(noise < 1 + tol)
    check_uniform(np.clip(noise, 0.0, np.nextafter(1.0, 0.0)), f"dragan noise ({BACKEND})")
    assert np.all(noise.reshape(shape[0], -1).std(axis=1) > 0.1)
    for axis in range(1, 4):
        assert np.all(noise.std(axis=axis) > 0)


def test_keras_dragan_alpha_is_per_sample_and_independent_of_the_noise():
    """noise = 1: the perturbation of sample i is alpha_i everywhere, U[0, 1); both drawn:
    alpha_i * u_ij has mean 1/4 in every column and correlation 3/7 between columns."""
    shape = (N, 3)
    real = ops.convert_to_tensor(plus_minus_one(shape), dtype="float64")
    rec = Recorder()
    gp.dragan(rec, real, c=1.0, noise=ops.ones(shape, dtype="float64"), seed=5)
    delta = rec.points[0] - numpy(real)
    np.testing.assert_allclose(delta[:, 0], delta[:, 1], rtol=0, atol=1e-6)
    check_uniform(np.clip(delta[:, 0], 0.0, np.nextafter(1.0, 0.0)), "dragan alpha")
    rec = Recorder()
    gp.dragan(rec, real, c=1.0, seed=11)
    delta = rec.points[0] - numpy(real)
    for column in range(shape[1]):
        assert abs(delta[:, column].mean() - 0.25) < 0.01, column
        corr = np.corrcoef(delta[:, column], delta[:, (column + 1) % shape[1]])[0, 1]
        assert 0.3 < corr < 0.5


def test_keras_dragan_perturbation_is_alpha_c_sigma_noise():
    rng = np.random.default_rng(3)
    scales = np.array([0.5, 1.0, 4.0])[:, None, None]
    real = (scales * rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 4)))
    noise = (rng.uniform(size=(3, 2, 3)), rng.uniform(size=(3, 4)))
    alpha = rng.uniform(size=3)
    c = 0.7
    rec = Recorder()
    gp.dragan(rec, tuple(ops.convert_to_tensor(r) for r in real), c=c,
              alpha=ops.convert_to_tensor(alpha),
              noise=tuple(ops.convert_to_tensor(u) for u in noise))
    for got, r, u in zip(rec.points, real, noise):
        a = alpha.reshape((-1,) + (1,) * (r.ndim - 1))
        assert_close(got, r + a * c * np.std(r) * u, tolerance_key("float64"))


@pytest.mark.parametrize("ddof", [0, 1])
def test_keras_dragan_sigma_has_the_requested_degrees_of_freedom(ddof):
    real, noise, alpha, expected = dragan_ddof_case(ddof)
    rec = Recorder()
    gp.dragan(rec, ops.convert_to_tensor(real), ddof=ddof, alpha=ops.convert_to_tensor(alpha),
              noise=ops.convert_to_tensor(noise))
    assert_close(rec.points[0], expected, tolerance_key("float64"))


def test_keras_dragan_gaussian_noise_is_normal_with_variance_c():
    """delta ~ N(0, c I) with c = 0.25: standard deviation 0.5."""
    rec = Recorder()
    gp.dragan(rec, ops.zeros((N, 2), dtype="float64"), perturbation="gaussian", c=0.25, seed=8)
    check_normal(rec.points[0], 0.5, f"dragan gaussian ({BACKEND})")


def test_keras_wgan_div_real_fake_evaluates_real_then_fake():
    rec = Recorder()
    real = np.random.default_rng(5).standard_normal((6, 3))
    fake = np.random.default_rng(6).standard_normal((6, 3))
    gp.wgan_div(rec, ops.convert_to_tensor(real), ops.convert_to_tensor(fake),
                points="real_fake")
    seen = [c[0] for c in rec.calls]
    assert any(np.allclose(x, real, rtol=1e-6, atol=0) for x in seen)
    assert any(np.allclose(x, fake, rtol=1e-6, atol=0) for x in seen)
    assert all(np.allclose(x, real, rtol=1e-6) or np.allclose(x, fake, rtol=1e-6)
               for x in seen)


@pytest.mark.parametrize("name", ["wgan_gp", "wgan_lp", "zero_gp", "max_gp", "dragan",
                                  "wgan_div"])
def test_keras_same_seed_same_penalty_other_seed_other_penalty(name):
    rng = np.random.default_rng(0)
    w = ops.convert_to_tensor(rng.standard_normal((4, 6)), dtype="float32")

    def critic(x):
        return ops.sum(ops.tanh(ops.matmul(x, w)), axis=1)

    real = ops.convert_to_tensor(rng.standard_normal((5, 4)), dtype="float32")
    fake = ops.convert_to_tensor(rng.standard_normal((5, 4)), dtype="float32")
    fn = gp.get_penalty(name)
    args = (real,) if name == "dragan" else (real, fake)
    kw = {"target": 0.5} if name == "wgan_lp" else {}

    def value(seed):
        return numpy(fn(critic, *args, **kw, seed=seed, reduction="none"))

    first = value(1)
    np.testing.assert_array_equal(first, value(1))
    other = value(2)
    changed = first != other
    assert changed.any() and np.all(changed | ((first == 0) & (other == 0))), (first, other)
    # a SeedGenerator: the same seed reproduces, and each call advances it
    fresh = [numpy(fn(critic, *args, **kw, seed=keras.random.SeedGenerator(7), reduction="none"))
             for _ in range(2)]
    np.testing.assert_array_equal(fresh[0], fresh[1])
    shared = keras.random.SeedGenerator(7)
    a = numpy(fn(critic, *args, **kw, seed=shared, reduction="none"))
    b = numpy(fn(critic, *args, **kw, seed=shared, reduction="none"))
    np.testing.assert_array_equal(a, fresh[0])
    assert not np.array_equal(a, b), "a SeedGenerator must advance between calls"
    if JAX:
        import jax

        keys = [numpy(fn(critic, *args, **kw, seed=jax.random.PRNGKey(3), reduction="none"))
                for _ in range(2)]
        np.testing.assert_array_equal(keys[0], keys[1])
