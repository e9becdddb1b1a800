"""Tests of the independent fixture generator ``gpreg/fixtures/generate.py``.

The generator is loaded by file path so that these tests do not depend on the ``gpreg``
package (the generator is the reference the package is tested against).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

GENERATOR = Path(__file__).resolve().parents[2] / "gpreg" / "fixtures" / "generate.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """The generator module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("gpreg_fixture_generator", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stored_fixtures_match_the_generator(gen: ModuleType) -> None:
    assert gen.check() == []


def test_check_reports_a_changed_number(
    gen: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(gen.DEFAULT_PATH, encoding="utf-8") as handle:
        original = json.load(handle)
    monkeypatch.setattr(gen, "build", lambda: original)  # no need to regenerate here
    document = json.loads(json.dumps(original))
    document["fixtures"][0]["cases"][0]["value"] *= 1.0 + 1e-9
    changed = tmp_path / "fixtures.json"
    changed.write_text(json.dumps(document), encoding="utf-8")
    problems = gen.check(changed)
    assert len(problems) == 1
    assert "fixtures[0].cases[0].value" in problems[0]


def test_stored_document_layout(gen: ModuleType) -> None:
    with open(gen.DEFAULT_PATH, encoding="utf-8") as handle:
        document = json.load(handle)
    assert document["format"] == 1
    assert document["generator"] == "gpreg/fixtures/generate.py"
    ids = [case_id for case_id, *_ in gen.CASES]
    for fixture in document["fixtures"]:
        assert [case["id"] for case in fixture["cases"]] == ids
        batch = fixture["input_shapes"][0][0]
        for case in fixture["cases"]:
            both = case["kwargs"].get("points") == "real_fake"  # real and fake: 2B norms
            assert case["norms"]["shape"] == [2 * batch if both else batch]
            assert case["per_sample"]["shape"] == [batch]
            assert list(case["grads"]) == list(fixture["params"])
            per_sample = np.array(case["per_sample"]["data"])
            reduce = np.max if case["reduction"] == "max" else np.mean
            assert case["value"] == pytest.approx(reduce(per_sample), rel=1e-14)
    zero_grad = next(f for f in document["fixtures"] if f["name"] == "zero_grad")
    for case in zero_grad["cases"]:
        norms = np.array(case["norms"]["data"])
        assert np.any(norms == 0.0) and np.any(norms > 0.0)


def _tanh_critic() -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    layers = [
        {"type": "linear", "params": {"weight": "0.weight"}},
        {"type": "tanh"},
        {"type": "linear", "params": {"weight": "2.weight"}},
    ]
    weight = np.array([[0.7, -0.4], [0.3, 0.9], [-1.1, 0.2]])
    v = np.array([[0.8, -0.5, 1.3]])
    x = np.array([[0.6, -0.3], [-1.2, 0.4]])
    return layers, weight, v, x


def test_hyper_dual_matches_closed_form(gen: ModuleType) -> None:
    """D(x) = v . tanh(W x): input gradient and the parameter gradient of |g|^2."""
    layers, weight, v, x = _tanh_critic()
    g, dg = gen.input_gradients(layers, {"0.weight": weight, "2.weight": v}, [x])
    norms, dnorms = gen.norms_and_derivatives(g, dg)
    for i in range(x.shape[0]):
        t = np.tanh(weight @ x[i])
        s = 1.0 - t**2
        u = v[0] * s
        expected_g = weight.T @ u
        wg = weight @ expected_g
        # G = |g|^2:  dG/dv_k = 2 s_k (W g)_k,
        #             dG/dW_kl = 2 v_k s_k (g_l - 2 t_k x_l (W g)_k).
        d_v = 2.0 * s * wg
        d_weight = 2.0 * u[:, None] * (expected_g[None, :] - 2.0 * np.outer(t * wg, x[i]))
        expected = np.concatenate([d_weight.ravel(), d_v])
        np.testing.assert_allclose(g[i], expected_g, rtol=1e-13, atol=0)
        np.testing.assert_allclose(norms[i], np.linalg.norm(expected_g), rtol=1e-13)
        np.testing.assert_allclose(2.0 * g[i] @ dg[i], expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(2.0 * norms[i] * dnorms[i], expected, rtol=1e-12, atol=1e-15)


def _naive_conv(x: np.ndarray, weight: np.ndarray, stride: int, padding: int) -> np.ndarray:
    xp = np.pad(x, [(0, 0), (padding, padding), (padding, padding)])
    kh, kw = weight.shape[2:]
    out_h = (xp.shape[1] - kh) // stride + 1
    out_w = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((weight.shape[0], out_h, out_w))
    for y in range(out_h):
        for z in range(out_w):
            window = xp[:, stride * y : stride * y + kh, stride * z : stride * z + kw]
            out[:, y, z] = np.einsum("oipq,ipq->o", weight, window)
    return out


def test_conv2d_is_the_bilinear_cross_correlation(gen: ModuleType) -> None:
    """Value and all derivative slots of conv2d against a direct loop (conv is bilinear)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4))
    weight = rng.standard_normal((3, 2, 3, 2))
    bias = rng.standard_normal(3)
    stride, padding = 2, 1
    n_inputs, n_params = x.size, weight.size + bias.size
    params = gen.seed_params({"w": weight, "b": bias}, n_inputs)
    (xd,) = gen.seed_inputs([x], n_params)
    out = gen.conv2d(xd, params["w"], params["b"], stride, padding)

    expected = _naive_conv(x, weight, stride, padding) + bias[:, None, None]
    np.testing.assert_allclose(out.a, expected, rtol=1e-13, atol=1e-13)
    unit_x = np.eye(n_inputs).reshape((n_inputs, *x.shape))
    unit_w = np.eye(weight.size).reshape((weight.size, *weight.shape))
    for j in range(n_inputs):
        np.testing.assert_allclose(out.b[..., j], _naive_conv(unit_x[j], weight, stride, padding))
    for m in range(weight.size):
        np.testing.assert_allclose(out.c[..., m], _naive_conv(x, unit_w[m], stride, padding))
    for o in range(bias.size):
        expected_bias = np.zeros(out.shape)
        expected_bias[o] = 1.0
        np.testing.assert_array_equal(out.c[..., weight.size + o], expected_bias)
    for j in range(n_inputs):
        for m in range(weight.size):
            np.testing.assert_allclose(
                out.d[..., j, m], _naive_conv(unit_x[j], unit_w[m], stride, padding)
            )
    np.testing.assert_array_equal(out.d[..., weight.size :], 0.0)


def test_second_slot_against_finite_differences(gen: ModuleType) -> None:
    """Layer norm and ELU: d(norm)/d(theta) from the d slot vs. central differences of b."""
    rng = np.random.default_rng(1)
    layers = [
        {"type": "linear", "params": {"weight": "0.weight", "bias": "0.bias"}},
        {"type": "layer_norm", "eps": 1e-5, "params": {"weight": "1.weight", "bias": "1.bias"}},
        {"type": "elu"},
        {"type": "linear", "params": {"weight": "3.weight", "bias": "3.bias"}},
    ]
    params = {
        "0.weight": rng.standard_normal((5, 3)),
        "0.bias": rng.standard_normal(5),
        "1.weight": 1.0 + 0.1 * rng.standard_normal(5),
        "1.bias": 0.1 * rng.standard_normal(5),
        "3.weight": rng.standard_normal((1, 5)),
        "3.bias": rng.standard_normal(1),
    }
    x = rng.standard_normal((2, 3))
    g, dg = gen.input_gradients(layers, params, [x])
    norms, dnorms = gen.norms_and_derivatives(g, dg)
    step = 1e-6
    flat = np.concatenate([p.ravel() for p in params.values()])
    for k in range(flat.size):
        shifted = []
        for sign in (1.0, -1.0):
            moved = flat.copy()
            moved[k] += sign * step
            shifted_g, _ = gen.input_gradients(layers, gen._split(moved, params), [x])
            shifted.append(np.linalg.norm(shifted_g, axis=1))
        fd = (shifted[0] - shifted[1]) / (2 * step)
        np.testing.assert_allclose(dnorms[:, k], fd, rtol=1e-6, atol=1e-8)
    assert np.all(norms > 0)


def test_power_shape_closed_form(gen: ModuleType) -> None:
    """n**p and p n**(p - 1), with 0 (not NaN or inf) at n = 0 for p in [1, 2)."""
    n = np.array([0.0, 0.5, 1.0, 2.0])
    for p in (1.0, 1.5, 6.0):
        with np.errstate(all="raise"):
            value, slope = gen.shape_of_norm("power", {"p": p}, n)
        np.testing.assert_allclose(value, n**p, rtol=1e-15)
        np.testing.assert_allclose(slope[1:], p * n[1:] ** (p - 1), rtol=1e-15)
        assert slope[0] == 0.0


def _closed_form_penalty(case_id: str, kwargs: dict[str, Any], norms: np.ndarray) -> np.ndarray:
    """The per-sample penalty of the new cases, written out again from their formulas."""
    if case_id.startswith("wgan_div"):
        k, p = kwargs["k"], kwargs["p"]
        if kwargs.get("points") == "real_fake":
            half = norms.size // 2
            return k * (norms[:half] ** p + norms[half:] ** p) / 2
        return k * norms**p
    weight = kwargs["weight"]
    if kwargs.get("shape") == "squared":
        return weight * norms**2
    if kwargs.get("shape") == "one_sided":
        return weight * np.maximum(norms - kwargs["target"], 0.0) ** 2
    return weight * (norms - kwargs["target"]) ** 2


def _closed_form_points(fixture: dict[str, Any], kwargs: dict[str, Any]) -> list[np.ndarray]:
    arr = {k: [np.array(a["data"]).reshape(a["shape"]) for a in fixture[k]]
           for k in ("real", "fake", "noise")}
    alpha = np.array(fixture["alpha"]["data"])
    if kwargs.get("points") == "real_fake":
        return [np.concatenate([r, f]) for r, f in zip(arr["real"], arr["fake"])]
    if "k" in kwargs:  # wgan_div at interpolates
        return [alpha.reshape((-1,) + (1,) * (r.ndim - 1)) * r
                + (1 - alpha.reshape((-1,) + (1,) * (r.ndim - 1))) * f
                for r, f in zip(arr["real"], arr["fake"])]
    if kwargs.get("perturbation") == "gaussian":  # delta ~ N(0, c I): standard deviation sqrt(c)
        return [r + np.sqrt(kwargs["c"]) * u for r, u in zip(arr["real"], arr["noise"])]
    ddof = kwargs.get("ddof", 0)
    out = []
    for r, u in zip(arr["real"], arr["noise"]):
        flat = r.ravel()
        sigma = np.sqrt(np.sum((flat - flat.mean()) ** 2) / (flat.size - ddof))
        out.append(r + alpha.reshape((-1,) + (1,) * (r.ndim - 1)) * kwargs["c"] * sigma * u)
    return out


NEW_CASES = ("wgan_div", "wgan_div_real_fake", "wgan_div_p15", "dragan_ddof1",
             "dragan_gaussian", "dragan_lp", "dragan_zero")


@pytest.mark.parametrize("case_id", NEW_CASES)
def test_new_cases_against_closed_forms_and_finite_differences(
    gen: ModuleType, case_id: str
) -> None:
    """WGAN-div and the DRAGAN variants on the smooth tanh MLP: the stored points, per-sample
    values and value from their formulas, and the stored parameter gradient against central
    differences of that value (the norms recomputed by the generator's first-order slot)."""
    with open(gen.DEFAULT_PATH, encoding="utf-8") as handle:
        document = json.load(handle)
    fixture = next(f for f in document["fixtures"] if f["name"] == "mlp_tanh")
    case = next(c for c in fixture["cases"] if c["id"] == case_id)
    kwargs = case["kwargs"]
    points = _closed_form_points(fixture, kwargs)
    for stored, expected in zip(case["points"], points):
        np.testing.assert_allclose(np.array(stored["data"]).reshape(stored["shape"]), expected,
                                   rtol=1e-14, atol=1e-14)
    params = {k: np.array(v["data"]).reshape(v["shape"]) for k, v in fixture["params"].items()}

    def value(flat: np.ndarray) -> tuple[float, np.ndarray]:
        g, _ = gen.input_gradients(fixture["layers"], gen._split(flat, params), points)
        per_sample = _closed_form_penalty(case_id, kwargs, np.linalg.norm(g, axis=1))
        return float(np.mean(per_sample)), per_sample

    flat = np.concatenate([p.ravel() for p in params.values()])
    v0, per_sample = value(flat)
    np.testing.assert_allclose(per_sample, case["per_sample"]["data"], rtol=1e-12)
    assert case["value"] == pytest.approx(v0, rel=1e-12)
    stored = np.concatenate([np.array(case["grads"][k]["data"]) for k in params])
    step = 1e-6
    fd = np.empty_like(flat)
    for k in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[k] += step
        down[k] -= step
        fd[k] = (value(up)[0] - value(down)[0]) / (2 * step)
    np.testing.assert_allclose(stored, fd, rtol=1e-6, atol=1e-8 * np.max(np.abs(fd)))
