"""Compiled and eager paths agree: TF eager / tf.function / XLA to 1e-6; JAX jit vs eager."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from gpreg import fixtures
from gpreg_keras._fixture import build_critic, case_arguments, penalty_and_grads

BACKEND = keras.backend.backend()
PICK = [("mlp_layernorm", "wgan_gp"), ("conv", "r1"), ("two_input", "dragan"),
        ("patch_map", "wgan_lp"), ("zero_grad", "max_gp"), ("batch1", "r2"),
        ("mlp_layernorm", "wgan_div_real_fake"), ("zero_grad", "wgan_div_p15"),
        ("two_input", "dragan_gaussian"), ("image_mlp", "dragan_ddof1")]
MODES = {"tensorflow": ["function", "xla"], "jax": ["function"], "torch": []}[BACKEND]


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("fixture_name", "case_id"), PICK)
def _compiled_matches_eager(fixture_name, case_id, mode):
    import gpreg_keras as gp

    fx = next(f for f in fixtures.load() if f.name == fixture_name)
    case = fx.case(case_id)
    model, _ = build_critic(fx, "float32")
    args, kwargs = case_arguments(fx, case, "float32")
    fn = gp.get_penalty(case.penalty)
    v0, g0 = penalty_and_grads(model, fn, args, kwargs, "eager")
    v1, g1 = penalty_and_grads(model, fn, args, kwargs, mode)
    np.testing.assert_allclose(_np(v1), _np(v0), rtol=1e-6, atol=1e-6 * abs(float(_np(v0))))
    for a, b in zip(g1, g0):
        scale = max(float(np.max(np.abs(_np(b)))), 1e-30)
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-6, atol=1e-6 * scale)


if MODES:  # the torch backend runs gpreg_torch itself; its compiled path is issue #4's
    test_compiled_matches_eager = _compiled_matches_eager
