"""The example WGAN-GP keras.Model trains under fit() on this backend, and the penalty is in
the critic's update."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keras_fit_wgan_gp.py"


def _load():
    spec = importlib.util.spec_from_file_location("keras_fit_wgan_gp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _critic_weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.critic.trainable_variables]


def test_fit_runs_and_the_penalty_changes_the_critic_update():
    example = _load()
    with_gp, hist = example.train(steps=4, batch=32, gp_weight=10.0, seed=0)
    without, hist0 = example.train(steps=4, batch=32, gp_weight=0.0, seed=0)
    for h in (hist, hist0):
        assert len(h["d_loss"]) == 1 and np.isfinite(h["d_loss"]).all()
        assert np.isfinite(h["g_loss"]).all()
    a, b = _critic_weights(with_gp), _critic_weights(without)
    assert all(x.shape == y.shape for x, y in zip(a, b))
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) > 1e-6
    # both runs start from the same weights (train() seeds Keras), so only the penalty differs
    starts = []
    for weight in (10.0, 0.0):
        keras.utils.set_random_seed(0)
        starts.append(_critic_weights(example.WGANGP(gp_weight=weight, seed=0)))
    assert all(np.array_equal(x, y) for x, y in zip(*starts))
