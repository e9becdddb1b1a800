"""``gpreg_keras.cost``: what each penalty costs on the user's Keras critic.

Each step is one compiled program where Keras training compiles it: on TensorFlow a
``tf.function(jit_compile=True)``, on JAX a ``jax.jit`` of a stateless step; on Keras's torch
backend the steps run eagerly and are measured with PyTorch's tools. The steps are timed by
:mod:`gpreg.tools.cost`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from gpreg import _call
from gpreg.tools import cost as tc
from gpreg.tools import hlo
from gpreg_keras import _core
from gpreg_keras._calling import arrange
from gpreg_keras._penalties import get_penalty
from gpreg_keras._stateless import stateless_critic

WHERE = "gpreg_keras.cost"

HLO_FLOPS = ("matmul and convolution FLOPs of the step's XLA program as autodiff emits it, "
             "before XLA's optimizations, counted by XLA's cost-analysis rules (gpreg.tools.hlo)")

REUSE_NOTE = ("forward reuse (R1/R2 from the scores of the loss's own forward pass) is "
              "PyTorch-only: TensorFlow and JAX cannot differentiate scores after the fact "
              "without the tape or function that produced them; gpreg_torch.cost measures it "
              "(gp.from_scores).")

Loss = Callable[[Any, tuple[Any, ...], tuple[Any, ...]], Any]  # (critic, real, fake) -> loss


def _pack(parts: tuple[Any, ...], like: Any) -> Any:
    """The parts in the form the user gave: one tensor, or a tuple/list of them."""
    return type(like)(parts) if isinstance(like, (tuple, list)) else parts[0]


class _Losses:
    """The adversarial loss, each penalty and each penalized loss, for a critic callable."""

    def __init__(self, call: _call.Call, real: Any, fake: Any, args: Any, kwargs: Any,
                 output: Any, seed: int) -> None:
        self.call, self.real, self.fake = call, real, fake
        self.options = {"args": args, "kwargs": kwargs, "output": output}
        self.seed = seed

    def scores(self, critic: Any, parts: tuple[Any, ...]) -> Any:
        raw = _core.critic_fn(WHERE, critic, self.call, len(parts))(*parts)
        if self.call.output is None and ops.is_tensor(raw):
            return raw
        return _call.pick_output(WHERE, raw, self.call.output, ops.is_tensor)

    def adversarial(self, critic: Any, real: tuple[Any, ...], fake: tuple[Any, ...]) -> Any:
        return ops.mean(self.scores(critic, fake)) - ops.mean(self.scores(critic, real))

    def penalty(self, name: str) -> Loss:
        fn = get_penalty(name)
        roles = tc.data_roles(name)
        opts = dict(self.options)
        if tc.draws(name):
            opts["seed"] = self.seed

        def loss(critic: Any, real: tuple[Any, ...], fake: tuple[Any, ...]) -> Any:
            data = {"real": _pack(real, self.real), "fake": _pack(fake, self.fake)}
            return fn(critic, *[data[r] for r in roles], **opts)
        return loss

    def penalized(self, name: str) -> Loss:
        pen = self.penalty(name)
        return lambda critic, real, fake: self.adversarial(critic, real, fake) + pen(
            critic, real, fake)


def _values(variables: Sequence[Any]) -> list[np.ndarray]:
    return [np.array(ops.convert_to_numpy(v.value)) for v in variables]


# ----------------------------------------------------------------------------- TensorFlow


class _TensorFlow:
    mode = "tf.function(jit_compile=True)"
    flop_method = HLO_FLOPS

    def __init__(self, model: Any, opt: Any, real: tuple[Any, ...],
                 fake: tuple[Any, ...]) -> None:
        import tensorflow as tf

        self.tf, self.model, self.opt = tf, model, opt
        self.real, self.fake = real, fake
        self.tvars = model.trainable_variables
        self.xla: dict[str, Any] = {}
        self.device = str(real[0].device).rsplit("device:", 1)[-1] or "CPU:0"
        self.gpu = self.device.upper().startswith("GPU")

    def step(self, name: str, loss: Loss) -> Callable[[], None]:
        tf, tvars, opt, model = self.tf, self.tvars, self.opt, self.model

        def fn(real: Any, fake: Any) -> Any:
            with tf.GradientTape() as tape:
                value = loss(model, tuple(real), tuple(fake))
            pairs = [(g, v) for g, v in zip(tape.gradient(value, tvars), tvars) if g is not None]
            opt.apply([g for g, _ in pairs], [v for _, v in pairs])
            return value

        self.xla[name] = tf.function(fn, jit_compile=True)
        return lambda: self.xla[name](self.real, self.fake).numpy()

    def flops(self, name: str) -> int:
        ir = self.xla[name].experimental_get_compiler_ir(self.real, self.fake)
        return hlo.count(ir(stage="hlo")).total

    memory_method = ("the live-buffer peak of the step's compiled XLA program (its optimized, "
                     "scheduled HLO; gpreg.tools.hlo.peak_bytes), an estimate of the temporary "
                     "and output bytes of XLA's buffer assignment, which TensorFlow does not "
                     "expose (on JAX's programs it comes within 12% of it)")

    def memory(self, name: str) -> int:
        ir = self.xla[name].experimental_get_compiler_ir(self.real, self.fake)
        return hlo.peak_bytes(ir(stage="optimized_hlo"))

    def threads(self) -> str:
        n = self.tf.config.threading.get_intra_op_parallelism_threads()
        return "GPU" if self.gpu else (tc.threads_text(n) if n else "TensorFlow's default threads")

    def sync(self) -> None:
        return None


# ----------------------------------------------------------------------------- JAX


class _Compiled:
    """A ``jax.jit`` step, lowered and compiled on its first call."""

    def __init__(self, fn: Callable[..., Any], inputs: tuple[Any, ...]) -> None:
        self.fn, self.inputs = fn, inputs
        self.lowered: Any = None
        self.compiled: Any = None

    def __call__(self) -> None:
        import jax

        if self.compiled is None:
            self.lowered = jax.jit(self.fn).lower(*self.inputs)
            self.compiled = self.lowered.compile()
        jax.block_until_ready(self.compiled(*self.inputs))


class _Jax:
    mode = "jax.jit"
    flop_method = (HLO_FLOPS + "; the JSON also has XLA's own count of every operation of the "
                   "compiled step (compile().cost_analysis(), flops_xla)")
    memory_method = ("XLA's buffer assignment of the compiled step: its temporary and output "
                     "bytes (jax.jit(...).lower(...).compile().memory_analysis()), computed by "
                     "the compiler, not measured")

    def __init__(self, model: Any, opt: Any, real: tuple[Any, ...],
                 fake: tuple[Any, ...]) -> None:
        import jax

        self.model, self.opt = model, opt
        self.inputs = ([v.value for v in model.trainable_variables],
                       [v.value for v in opt.variables], real, fake)
        self.ntv = [v.value for v in model.non_trainable_variables]
        self.steps: dict[str, _Compiled] = {}
        self.device = str(next(iter(real[0].devices())))
        self.gpu = jax.devices()[0].platform == "gpu"

    def step(self, name: str, loss: Loss) -> Callable[[], None]:
        import jax

        model, opt, ntv = self.model, self.opt, self.ntv

        def fn(tv: Any, ov: Any, real: Any, fake: Any) -> Any:
            def of(tv: Any) -> Any:
                return loss(stateless_critic(model, tv, ntv), tuple(real), tuple(fake))

            value, grads = jax.value_and_grad(of)(tv)
            new_tv, new_ov = opt.stateless_apply(ov, grads, tv)
            return value, new_tv, new_ov

        self.steps[name] = _Compiled(fn, self.inputs)
        return self.steps[name]

    def flops(self, name: str) -> tuple[int, int | None]:
        s = self.steps[name]
        analysis = s.compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device
            analysis = analysis[0] if analysis else {}
        xla = analysis.get("flops") if analysis else None
        return hlo.count(s.lowered.as_text(dialect="hlo")).total, (
            None if xla is None else int(xla))

    def memory(self, name: str) -> int | None:
        m = self.steps[name].compiled.memory_analysis()
        return None if m is None else int(m.temp_size_in_bytes + m.output_size_in_bytes)

    def threads(self) -> str:
        if self.gpu:
            return "GPU"
        flags = os.environ.get("XLA_FLAGS", "")
        one = "intra_op_parallelism_threads=1" in flags
        return "1 CPU thread (XLA_FLAGS)" if one else "XLA's default CPU threads"

    def sync(self) -> None:
        return None


# ----------------------------------------------------------------------------- torch


class _Torch:
    mode = "eager"

    def __init__(self, model: Any, opt: Any, real: tuple[Any, ...],
                 fake: tuple[Any, ...]) -> None:
        import torch

        from gpreg_torch import _cost as torch_cost

        self.torch, self.tcost = torch, torch_cost
        self.model, self.opt, self.real, self.fake = model, opt, real, fake
        self.tvars = model.trainable_variables
        self.params = [v.value for v in self.tvars]
        self.device = str(real[0].device)
        self.cuda = self.device.startswith("cuda")
        self.steps: dict[str, Callable[[], None]] = {}
        self.flop_method = torch_cost.FLOP_METHOD
        self.memory_method = torch_cost.memory_method(self.device)

    def step(self, name: str, loss: Loss) -> Callable[[], None]:
        torch, params, tvars, opt = self.torch, self.params, self.tvars, self.opt

        def run() -> None:
            for p in params:
                p.grad = None
            loss(self.model, self.real, self.fake).backward()
            pairs = [(p.grad, v) for p, v in zip(params, tvars) if p.grad is not None]
            with torch.no_grad():
                opt.apply([g for g, _ in pairs], [v for _, v in pairs])

        self.steps[name] = run
        return run

    def flops(self, name: str) -> int:
        return self.tcost.count_flops(self.steps[name])

    def memory(self, name: str) -> int:
        return self.tcost.peak_memory_bytes(self.steps[name], self.device)

    def threads(self) -> str:
        return "CUDA" if self.cuda else tc.threads_text(self.torch.get_num_threads())

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


BACKENDS = {"tensorflow": _TensorFlow, "jax": _Jax, "torch": _Torch}


def cost(
    critic: Any,
    real: Any,
    fake: Any = None,
    *,
    penalties: Sequence[str] | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Any = None,
    optimizer: Any = None,
    lazy: Sequence[int] = (4, 8, 16),
    rounds: int = 11,
    warmup: int = 1,
    min_sample_s: float = 0.05,
    flops: bool = True,
    memory: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tc.CostReport:
    r"""What each penalty costs on your critic, batch and device (Keras 3), and the levers.

    Times the critic *step* training runs — zero the gradients, the WGAN loss
    :math:`\frac{1}{B}\sum D(\tilde x) - \frac{1}{B}\sum D(x)`, its gradient, an optimizer
    step — without a penalty (*plain*) and with each penalty added to the loss, paired and
    interleaved: in every round each step is timed once, in a shuffled order, and a ratio is
    the median of the per-round ratios, with their min and max. The plain step is also timed
    against itself (the *control*): its spread is the noise floor, and a difference inside it
    is not a difference. Beside the times: the ratio of the steps' matmul and convolution
    FLOPs, and of their peak memory. The levers:

    - *lazy regularization* (StyleGAN2): the penalty only every :math:`N`-th batch, as a step
      of its own (the penalty, its gradient, an optimizer step: the *alone* step, timed too),
      costs :math:`(N \cdot t_\text{plain} + t_\text{alone}) / (N \cdot t_\text{plain})` per
      batch against the plain step, for each :math:`N` in ``lazy``;
    - *forward reuse* (R1 and R2 from the scores of the adversarial loss's own forward
      pass) is not measured: it needs PyTorch's after-the-fact gradients
      (``gpreg_torch.from_scores``), which TensorFlow and JAX do not have; the report says
      so.

    How the steps run is how Keras trains on each backend. TensorFlow: each step is a
    ``tf.function(jit_compile=True)``; FLOPs are counted in its HLO
    (``experimental_get_compiler_ir``); memory is the live-buffer peak of its compiled
    program, an estimate of XLA's buffer assignment, which TensorFlow does not expose. JAX:
    each step is one ``jax.jit`` of a stateless step (``stateless_call``,
    ``optimizer.stateless_apply``); FLOPs from its HLO, memory from XLA's buffer assignment
    (``memory_analysis``). Keras's torch backend: the steps run eagerly and are measured as
    ``gpreg_torch.cost`` measures them. The first call of each step (tracing and
    compilation) is reported apart, not timed.

    The critic's parameters, buffers and gradients and the optimizer's state are restored
    afterwards: measuring does not train the critic.

    Args:
        critic: the critic, as in :func:`wgan_gp` (the module or model itself: its
            parameters are what the step's optimizer updates).
        real: a real batch (a tensor, or a tuple of tensors for a multi-input critic), of the
            size you train with.
        fake: a generated batch of the same shape; ``None`` uses ``real`` rolled by one
            sample (the cost does not depend on the values).
        penalties: the penalties to measure, by name (any registered name); ``None``:
            ``wgan_gp`` and ``r1``, one evaluated at new points and one at the data.
        args, kwargs, output: as in :func:`wgan_gp`; passed to every critic call of the plain
            step and of the penalty steps.
        optimizer: a ``keras.optimizers.Optimizer`` (built on the critic's trainable variables if
            it is not); ``None``: Adam (lr 1e-4, betas (0, 0.9)), WGAN-GP's.
        lazy: the intervals :math:`N` of the lazy-regularization lever; ``()`` skips it (and
            the alone steps).
        rounds: timed rounds (each step once per round; 11 by default, 3 for a quick look).
        warmup: untimed calls of every step after its first call (the first call, which
            traces and compiles where the framework does, is timed and reported apart).
        min_sample_s: a timed sample repeats a step until it lasts about this long (0: one
            step per sample).
        flops: count the FLOPs of each step.
        memory: measure the peak memory of each step.
        seed: seed of the penalties' random draws and of the order of the steps in a round.
        progress: called with a short message at each stage (``gpreg cost`` prints them to
            stderr).

    Returns:
        A :class:`gpreg.tools.cost.CostReport`: ``summary()`` is the table (one row per step)
        with the one-line ``reading()``; ``report["wgan_gp"]`` has one penalty's ratios
        (``ratio``, ``flop_ratio``, ``memory_ratio``, ``lazy[N]``, ``reuse_saving``);
        ``to_dict()`` is JSON-ready.

    Raises:
        ValueError: an empty ``penalties``, a bad ``lazy`` interval, ``rounds`` < 1, and as in
            :func:`wgan_gp`.
        KeyError: an unknown penalty name (``gpreg.UnknownPenaltyError``).
        TypeError: a critic without parameters and no ``optimizer``, and as in
            :func:`wgan_gp`.

    Example:
        >>> import keras, numpy as np, gpreg_keras as gp
        >>> critic = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
        ...                            keras.layers.LeakyReLU(0.2), keras.layers.Dense(1)])
        >>> real = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> report = gp.cost(critic, real, rounds=3, lazy=(), min_sample_s=0, memory=False)
        >>> print(report.summary())                                # doctest: +SKIP
    """
    names, intervals = tc.check_options(WHERE, penalties, lazy, rounds, warmup, min_sample_s)
    if not isinstance(critic, keras.Layer):
        raise TypeError(
            f"{WHERE}: critic must be the Keras model (or layer) itself: the step's optimizer "
            f"updates its trainable variables (on JAX through stateless_call); got "
            f"{type(critic).__name__}. Pass conditioning with args=/kwargs=.")
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise RuntimeError(f"{WHERE}: Keras's {backend!r} backend has no double backprop; use "
                           f"tensorflow, jax or torch (KERAS_BACKEND).")
    real_parts = _core.parts(WHERE, "real", real)
    if fake is None:
        fake = _pack(tuple(ops.roll(p, 1, axis=0) for p in real_parts), real)
    fake_parts = _core.parts(WHERE, "fake", fake)
    call = _core.call_options(WHERE, args, kwargs, output, real)
    losses = _Losses(call, real, fake, args, kwargs, output, seed)
    if not critic.built:  # a subclassed model builds on its first call
        critic(*arrange(critic, real_parts, call.args), **call.kwargs)
    opt = optimizer or keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.9)
    if not isinstance(opt, keras.optimizers.Optimizer):
        raise TypeError(f"{WHERE}: optimizer must be a keras.optimizers.Optimizer; got "
                        f"{type(opt).__name__}.")
    opt_desc = "Adam (lr 1e-4, betas (0, 0.9))" if optimizer is None else type(opt).__name__
    if not opt.built:
        opt.build(critic.trainable_variables)
    b = BACKENDS[backend](critic, opt, real_parts, fake_parts)
    steps = {"plain": b.step("plain", losses.adversarial)}
    for name in names:
        steps[name] = b.step(name, losses.penalized(name))
    if intervals:
        for name in names:
            steps[f"{name} alone"] = b.step(f"{name} alone", losses.penalty(name))
    n_params = sum(int(np.prod(v.shape)) for v in critic.trainable_variables)
    info = tc.Info(
        framework=f"keras-{backend}", mode=b.mode, device=b.device,
        critic=f"{type(critic).__name__} ({n_params:,} parameters)",
        batch=int(real_parts[0].shape[0]), optimizer=opt_desc, threads=b.threads(),
        flop_method=b.flop_method if flops else None,
        memory_method=b.memory_method if memory else None,
        notes=[REUSE_NOTE] if any(tc.reusable(n) for n in names) else [])
    saved = (_values(critic.variables), _values(opt.variables))
    try:
        return tc.measure(steps=steps, penalties=names, lazy=intervals, rounds=rounds,
                          warmup=warmup, min_sample_s=min_sample_s, info=info, sync=b.sync,
                          flops=b.flops if flops else None,
                          memory=b.memory if memory else None, seed=seed, progress=progress)
    finally:
        for variables, values in zip((critic.variables, opt.variables), saved):
            for var, value in zip(variables, values):
                var.assign(value)
