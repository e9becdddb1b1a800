"""Data parallelism beyond the mean penalties: every built-in penalty over 2 replicas
(MirroredStrategy on 2 logical CPUs; JAX jit over a batch sharded on 2 host devices) equals
one device on the global batch, max_gp's maximum and DRAGAN's σ included. Expected numbers:
the float64 torch twin (tests/support/gp_reference.py) on the whole batch."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import gpreg_keras as gp
from gpreg import BUILTIN_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gp_reference import as64, penalty

BACKEND = keras.backend.backend()
B = 8
RNG = np.random.default_rng(7)
# the second half of the batch (the second replica's shard) has another scale: per-replica
# statistics then differ from the global ones
SCALE = np.where(np.arange(B) < B // 2, 1.0, 3.0)[:, None]
REAL = RNG.normal(size=(B, 5)) * SCALE
FAKE = RNG.normal(size=(B, 5))
ALPHA = RNG.uniform(size=B)
NOISE = RNG.uniform(size=(B, 5))
MEAN = ("wgan_gp", "wgan_lp", "zero_gp", "r1", "r2", "dragan", "wgan_div")
#: variants checked besides the built-ins: name -> (penalty, options)
VARIANTS = {"dragan_ddof1": ("dragan", {"ddof": 1})}
NAMES = (*BUILTIN_NAMES, *VARIANTS)


def resolve(name):
    """``(penalty, options)`` of a built-in or a variant."""
    return VARIANTS.get(name, (name, {}))


def model_fn(dtype):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,), dtype=dtype),
                             keras.layers.Dense(8, activation="tanh", dtype=dtype),
                             keras.layers.Dense(1, dtype=dtype)])


def reference(model, name):
    leaves = [as64(keras.ops.convert_to_numpy(v)).requires_grad_(True)
              for v in model.trainable_variables]

    def twin(x):
        return torch.tanh(x @ leaves[0] + leaves[1]) @ leaves[2] + leaves[3]

    base, options = resolve(name)
    weight = 2.0 if base == "wgan_div" else 10.0  # the penalties' defaults
    value, grads, _ = penalty(base, twin, leaves, [as64(REAL)], [as64(FAKE)],
                              alpha=as64(ALPHA), noise=[as64(NOISE)], weight=weight,
                              ddof=options.get("ddof", 0))
    return value, grads


def arguments(name, real, fake, alpha, noise):
    if name == "dragan":
        return (real,), {"alpha": alpha, "noise": noise}
    if name in ("r1", "r2"):
        return ((fake,) if name == "r2" else (real,)), {}
    return (real, fake), {"alpha": alpha}


def assert_matches(value, grads, ref_value, ref_grads, dtype):
    rtol = 1e-9 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(value, ref_value, rtol=rtol)
    top = max(float(np.max(np.abs(g))) for g in ref_grads)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float64), r, rtol=rtol, atol=rtol * top)


if BACKEND == "tensorflow":
    import json
    import os
    import subprocess
    import textwrap

    HERE = Path(__file__).resolve().parent

    @pytest.fixture(scope="module")
    def mirrored(tmp_path_factory):
        """Every penalty over 2 replicas, summed as Keras's optimizers sum (values and
        gradients), and the start weights. In a process of its own: TensorFlow keys its
        collective ops per strategy, and a second strategy in one process whose all-reduces
        have another dtype aborts ("Collective instance 100 expected type ...")."""
        out = tmp_path_factory.mktemp("mirrored") / "result.json"
        script = textwrap.dedent(f"""
            import json, sys
            sys.path[:0] = [{str(HERE)!r}, {str(HERE.parents[1])!r}]
            import conftest  # two logical CPUs, before anything else of TensorFlow
            import tensorflow as tf
            import gpreg_keras as gp
            import test_data_parallel as t

            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            with strategy.scope():
                model = t.model_fn("float64")
            result = {{"weights": [v.numpy().tolist() for v in model.trainable_variables]}}
            for name in t.NAMES:
                base, options = t.resolve(name)
                kw = {{"global_batch_size": t.B, **options}} if base in t.MEAN else options
                fn = gp.get_penalty(base)

                def replica(real, fake, alpha, noise):
                    args, extra = t.arguments(base, real, fake, alpha, noise)
                    with tf.GradientTape() as tape:
                        value = fn(model, *args, **extra, **kw)
                    grads = tape.gradient(value, model.trainable_variables)
                    return value, [tf.zeros_like(v) if g is None else g
                                   for g, v in zip(grads, model.trainable_variables)]

                data = tf.data.Dataset.from_tensor_slices(
                    (t.REAL, t.FAKE, t.ALPHA, t.NOISE)).batch(t.B)
                for batch in strategy.experimental_distribute_dataset(data):
                    value, grads = tf.function(
                        lambda *b: strategy.run(replica, args=b))(*batch)
                    result[name] = [float(strategy.reduce("SUM", value, axis=None)),
                                    [strategy.reduce("SUM", g, axis=None).numpy().tolist()
                                     for g in grads]]
            with open({str(out)!r}, "w") as f:
                json.dump(result, f)
        """)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=600,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())

    @pytest.mark.parametrize("name", NAMES)
    def test_mirrored_strategy_equals_one_device_for_every_penalty(mirrored, name):
        """Issue 14.7: under MirroredStrategy max_gp applied the sum of the per-replica maxima
        and DRAGAN used each replica's σ. Now each replica returns its share (summed over the
        replicas, as Keras's optimizers sum gradients: the one-device value and gradient);
        the mean penalties with global_batch_size as before."""
        model = model_fn("float64")
        model.set_weights([np.asarray(w) for w in mirrored["weights"]])
        ref_value, ref_grads = reference(model, name)
        value, grads = mirrored[name]
        assert_matches(value, [np.asarray(g) for g in grads], ref_value, ref_grads, "float64")


if BACKEND == "jax":
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    def mesh():
        devices = jax.devices()
        assert len(devices) >= 2, "XLA_FLAGS must force two host devices (see conftest.py)"
        return Mesh(np.array(devices[:2]), ("batch",))

    def jax_penalty(name):
        """The model, its trainable values and ``loss(values, real, fake, alpha, noise)``."""
        model = model_fn("float32")
        fn = gp.get_penalty(name)

        def loss(tv, real, fake, alpha, noise):
            args, extra = arguments(name, real, fake, alpha, noise)
            return fn(gp.stateless_critic(model, tv), *args, **extra)

        return model, [v.value for v in model.trainable_variables], loss

    @pytest.mark.parametrize("name", ["max_gp", "dragan", "wgan_gp"])
    def test_jit_over_a_sharded_batch_equals_one_device(name):
        """Under jax.jit a sharded batch is one global array: max and σ are global."""
        model, tv, loss = jax_penalty(name)
        shard = NamedSharding(mesh(), PartitionSpec("batch"))
        data = [jax.device_put(np.asarray(a, "float32"), shard)
                for a in (REAL, FAKE, ALPHA, NOISE)]
        assert len(data[0].sharding.device_set) == 2
        value, grads = jax.jit(jax.value_and_grad(loss))(tv, *data)
        ref_value, ref_grads = reference(model, name)
        assert_matches(float(value), [np.asarray(g) for g in grads], ref_value, ref_grads,
                       "float32")

    @pytest.mark.parametrize("name", ["max_gp", "dragan"])
    def test_shard_map_warns_that_the_statistic_is_per_shard(name):
        """Inside shard_map each device sees its shard only: gpreg says so."""
        _, tv, loss = jax_penalty(name)

        def per_shard(*a):
            return loss(*a)[None]

        spec = PartitionSpec("batch")
        step = jax.jit(jax.shard_map(per_shard, mesh=mesh(),
                                     in_specs=(PartitionSpec(), spec, spec, spec, spec),
                                     out_specs=spec))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(tv, *[np.asarray(a, "float32") for a in (REAL, FAKE, ALPHA, NOISE)])
        messages = [str(c.message) for c in caught if c.category is RuntimeWarning]
        assert any("inside shard_map / pmap" in m for m in messages), messages
