"""Every fixture × penalty case × dtype against the float64 reference: value, per-sample
values, per-sample norms and the gradient of the penalty with respect to every parameter."""

from __future__ import annotations

import pytest
import torch

from gpreg import fixtures
from gpreg._tolerances import assert_case
from gpreg_torch._fixture import run_case

CASES = [(f, c) for f in fixtures.load() for c in f.cases]
DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(("fixture", "case"), CASES, ids=[f"{f.name}-{c.id}" for f, c in CASES])
def test_matches_reference(fixture, case, dtype):
    got = run_case(fixture, case, dtype)
    name = str(dtype).split(".")[-1]
    where = f"{fixture.name}/{case.id}/{name}"
    assert_case(got, case, name, where)


def test_every_variant_is_covered():
    from gpreg import BUILTIN_NAMES

    covered = {c.penalty for _, c in CASES}
    assert covered == set(BUILTIN_NAMES)
    assert len(fixtures.load()) >= 12
