"""The NumPy-only core: formulas against closed forms, points, checks, registry, plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpreg
from gpreg import _math, _points
from gpreg import _validation as v
from gpreg._tolerances import assert_close, max_rel_error, tolerance


def test_import_loads_no_framework():
    code = (
        "import sys, gpreg, gpreg.fixtures, gpreg.tools.cli, gpreg.tools.cost;"
        "import gpreg.tools.cost_cli, gpreg.tools.compare_worker, gpreg.tools.demo;"
        "import gpreg.tools.hlo, gpreg.tools.critics, gpreg.tools.timing;"
        "gpreg.fixtures.load();"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tensorflow', 'keras', 'jax', 'jaxlib', 'array_api_compat'));"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_safe_norm_exact_and_zero():
    s = np.array([0.0, 4.0, 1e-300, 2.0])
    assert_close(_math.safe_norm(s, np), [0.0, 2.0, 1e-150, np.sqrt(2.0)], "float64")


def test_per_sample_sum_of_squares_spans_parts_and_dims():
    g1 = np.arange(24, dtype=float).reshape(2, 3, 2, 2)
    g2 = np.ones((2, 5))
    expected = (g1.reshape(2, -1) ** 2).sum(1) + 5.0
    assert_close(_math.per_sample_sq_sum([g1, g2], np), expected, "float64")


@pytest.mark.parametrize("ratio", [False, True])
def test_shapes_closed_form(ratio):
    n = np.array([0.0, 0.5, 2.0, 3.0])
    t = 2.0
    d = n / t - 1 if ratio else n - t
    assert_close(_math.two_sided(n, target=t, ratio=ratio, xp=np), d**2, "float64")
    assert_close(_math.one_sided(n, target=t, ratio=ratio, xp=np), np.maximum(d, 0) ** 2,
                 "float64")
    assert_close(_math.squared(n, target=t, ratio=ratio, xp=np), n**2, "float64")


@pytest.mark.parametrize("shape", [_math.two_sided, _math.one_sided, _math.squared])
def test_a_nan_norm_gives_a_nan_penalty_in_every_shape(shape):
    """The one-sided shape's where(d > 0, d, 0) turned a NaN norm into a 0 penalty."""
    n = np.array([np.nan, 0.5, 2.0])
    out = shape(n, target=1.0, ratio=False, xp=np)
    assert np.isnan(out[0]) and np.isfinite(out[1:]).all()
    assert np.isnan(_math.reduce(out, "max", np)) and np.isnan(_math.reduce(out, "mean", np))


@pytest.mark.parametrize(("dtype", "s"), [("float32", 1e-25), ("float32", 1e19),
                                          ("float64", 1e-170), ("float64", 1e160)])
def test_per_sample_norm_is_exact_across_the_float_range(dtype, s):
    """Entries s in a (2, 2, 2) and a (2, 4) part: the norm is sqrt(8) s (closed form). The
    plain sum of squares gave 0 (tiny) or Inf (huge)."""
    g1, g2 = np.full((2, 2, 2), s, dtype=dtype), np.full((2, 4), s, dtype=dtype)
    with np.errstate(over="ignore", under="ignore"):
        naive = _math.safe_norm(_math.per_sample_sq_sum([g1, g2], np), np)
    assert naive[0] == 0 or np.isinf(naive[0])
    n = _math.per_sample_norm([g1, g2], np)
    assert n.dtype == np.dtype(dtype)
    assert_close(n, np.full(2, np.sqrt(8.0) * s), dtype)


def test_the_squared_shape_is_its_sum_of_squares():
    """n^2 from s = n^2 is s itself, at the same values as from the norm (closed form); the
    shapes that need a root have no such form."""
    g = np.array([[3.0, -4.0], [0.0, 0.0], [1e-170, 0.0], [np.nan, 1.0]])
    s = _math.per_sample_sq_sum([g], np)
    got = gpreg.SHAPES["squared"].from_squares(s, target=1.0, ratio=False, xp=np)
    assert got[0] == 25.0 and got[1] == 0.0 and got[2] == 0.0 and np.isnan(got[3])
    assert [name for name, sh in gpreg.SHAPES.items() if sh.of_squares is not None] == ["squared"]


def test_per_sample_norm_keeps_zero_inf_and_nan():
    g = np.array([[0.0, 0.0], [np.inf, 1.0], [np.nan, 1.0], [3.0, -4.0], [-np.inf, np.nan]])
    n = _math.per_sample_norm([g], np)
    assert n[0] == 0 and n[1] == np.inf and np.isnan(n[2]) and n[3] == 5.0 and np.isnan(n[4])
    assert _math.per_sample_norm([np.array([-3.0, 0.0])], np).tolist() == [3.0, 0.0]


@pytest.mark.parametrize("betas", [(0.9,), (0.0, 0.99, 0.5), 0.99])
def test_lazy_adam_needs_two_betas(betas):
    with pytest.raises(ValueError, match=r"betas must be a pair \(beta1, beta2\)"):
        gpreg.LazyRegularization(4).adam(1e-3, betas)


@pytest.mark.parametrize(("step", "exc"), [(1.0, TypeError), (2.5, TypeError),
                                           (-4, ValueError), (True, TypeError)])
def test_lazy_active_needs_a_non_negative_int(step, exc):
    with pytest.raises(exc, match="step must be a non-negative int"):
        gpreg.LazyRegularization(4).active(step)


def test_lazy_active_accepts_integer_scalars():
    lazy = gpreg.LazyRegularization(4)
    assert lazy.active(np.int64(8)) and not lazy.active(np.int32(3)) and lazy.active(0)


def test_power_shape_closed_form_and_exact_at_zero():
    n = np.array([0.0, 1e-200, 0.5, 2.0, 3.0])
    for p in (1.0, 1.5, 2.0, 6.0):
        with np.errstate(divide="raise", invalid="raise"):  # no 0 ** negative, no inf * 0
            got = _math.power(n, target=1.0, ratio=False, xp=np, p=p)
        assert_close(got, n**p, "float64")
    assert np.isnan(_math.power(np.array([np.nan]), target=1.0, ratio=False, xp=np, p=6.0))[0]
    shape = gpreg.SHAPES["power"].with_params(p=3.0)
    assert_close(shape(n, target=1.0, ratio=False, xp=np), n**3, "float64")
    assert gpreg.SHAPES["power"].params == (("p", 6.0),) and shape.params == (("p", 3.0),)


def test_shape_parameters_are_checked():
    power = gpreg.SHAPES["power"]
    with pytest.raises(ValueError, match="p must be at least 1; got 0.5"):
        power.with_params(p=0.5)
    with pytest.raises(TypeError, match="has no parameter"):
        power.with_params(q=2.0)
    with pytest.raises(TypeError, match="has no parameter"):
        gpreg.SHAPES["squared"].with_params(p=2.0)
    with pytest.raises(TypeError, match="must be a Python number"):
        power.with_params(p="6")
    assert power.with_params(p=1).params == (("p", 1.0),)


def test_resolve_shape():
    from gpreg._specs import resolve_shape

    assert resolve_shape("w", "power") is gpreg.SHAPES["power"]
    own = gpreg.Shape("cubed", lambda n, **_: n**3, False, "n^3")
    assert resolve_shape("w", own) is own
    with pytest.raises(ValueError, match="unknown shape 'cube'; expected one of one_sided, "
                                         "power, squared, two_sided"):
        resolve_shape("w", "cube")
    with pytest.raises(TypeError, match="shape must be a name"):
        resolve_shape("w", 3)


def test_real_fake_mean_is_the_mixture_mean():
    at_real, at_fake = np.array([1.0, 3.0]), np.array([5.0, 7.0])
    per_sample = _math.real_fake_mean(at_real, at_fake)
    assert_close(per_sample, [3.0, 5.0], "float64")
    assert np.mean(per_sample) == np.mean(np.concatenate([at_real, at_fake]))


def test_reductions():
    x = np.array([1.0, 4.0, 2.0])
    assert _math.reduce(x, "mean", np) == pytest.approx(7 / 3)
    assert _math.reduce(x, "sum", np) == 7.0
    assert _math.reduce(x, "max", np) == 4.0
    assert _math.reduce(x, "none", np) is x


def test_interpolates_per_sample_alpha():
    real = (np.ones((3, 2, 2)), np.full((3, 4), 2.0))
    fake = (np.zeros((3, 2, 2)), np.zeros((3, 4)))
    alpha = np.array([0.0, 0.5, 1.0])
    a, b = _points.interpolates(real, fake, alpha, np)
    assert_close(a[:, 0, 0], alpha, "float64")
    assert_close(b[:, 0], 2 * alpha, "float64")


def test_dragan_points_use_population_std_of_the_batch():
    real = (np.array([[1.0, 3.0], [5.0, 7.0]]),)
    noise = (np.ones((2, 2)),)
    alpha = np.array([1.0, 0.5])
    (x,) = _points.dragan_points(real, alpha, noise, 0.5, np)
    sigma = np.sqrt(5.0)  # population std of 1, 3, 5, 7
    assert_close(x, real[0] + 0.5 * sigma * alpha[:, None], "float64")


def test_dragan_points_unbiased_std_and_gaussian():
    real = (np.array([[1.0, 3.0], [5.0, 7.0]]), np.array([[2.0], [4.0]]))
    noise = (np.ones((2, 2)), np.full((2, 1), -1.0))
    alpha = np.array([1.0, 0.5])
    x, y = _points.dragan_points(real, alpha, noise, 0.5, np, ddof=1)
    sigma = np.sqrt(20.0 / 3.0)  # unbiased: sum of squared deviations 20 over 4 - 1
    assert_close(x, real[0] + 0.5 * sigma * alpha[:, None], "float64")
    assert_close(y, real[1] - 0.5 * np.sqrt(2.0) * alpha[:, None], "float64")  # per part
    # the paper's delta ~ N(0, c I): c is the variance, the noise is scaled by sqrt(c)
    x, y = _points.dragan_points(real, None, noise, 0.25, np, perturbation="gaussian")
    assert_close(x, real[0] + 0.5, "float64")
    assert_close(y, real[1] - 0.5, "float64")
    with pytest.raises(ValueError, match="unknown perturbation"):
        _points.dragan_points(real, alpha, noise, 0.5, np, perturbation="normal")


def test_batch_std_matches_numpy():
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    for ddof in (0, 1):
        assert_close(_points.batch_std(x, ddof, np), np.std(x, ddof=ddof), "float64")


def test_wgan_div_spec():
    s = gpreg.get_spec("wgan_div")

    assert (s.points, s.point_options) == ("interpolates", ("interpolates", "real_fake"))
    assert (s.weight_name, s.default_weight, s.weight_factor) == ("k", 2.0, 1.0)
    assert s.shape_obj.name == "power" and s.shape_params == {"p": 6.0}
    assert not s.uses_target and s.arxiv == "1712.01026"
    with pytest.raises(ValueError, match="point_options must list"):
        gpreg.PenaltySpec("x", "real", "squared", point_options=("fake", "real"))
    with pytest.raises(ValueError, match="point_options must list"):
        gpreg.PenaltySpec("x", "real", "squared", point_options=("real", "middle"))


def test_choose_points_and_the_shape_of_a_call():
    from gpreg._specs import choose_points, resolve_spec_shape

    div, r1 = gpreg.get_spec("wgan_div"), gpreg.get_spec("r1")
    assert choose_points("w", div, None) == "interpolates"
    assert choose_points("w", div, "real_fake") == "real_fake"
    assert choose_points("w", r1, "real") == "real"
    with pytest.raises(ValueError, match="unknown points 'fake'; expected one of"):
        choose_points("w", div, "fake")
    with pytest.raises(ValueError, match="r1 is always evaluated at 'real'"):
        choose_points("w", r1, "fake")
    assert resolve_spec_shape("w", div).params == (("p", 6.0),)
    assert resolve_spec_shape("w", div, params={"p": 2.5}).params == (("p", 2.5),)
    dragan = gpreg.get_spec("dragan")
    assert resolve_spec_shape("w", dragan).name == "two_sided"
    assert resolve_spec_shape("w", dragan, "one_sided").name == "one_sided"
    with pytest.raises(ValueError, match="w: p must be at least 1"):
        resolve_spec_shape("w", div, params={"p": 0.0})


def test_bind_routes_shape_parameters_and_real_fake_roles():
    from gpreg._specs import bind

    spec = gpreg.PenaltySpec("div_plugin", "real_fake", gpreg.SHAPES["power"], weight_name="k")
    calls = []
    fn = bind(spec, lambda spec, critic, **kw: calls.append(kw), "pkg")
    fn("D", "R", "F", k=3.0, p=4.0, reduction="sum")
    assert calls == [{"real": "R", "fake": "F", "weight": 3.0, "reduction": "sum",
                      "shape_params": {"p": 4.0}}]
    with pytest.raises(TypeError, match="takes critic, real, fake"):
        fn("D", "R")


def test_spec_table_matches_design():
    s = {n: gpreg.get_spec(n) for n in gpreg.BUILTIN_NAMES}
    assert [s[n].points for n in ("wgan_gp", "wgan_lp", "zero_gp", "r1", "r2", "dragan",
                                  "max_gp", "wgan_div")] == ["interpolates"] * 3 + [
        "real", "fake", "perturbed_real", "interpolates", "interpolates"]
    assert s["wgan_div"].point_options == ("interpolates", "real_fake")
    assert s["r1"].weight_name == "gamma" and s["r1"].weight_factor == 0.5
    assert s["max_gp"].default_reduction == "max"
    assert {n: s[n].arxiv for n in s} == {
        "wgan_gp": "1704.00028", "wgan_lp": "1709.08894", "zero_gp": "1902.03984",
        "r1": "1801.04406", "r2": "1801.04406", "dragan": "1705.07215", "max_gp": "1902.05687",
        "wgan_div": "1712.01026",
    }


def test_unknown_name_lists_known():
    with pytest.raises(gpreg.UnknownPenaltyError, match="known penalties: wgan_gp, wgan_lp"):
        gpreg.get_spec("wgangp")


def test_spec_validation():
    with pytest.raises(ValueError, match="points must be one of"):
        gpreg.PenaltySpec("x", "middle", "squared")
    with pytest.raises(ValueError, match="unknown shape"):
        gpreg.PenaltySpec("x", "real", "cubic")


def test_register_at_runtime():
    spec = gpreg.PenaltySpec("runtime_r1_test", "real", "squared", weight_name="gamma")
    gpreg.register_penalty(spec)
    assert gpreg.get_spec("runtime_r1_test") is spec
    with pytest.raises(ValueError, match="built-in"):
        gpreg.register_penalty(gpreg.PenaltySpec("r1", "real", "squared"))


PLUGIN = '''
import gpreg

SPEC = gpreg.PenaltySpec(
    "huber_gp", "interpolates", "one_sided", default_weight=3.0,
    title="test plugin", paper="none", arxiv="0000.00000",
)
'''


def test_entry_point_plugin_from_an_installed_distribution(tmp_path):
    """A package installed the usual way (a dist-info with entry_points.txt on sys.path)."""
    (tmp_path / "gpreg_plugin_demo").mkdir()
    (tmp_path / "gpreg_plugin_demo" / "__init__.py").write_text(PLUGIN)
    dist = tmp_path / "gpreg_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gpreg-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gpreg.penalties]\nhuber_gp = gpreg_plugin_demo:SPEC\n")
    code = textwrap.dedent("""
        import json, gpreg
        names = gpreg.penalty_names()
        spec = gpreg.get_spec("huber_gp")
        out = {"names": names, "shape": spec.shape, "weight": spec.default_weight}
        try:
            import torch, gpreg_torch
            fn = gpreg_torch.get_penalty("huber_gp")
            crit = lambda x: 3 * x.sum(dim=1)   # norm 3*sqrt(2) at every point
            val = fn(crit, torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, 2,
                     dtype=torch.float64), target=1.0)
            out["value"] = val.item()
        except ImportError:
            pass
        print(json.dumps(out))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    out = json.loads(res.stdout)
    builtins = len(gpreg.BUILTIN_NAMES)
    assert out["names"][:builtins] == list(gpreg.BUILTIN_NAMES) and "huber_gp" in out["names"]
    assert out["shape"] == "one_sided" and out["weight"] == 3.0
    if "value" in out:
        assert out["value"] == pytest.approx(3.0 * (3 * np.sqrt(2) - 1) ** 2)


def test_broken_plugin_warns_and_builtins_survive(tmp_path):
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gpreg.penalties]\nbroken_gp = no_such_module:X\n")
    code = ("import warnings, gpreg\nwith warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n    n = gpreg.penalty_names()\n"
            "print(len(n), any('broken_gp' in str(x.message) for x in w))\n"
            "try:\n    gpreg.get_spec('broken_gp')\nexcept KeyError as e:\n    print(str(e))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    lines = res.stdout.splitlines()
    assert lines[0] == f"{len(gpreg.BUILTIN_NAMES)} True"
    assert "failed to load" in lines[1] and "ModuleNotFoundError" in lines[1]


def test_validation_messages():
    with pytest.raises(ValueError, match=r"real \(2, 3\) and fake \(2, 4\)"):
        v.check_same_shapes("f", [(2, 3)], [(2, 4)])
    with pytest.raises(TypeError, match="must be a Python number"):
        v.check_scalar("f", "weight", "10")
    with pytest.raises(ValueError, match="different batch sizes"):
        v.check_parts("f", "real", [(2, 3), (3, 1)])
    assert v.check_scalar("f", "weight", np.float32(2.5)) == 2.5
    with pytest.raises(ValueError, match=r"f: p must be at least 1; got 0\.9\. The derivative"):
        v.check_power("f", 0.9)
    assert v.check_power("f", 1) == 1.0
    with pytest.raises(ValueError, match="ddof must be 0 .* or 1"):
        v.check_ddof("f", 2, 10)
    with pytest.raises(ValueError, match="ddof must be"):
        v.check_ddof("f", True, 10)
    with pytest.raises(ValueError, match="needs more than 1 element"):
        v.check_ddof("f", 1, 1)
    assert v.check_ddof("f", 1, None) == 1
    with pytest.raises(ValueError, match="unknown perturbation 'normal'; expected one of "
                                         "'uniform', 'gaussian'"):
        v.check_choice("f", "perturbation", "normal", ("uniform", "gaussian"))
    assert "alpha is not used with perturbation='gaussian'" in str(
        v.unused_alpha("f", "perturbation='gaussian'"))
    assert "alpha is not used with points='real_fake'" in str(
        v.unused_alpha("f", "points='real_fake'"))


def test_tolerance_table():
    assert tolerance("torch.float32") == tolerance("float32")
    assert max_rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    with pytest.raises(AssertionError):
        assert_close([1.0], [1.0 + 1e-6], "float64")


def test_fixture_file_is_complete():
    doc = json.loads((__import__("importlib.resources").resources.files("gpreg.fixtures")
                      / "fixtures.json").read_text())
    assert "hyper-dual" in doc["method"]
    fx = gpreg.fixtures.load()
    names = {f.name for f in fx}
    assert {"linear", "quadratic", "mlp_tanh", "mlp_softplus", "mlp_leaky_relu", "mlp_elu",
            "mlp_layernorm", "conv", "image_mlp", "two_input", "patch_map", "zero_grad",
            "batch1"} <= names
    for f in fx:
        assert {c.penalty for c in f.cases} == set(gpreg.BUILTIN_NAMES)
        for c in f.cases:
            assert set(c.grads) == set(f.params)
    zero = next(f for f in fx if f.name == "zero_grad")
    assert all((c.norms == 0).any() and (c.norms > 0).any() for c in zero.cases)
    assert next(f for f in fx if f.name == "batch1").batch == 1
