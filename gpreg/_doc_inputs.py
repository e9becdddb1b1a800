"""The adapters' part of the shared docstrings: each one's examples, its randomness
argument and what ``cost`` and ``check_critic`` say about it (text only, no framework).

``gpreg._docs`` fills its templates with these; ``python tools/docstrings.py --write``
writes the results into the adapters' source files (pinned by tests/core/test_docstrings.py).
"""

from __future__ import annotations

TORCH_EXAMPLES: dict[str, str] = {
    "wgan_gp": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: 2 * x.sum(dim=1)          # input gradient (2, 2, 2, 2), norm 4
        >>> real, fake = torch.ones(3, 4), torch.zeros(3, 4)
        >>> gp.wgan_gp(critic, real, fake, alpha=torch.full((3,), 0.5))
        tensor(90.)""",
    "wgan_lp": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: 0.5 * x.sum(dim=1)        # norm 1 < target 2: no penalty
        >>> gp.wgan_lp(critic, torch.ones(2, 4), torch.zeros(2, 4), target=2.0)
        tensor(0.)""",
    "zero_gp": """        >>> import torch, gpreg_torch as gp
        >>> gp.zero_gp(lambda x: 2 * x.sum(dim=1), torch.ones(2, 4), torch.zeros(2, 4))
        tensor(160.)""",
    "max_gp": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: (x ** 2).sum(dim=1)         # gradient 2x: largest at x = 1
        >>> a = torch.tensor([1.0, 0.5])
        >>> float(gp.max_gp(critic, torch.ones(2, 1), torch.zeros(2, 1), alpha=a))
        40.0""",
    "r1": """        >>> import torch, gpreg_torch as gp
        >>> gp.r1(lambda x: 2 * x.sum(dim=1), torch.ones(2, 4))    # 10/2 * 16
        tensor(80.)""",
    "r2": """        >>> import torch, gpreg_torch as gp
        >>> gp.r2(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4), gamma=1.0)
        tensor(8.)""",
    "dragan": """        >>> import torch, gpreg_torch as gp
        >>> gp.dragan(lambda x: 2 * x.sum(dim=1), torch.randn(3, 4), alpha=torch.zeros(3))
        tensor(90.)
        >>> critic = lambda x: 2 * x.sum(dim=1)          # the norm is 4 everywhere
        >>> gp.dragan(critic, torch.randn(3, 4), shape="squared", perturbation="gaussian")
        tensor(160.)""",
    "wgan_div": """        >>> import torch, gpreg_torch as gp
        >>> critic = lambda x: x.sum(dim=1) / 2          # input gradient (1/2, ...), norm 1
        >>> real, fake = torch.ones(3, 4), torch.zeros(3, 4)
        >>> gp.wgan_div(critic, real, fake)                # k * 1 ** 6
        tensor(2.)
        >>> gp.wgan_div(lambda x: x.sum(dim=1), real, fake, points="real_fake", p=2.0)
        tensor(8.)""",
    "gradient_penalty": """        >>> import torch, gpreg_torch as gp
        >>> gp.gradient_penalty(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4), shape="squared")
        tensor(16.)
    """,
    "grad_norm": """        >>> import torch, gpreg_torch as gp
        >>> gp.grad_norm(lambda x: 2 * x.sum(dim=1), torch.zeros(2, 4))
        tensor([4., 4.])
    """,
}

TORCH_RNG: dict[str, str] = {
    "alpha": "        generator: ``torch.Generator`` for the draw of ``alpha``.\n",
    "draws": "        generator: ``torch.Generator`` for the draws.\n",
    "name": "``generator``",
    "name_plain": "generator",
    "scaler": "        scaler: a ``torch.amp.GradScaler`` for float16 mixed precision: the inner\n"
    "            gradient is taken of the scaled output (its current scale, read without a\n"
    "            device sync and capped at 2**15, below float16's maximum) and unscaled out\n"
    "            of place, and the norm is computed in float32. Then\n"
    "            ``scaler.scale(loss).backward()`` as usual. Also an object that holds the\n"
    "            scaler as ``.scaler``: an ``accelerate.Accelerator`` (then\n"
    "            ``accelerator.backward(loss)``) or a Lightning precision plugin\n"
    "            (``self.trainer.precision_plugin``, then ``self.manual_backward(loss)``);\n"
    "            under their bf16 or 32-bit precision there is no scaler, and none is used.\n",
}

TORCH_COST: dict[str, str] = dict(
    framework="PyTorch",
    how="""Every step runs eagerly, as written (``torch.compile`` has no double backward);
    on CUDA each timed sample is bracketed by ``torch.cuda.synchronize``. FLOPs are
    ``torch.utils.flop_counter``'s matmul and convolution count; memory is the peak tensor
    memory a step allocates (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the memory
    events of ``torch.profiler``, which follow the CPU allocator).""",
    optimizer="a ``torch.optim.Optimizer`` over the critic's parameters",
    reuse="""*forward reuse*: R1 and R2 also get a ``from_scores`` step, the penalty taken from
      the scores of the adversarial loss's own forward pass (:func:`from_scores`), and the
      share of the penalized step it saves.""",
    example="""        >>> import torch, gpreg_torch as gp
        >>> critic = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LeakyReLU(0.2),
        ...                              torch.nn.Linear(16, 1))
        >>> report = gp.cost(critic, torch.randn(32, 8), rounds=3, min_sample_s=0, memory=False)
        >>> print(report.summary())                                # doctest: +SKIP
        >>> round(report["wgan_gp"].flop_ratio, 2)                 # matmul FLOPs vs plain
        2.34""",
)

TORCH_CHECK_EXAMPLE = """\
        >>> import torch, gpreg_torch as gp
        >>> critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8),
        ...                              torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> report = gp.check_critic(critic, torch.randn(6, 3), torch.randn(6, 3))
        >>> report.ok
        True
        >>> critic[0].weight.dtype      # the check ran on a float64 copy
        torch.float32
"""

_KERAS_SEED_RULE = (
    "            An int is a fixed draw, the same numbers on every call: for tests (inside\n"
    "            ``tf.function`` or ``jax.jit`` it warns once, ``gpreg.FixedSeedWarning``). In\n"
    "            training pass a ``SeedGenerator`` made once outside the step (TensorFlow,\n"
    "            torch) or a fresh JAX key per step (``jax.random.fold_in(key, step)``); under\n"
    "            ``jax.jit`` a ``SeedGenerator`` is refused unless Keras threads its state.\n"
)

KERAS_EXAMPLES: dict[str, str] = {
    "wgan_gp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)   # input gradient 2s, norm 4
        >>> real, fake = keras.ops.ones((3, 4)), keras.ops.zeros((3, 4))
        >>> float(gp.wgan_gp(critic, real, fake, alpha=keras.ops.full((3,), 0.5)))
        90.0""",
    "wgan_lp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 0.5 * keras.ops.sum(x, axis=1)  # norm 1 < target 2: no penalty
        >>> float(gp.wgan_lp(critic, keras.ops.ones((2, 4)), keras.ops.zeros((2, 4)), target=2.0,
        ...                  seed=0))
        0.0""",
    "zero_gp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.zero_gp(critic, keras.ops.ones((2, 4)), keras.ops.zeros((2, 4)), seed=0))
        160.0""",
    "max_gp": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: keras.ops.sum(x ** 2, axis=1)   # gradient 2x: largest at x = 1
        >>> a = keras.ops.convert_to_tensor([1.0, 0.5])
        >>> float(gp.max_gp(critic, keras.ops.ones((2, 1)), keras.ops.zeros((2, 1)), alpha=a))
        40.0""",
    "r1": """        >>> import keras, gpreg_keras as gp
        >>> float(gp.r1(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.ones((2, 4))))
        80.0""",
    "r2": """        >>> import keras, gpreg_keras as gp
        >>> float(gp.r2(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.zeros((2, 4)),
        ...             gamma=1.0))
        8.0""",
    "dragan": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.dragan(critic, keras.random.normal((3, 4), seed=1), alpha=keras.ops.zeros(3),
        ...                 seed=0))
        90.0
        >>> float(gp.dragan(critic, keras.random.normal((3, 4), seed=1), shape="squared",
        ...                 perturbation="gaussian", seed=0))   # the norm is 4 everywhere
        160.0""",
    "wgan_div": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: keras.ops.sum(x, axis=1) / 2   # input gradient 1/2s, norm 1
        >>> real, fake = keras.ops.ones((3, 4)), keras.ops.zeros((3, 4))
        >>> float(gp.wgan_div(critic, real, fake, seed=0))   # k * 1 ** 6
        2.0
        >>> critic = lambda x: keras.ops.sum(x, axis=1)
        >>> float(gp.wgan_div(critic, real, fake, points="real_fake", p=2.0))
        8.0""",
    "gradient_penalty": """        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.gradient_penalty(critic, keras.ops.zeros((2, 4)), shape="squared"))
        16.0
    """,
    "grad_norm": """        >>> import keras, gpreg_keras as gp
        >>> norms = gp.grad_norm(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.zeros((2, 4)))
        >>> [float(n) for n in norms]
        [4.0, 4.0]
    """,
}

KERAS_RNG: dict[str, str] = {
    "alpha": "        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draw of\n"
    "            ``alpha``; needed under ``jax.jit`` unless ``alpha`` is given.\n"
    + _KERAS_SEED_RULE,
    "draws": "        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draws;\n"
    "            needed under ``jax.jit`` unless ``alpha`` and ``noise`` are given.\n"
    + _KERAS_SEED_RULE,
    "name": "``seed``",
    "name_plain": "seed",
    "scaler": "        scaler: a ``keras.optimizers.LossScaleOptimizer`` for ``mixed_float16``:\n"
    "            the inner gradient is taken of the output times the current loss scale\n"
    "            and divided by it, and the norm is computed in float32. Under ``jax.jit``\n"
    "            call it inside ``keras.StatelessScope(state_mapping=list(zip(\n"
    "            optimizer.variables, optimizer_values)))`` so that the live scale is read\n"
    "            (outside a scope it would be frozen at trace time: a ``ValueError``).\n",
}

KERAS_COST: dict[str, str] = dict(
    framework="Keras 3",
    how="""How the steps run is how Keras trains on each backend. TensorFlow: each step is a
    ``tf.function(jit_compile=True)``; FLOPs are counted in its HLO
    (``experimental_get_compiler_ir``); memory is the live-buffer peak of its compiled
    program, an estimate of XLA's buffer assignment, which TensorFlow does not expose. JAX:
    each step is one ``jax.jit`` of a stateless step (``stateless_call``,
    ``optimizer.stateless_apply``); FLOPs from its HLO, memory from XLA's buffer assignment
    (``memory_analysis``). Keras's torch backend: the steps run eagerly and are measured as
    ``gpreg_torch.cost`` measures them. The first call of each step (tracing and
    compilation) is reported apart, not timed.""",
    optimizer="a ``keras.optimizers.Optimizer`` (built on the critic's trainable variables "
              "if it is not)",
    reuse="""*forward reuse* (R1 and R2 from the scores of the adversarial loss's own forward
      pass) is not measured: it needs PyTorch's after-the-fact gradients
      (``gpreg_torch.from_scores``), which TensorFlow and JAX do not have; the report says
      so.""",
    example="""        >>> import keras, numpy as np, gpreg_keras as gp
        >>> critic = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
        ...                            keras.layers.LeakyReLU(0.2), keras.layers.Dense(1)])
        >>> real = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> report = gp.cost(critic, real, rounds=3, lazy=(), min_sample_s=0, memory=False)
        >>> print(report.summary())                                # doctest: +SKIP""",
)

KERAS_CHECK_EXAMPLE = """\
        >>> import keras, numpy as np, gpreg_keras as gp
        >>> critic = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
        ...                            keras.layers.LayerNormalization(),
        ...                            keras.layers.Activation("tanh"), keras.layers.Dense(1)])
        >>> rng = np.random.default_rng(0)
        >>> report = gp.check_critic(critic, rng.normal(size=(6, 3)), rng.normal(size=(6, 3)))
        >>> report.ok
        True
"""
