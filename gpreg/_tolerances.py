"""The one tolerance table every test and ``gpreg compare`` use.

Expected values are float64 references; a float64 computation must match them to round-off,
a float32 one to float32 round-off accumulated through two backward passes. ``atol`` is relative
to the largest magnitude in the expected array (so zeros in a gradient are compared sensibly).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"rtol": 1e-9, "atol": 1e-12},
    "float32": {"rtol": 2e-4, "atol": 2e-5},
    "bfloat16": {"rtol": 5e-2, "atol": 2e-2},
    "float16": {"rtol": 1e-2, "atol": 5e-3},
}


def tolerance(dtype: str) -> dict[str, float]:
    """``{"rtol", "atol"}`` for a dtype name such as ``"float32"`` or ``"torch.float32"``."""
    key = str(dtype).rsplit(".", 1)[-1]
    try:
        return TOLERANCES[key]
    except KeyError:
        known = ", ".join(TOLERANCES)
        raise KeyError(f"no tolerance for dtype {dtype!r}; known: {known}") from None


def assert_close(actual: Any, expected: Any, dtype: str, err_msg: str = "") -> None:
    """``numpy.testing.assert_allclose`` with the table's tolerance (atol × max|expected|)."""
    tol = tolerance(dtype)
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        actual, expected, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-300), err_msg=err_msg
    )


def assert_case(got: dict[str, Any], case: Any, dtype: str, where: str) -> None:
    """One run of a fixture case — ``got`` holds ``value``, ``per_sample``, ``norms`` and
    ``grads`` (by parameter name) — against the case's reference numbers, with the table's
    tolerance for ``dtype``; ``where`` starts each failure message."""
    assert_close(got["value"], case.value, dtype, err_msg=f"{where}: value")
    assert_close(got["per_sample"], case.per_sample, dtype, err_msg=f"{where}: per-sample")
    assert_close(got["norms"], case.norms, dtype, err_msg=f"{where}: norms")
    assert set(got["grads"]) == set(case.grads), where
    for name, expected in case.grads.items():
        assert_close(got["grads"][name], expected, dtype, err_msg=f"{where}: d/d{name}")


def max_rel_error(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zeros)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return float("inf")
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def within(actual: Any, expected: Any, dtype: str) -> bool:
    """True when :func:`assert_close` would pass."""
    try:
        assert_close(actual, expected, dtype)
    except AssertionError:
        return False
    return True
