"""Input checks shared by every adapter, with the messages users see.

Each check takes plain Python facts (shapes as tuples, dtype names as strings) so that
PyTorch, TensorFlow and JAX adapters raise the same error type with the same words.
Every message says what was wrong, what was expected, and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REDUCTIONS = ("mean", "sum", "max", "none")


class BatchNormWarning(UserWarning):
    """A critic with batch normalization that uses batch statistics (training mode, or no
    running statistics): its samples are coupled.

    Silence it with ``warnings.filterwarnings("ignore", category=gpreg.BatchNormWarning)``.
    """


def batchnorm_message(where: str, layers: Sequence[str]) -> str:
    names = ", ".join(layers[:4]) + (" ..." if len(layers) > 4 else "")
    return (
        f"{where}: the critic has batch normalization that uses batch statistics ({names}), "
        f"as in training mode or without running statistics. Batch statistics couple the "
        f"samples, so sample i's gradient also depends on the other "
        f"samples and the per-sample norms are not those of the penalty's definition (WGAN-GP "
        f"recommends no BatchNorm in the critic). Use LayerNorm or GroupNorm, or evaluate in "
        f"inference mode. To silence: warnings.filterwarnings('ignore', "
        f"category=gpreg.BatchNormWarning). (Shown once per critic.)"
    )



class InexactStatisticsWarning(UserWarning):
    """A TensorFlow critic whose graph is frozen (a restored SavedModel, a concrete function)
    computes normalization statistics with ``tf.nn.moments``: the penalty's parameter
    gradient is wrong to second order, and gpreg cannot swap in exact statistics."""


class FixedSeedWarning(UserWarning):
    """An int ``seed=`` inside a compiled training step: the same random draw every step."""


def frozen_moments_message(where: str) -> str:
    return (
        f"{where}: the critic is a frozen TensorFlow graph (a restored SavedModel, a "
        f"model.export() endpoint, a TFSMLayer or a concrete function) that computes "
        f"normalization statistics with tf.nn.moments. Its variance stops the gradient "
        f"through the mean: the penalty's value is right, its parameter gradient is not, and "
        f"gpreg cannot swap in exact statistics in a graph that is already traced. Use the "
        f"Python model (or its tf.function) as the critic. (Shown once per critic.)"
    )


def fixed_seed_message(where: str, seed: object, fix: str) -> str:
    return (
        f"{where}: seed={seed!r} is a fixed draw, and this call is being traced into a "
        f"compiled step (tf.function / jax.jit): every step will use the same random numbers "
        f"(the same alpha for each batch position). An int seed is meant for tests. In "
        f"training pass {fix}. (Shown once.)"
    )


def traced_seed_generator(where: str) -> ValueError:
    return ValueError(
        f"{where}: a keras.random.SeedGenerator cannot advance inside jax.jit: its state "
        f"update would be frozen into the compiled step (the same random numbers every step) "
        f"and leave a tracer behind in the generator. Pass a JAX key that changes per step "
        f"(e.g. seed=jax.random.fold_in(key, step), with key and step arguments of the "
        f"jitted function), or explicit alpha= (and noise= for DRAGAN). A SeedGenerator "
        f"works where Keras threads its state (a keras.StatelessScope that maps it)."
    )


def traced_unseeded(where: str) -> ValueError:
    return ValueError(
        f"{where}: inside jax.jit (or any JAX transformation) the random draws need a seed: "
        f"pass seed= (a JAX key that changes per step, e.g. jax.random.fold_in(key, step)), "
        f"or explicit alpha= (and noise= for DRAGAN)."
    )


def unsupported_points(where: str, role: str, kind: str) -> TypeError:
    return TypeError(
        f"{where}: {role} is a {kind}; gradient penalties need dense tensors with a batch "
        f"dimension (the norm is taken per sample over a fixed shape). Densify or pad first: "
        f"ragged.to_tensor(), tf.sparse.to_dense(x), or batch samples of equal shape."
    )


def wrong_backend_tensor(where: str, role: str, kind: str, backend: str,
                         belongs: str | None) -> TypeError:
    hint = (
        f"Keras runs its {backend} backend: if the model is meant for {belongs}, set "
        f"KERAS_BACKEND={belongs} before the first `import keras`; otherwise convert with "
        f"keras.ops.convert_to_tensor(x)."
        if belongs else "Convert with keras.ops.convert_to_tensor(x, dtype='float32')."
    )
    return TypeError(
        f"{where}: {role} must be a tensor of the Keras backend ({backend}), a NumPy array, "
        f"or a tuple of them (one per critic input); got {kind}. {hint}"
    )


def stateless_variables(where: str, which: str) -> TypeError:
    return TypeError(
        f"{where}: {which} holds the model's Variables, not values. On JAX, jax.grad "
        f"differentiates the values you pass in; a critic built on the Variables uses their "
        f"stored contents, so every parameter gradient would be zero (and under jax.jit the "
        f"values would be frozen at trace time). Pass the values the step receives: "
        f"gp.stateless_critic(model, trainable_values, non_trainable_values) with, outside the "
        f"step, trainable_values = [v.value for v in model.trainable_variables]."
    )


def loss_scale_traced(where: str) -> ValueError:
    return ValueError(
        f"{where}: scaler= under jax.jit reads the LossScaleOptimizer's loss scale, and "
        f"outside a keras.StatelessScope that is the value frozen at trace time: after the "
        f"first overflow every step would be skipped. Compute the loss (penalty and "
        f"optimizer.scale_loss included) inside `with keras.StatelessScope(state_mapping="
        f"list(zip(optimizer.variables, optimizer_values))):`, with optimizer_values the "
        f"optimizer state the jitted step receives."
    )


def per_shard_message(where: str, what: str) -> str:
    return (
        f"{where}: called inside shard_map / pmap (named axes), where each device sees only "
        f"its shard: {what} is computed over this shard, not the global batch, and differs "
        f"from one device. Call the penalty under jax.jit on globally sharded arrays (the "
        f"statistic is then global), or accept the per-shard statistic. (Shown once.)"
    )


Shape = tuple[int, ...]


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_scalar(where: str, name: str, value: object, *, positive: bool = False) -> float:
    """A weight, gamma, target or c: a finite real number, non-negative (or positive)."""
    number = isinstance(value, (int, float)) or _is_real_scalar(value)
    if isinstance(value, bool) or not number:
        raise TypeError(
            f"{where}: {name} must be a Python number; got {type(value).__name__}. "
            f"Pass a float such as {name}=10.0."
        )
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "positive" if positive else "non-negative"
        raise ValueError(f"{where}: {name} must be a finite, {need} number; got {value!r}.")
    return v


def _is_real_scalar(value: object) -> bool:
    # numpy scalars and 0-d arrays of a real dtype behave like floats
    try:
        import numpy as np

        return isinstance(value, (np.integer, np.floating)) or (
            isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"
        )
    except Exception:  # pragma: no cover - numpy is a dependency
        return False


def check_power(where: str, p: object) -> float:
    """WGAN-div's exponent ``p``: a finite number of at least 1.

    Below 1 the derivative of :math:`n^p`, :math:`p n^{p-1}`, is unbounded as the norm goes to 0,
    so the penalty's weight gradient explodes near critics with a small input gradient.
    """
    v = check_scalar(where, "p", p)
    if v < 1.0:
        raise ValueError(
            f"{where}: p must be at least 1; got {p!r}. The derivative of n**p, p * n**(p - 1), "
            f"is unbounded as the gradient norm n goes to 0 when p < 1, which makes the "
            f"penalty's weight gradient explode. WGAN-div's recommended value is p=6.0."
        )
    return v


def check_choice(where: str, name: str, value: object, choices: Sequence[str]) -> str:
    """A string option (``points``, ``perturbation``) that must be one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{where}: unknown {name} {value!r}; expected one of "
            + ", ".join(repr(c) for c in choices)
            + "."
        )
    return value


def check_ddof(where: str, ddof: object, n_elements: int | None) -> int:
    """DRAGAN's ``ddof``: 0 (population standard deviation) or 1 (unbiased, ``torch.std``'s
    default); the real batch needs more elements than ``ddof`` (``None``: not known yet)."""
    if isinstance(ddof, bool) or ddof not in (0, 1):
        raise ValueError(
            f"{where}: ddof must be 0 (population standard deviation, the authors' NumPy code) "
            f"or 1 (unbiased, torch.std's default, used by public PyTorch DRAGAN code); "
            f"got {ddof!r}."
        )
    if n_elements is not None and n_elements <= int(ddof):  # type: ignore[call-overload]
        raise ValueError(
            f"{where}: the standard deviation with ddof={ddof} needs more than {ddof} element(s) "
            f"in the real batch; got {n_elements}. Use ddof=0, or a larger batch."
        )
    return int(ddof)  # type: ignore[call-overload]


_NO_ALPHA = {
    "perturbation='gaussian'": (
        "the paper's x + delta, delta ~ N(0, c I), has no random fraction; use "
        "perturbation='uniform' for the reference code's x + alpha * c * std * u"
    ),
    "points='real_fake'": (
        "the critic is evaluated at the real and the fake samples themselves; use "
        "points='interpolates' for alpha * real + (1 - alpha) * fake"
    ),
}


def unused_alpha(where: str, setting: str) -> ValueError:
    """``alpha`` given where it plays no part: ``setting`` is a key of ``_NO_ALPHA``."""
    return ValueError(
        f"{where}: alpha is not used with {setting} ({_NO_ALPHA[setting]}). Pass alpha=None."
    )


def check_target(where: str, target: object, ratio: bool) -> float:
    """``target`` must be non-negative; the ratio form divides by it, so there it must be > 0."""
    t = check_scalar(where, "target", target, positive=ratio)
    return t


def check_reduction(where: str, reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{where}: unknown reduction {reduction!r}; expected one of "
            + ", ".join(repr(r) for r in REDUCTIONS)
            + ". Use reduction='none' for the per-sample vector."
        )
    return str(reduction)


def check_parts(where: str, role: str, shapes: Sequence[Shape]) -> int:
    """Every part of the points has a non-empty leading batch dimension, the same in all parts."""
    if not shapes:
        raise ValueError(f"{where}: {role} is an empty tuple; pass at least one tensor.")
    for shape in shapes:
        if len(shape) == 0:
            raise ValueError(
                f"{where}: {role} is a scalar (shape ()); expected a batch with the samples "
                f"along the first dimension, e.g. shape (B, features). For one sample use "
                f"x[None] or x.unsqueeze(0)."
            )
    batch = int(shapes[0][0])
    if batch == 0:
        raise ValueError(
            f"{where}: {role} is an empty batch (shape {_fmt(shapes[0])}); a penalty needs "
            f"at least one sample. Skip the penalty for empty batches."
        )
    for shape in shapes[1:]:
        if int(shape[0]) != batch:
            raise ValueError(
                f"{where}: the parts of {role} have different batch sizes: "
                + ", ".join(_fmt(s) for s in shapes)
                + ". Every part of a multi-input critic needs the same leading batch dimension."
            )
    return batch


def check_same_shapes(where: str, real: Sequence[Shape], fake: Sequence[Shape]) -> None:
    if len(real) != len(fake):
        raise ValueError(
            f"{where}: real has {len(real)} part(s) and fake has {len(fake)}; a multi-input "
            f"critic needs the same number of tensors in both."
        )
    for i, (r, f) in enumerate(zip(real, fake)):
        if tuple(r) != tuple(f):
            part = f" (part {i})" if len(real) > 1 else ""
            raise ValueError(
                f"{where}: real and fake must have the same shape{part}; got real {_fmt(r)} "
                f"and fake {_fmt(f)}. Interpolates are taken sample by sample, so both batches "
                f"need the same batch size and sample shape (slice the larger batch, e.g. "
                f"fake[:real.shape[0]])."
            )


def check_floating(where: str, role: str, dtype: str, is_floating: bool) -> None:
    if not is_floating:
        raise TypeError(
            f"{where}: {role} has dtype {dtype}; gradient penalties need floating-point points "
            f"(the gradient with respect to integer or bool inputs is undefined). If it is a "
            f"label or an index (conditioning), do not convert it: pass it through args=, e.g. "
            f"gp.r1(critic, images, args=(labels,)), which calls critic(images, labels) and "
            f"never differentiates it (as a float part, dD/dlabel would join the norm). "
            f"Integer data itself: convert first, x.float() / 255 in PyTorch, "
            f"keras.ops.cast(x, 'float32') in Keras."
        )


def check_same_dtype(where: str, dtypes: Sequence[tuple[str, str]],
                     cast: str = "fake.to(real.dtype)") -> None:
    """``dtypes`` is a list of (role, dtype name); all must agree. ``cast`` is the
    framework's idiom for the fix (Keras: ``keras.ops.cast(fake, real.dtype)``)."""
    names = {d for _, d in dtypes}
    if len(names) > 1:
        listing = ", ".join(f"{role} {d}" for role, d in dtypes)
        raise TypeError(
            f"{where}: the points have different dtypes ({listing}); cast them to one dtype, "
            f"e.g. {cast}."
        )


def check_same_device(where: str, devices: Sequence[tuple[str, str]]) -> None:
    names = {d for _, d in devices}
    if len(names) > 1:
        listing = ", ".join(f"{role} on {d}" for role, d in devices)
        raise ValueError(
            f"{where}: the inputs are on different devices ({listing}); move them to the "
            f"critic's device, e.g. fake.to(real.device)."
        )


def check_alpha_shape(where: str, alpha_shape: Shape, batch: int) -> None:
    ok = (
        len(alpha_shape) >= 1
        and int(alpha_shape[0]) == batch
        and all(int(s) == 1 for s in alpha_shape[1:])
    )
    if not ok:
        raise ValueError(
            f"{where}: alpha has shape {_fmt(alpha_shape)}; expected one value per sample, "
            f"shape ({batch},) (or ({batch}, 1, ..., 1)). One alpha shared by the whole batch "
            f"is a known bug in public WGAN-GP code; pass alpha=None to draw alpha ~ U[0, 1) "
            f"per sample."
        )


def check_noise_shapes(where: str, noise: Sequence[Shape], real: Sequence[Shape]) -> None:
    if len(noise) != len(real) or any(tuple(n) != tuple(r) for n, r in zip(noise, real)):
        raise ValueError(
            f"{where}: noise has shape(s) {', '.join(_fmt(n) for n in noise)}; expected the "
            f"shape(s) of real, {', '.join(_fmt(r) for r in real)}. Pass noise=None to draw "
            f"U[0, 1) noise of the right shape."
        )


def bad_output_type(where: str, type_name: str, expected: str) -> TypeError:
    return TypeError(
        f"{where}: the critic returned {_article(type_name)} {type_name}; expected a {expected} "
        f"computed from its "
        f"input (scores of shape (B,) or (B, ...)). A Python float or a NumPy array has no "
        f"gradient: keep the critic's computation in the framework, without .item() or .numpy()."
    )


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def check_output_shape(where: str, out_shape: Shape, batch: int) -> None:
    if len(out_shape) == 0 or int(out_shape[0]) != batch:
        raise ValueError(
            f"{where}: the critic's output has shape {_fmt(out_shape)}; expected the batch size "
            f"{batch} as its leading dimension (shape ({batch},), ({batch}, 1) or ({batch}, ...), "
            f"summed per sample). Do not reduce over the batch inside the critic (no .mean() "
            f"over scores) and keep the batch first."
        )


def independent_critic(where: str) -> RuntimeError:
    return RuntimeError(
        f"{where}: the critic's output does not depend on its input, so there is no input "
        f"gradient to penalize. Common causes: the critic detaches or converts its input "
        f"(x.detach(), torch.no_grad(), tf.stop_gradient, .numpy()), or it ignores its "
        f"argument (e.g. a closure over another tensor). Compute the scores from the points "
        f"the penalty passes in."
    )


def check_finite(where: str, what: str, bad_samples: Sequence[int], note: str = "") -> None:
    if len(bad_samples):
        shown = ", ".join(str(int(i)) for i in list(bad_samples)[:8])
        more = "" if len(bad_samples) <= 8 else f" and {len(bad_samples) - 8} more"
        raise FloatingPointError(
            f"{where}: {what} is not finite (NaN or Inf) for sample(s) {shown}{more}. "
            + (note + " " if note else "")
            + "Check the inputs of those samples and the critic's numerics."
        )


DRAGAN_SIGMA_NOTE = (
    "DRAGAN's sigma, the standard deviation of the whole real batch, is then not finite "
    "either, so every perturbed point is affected, not only these samples."
)


def from_scores_not_leaf(where: str, index: int, several: bool) -> str:
    name = f"points[{index}]" if several else "the points"
    return (
        f"{where}: {name} were computed by other operations (e.g. fake = G(z)), not "
        f"created as the critic's input: the penalty's gradient would flow through them "
        f"into whatever produced them, the generator included. Detach them before the critic "
        f"call: fake = fake.detach().requires_grad_(); scores = critic(fake); "
        f"penalty = gp.from_scores('r2', scores, fake)."
    )


_SHAPE_WORDS = ("shape", "size", "dimension", "channel", "expected input", "rank", "ndim",
                "unbatched", "dims", "incompatible")


def is_shape_error(exc: BaseException) -> bool:
    """Whether a critic's error is about the shape or layout of its input (by its message)."""
    if isinstance(exc, IndexError):
        return True
    text = str(exc).lower()
    return any(w in text for w in _SHAPE_WORDS)


def critic_failed_note(where: str, shapes: Sequence[Shape], exc: BaseException) -> str:
    """What the penalty adds to an error that the critic raised on the evaluation points:
    the shapes it passed in, and the layout hint only for errors about shapes."""
    listing = ", ".join(_fmt(s) for s in shapes)
    text = str(exc).lower()
    if "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return (
            f"{where}: the critic ran out of memory in the penalty's pass on points of shape "
            f"{listing}; that pass keeps the graph of a second forward and its backward. "
            f"Evaluate the penalty on part of the batch (e.g. real[:16]) or less often "
            f"(LazyRegularization)."
        )
    if is_shape_error(exc):
        return (
            f"{where}: the critic failed on the evaluation points of shape {listing}. The "
            f"points have the shape of real/fake; check that they match what the critic takes "
            f"(rank, channels-first vs channels-last layout, one tensor per input of a "
            f"multi-input critic; conditioning goes in args=)."
        )
    return f"{where}: raised by the critic on the evaluation points of shape {listing}."


def annotate_critic_error(where: str, shapes: Sequence[Shape], exc: BaseException) -> None:
    """Attach :func:`critic_failed_note` to ``exc`` itself (PEP 678), which the caller then
    re-raises unchanged: the type, the message and the traceback stay the critic's."""
    if hasattr(exc, "add_note"):  # Python 3.11+; on 3.10 the error passes through as it is
        exc.add_note(critic_failed_note(where, shapes, exc))


def critic_failed(where: str, shapes: Sequence[Shape], exc: BaseException) -> BaseException:
    """The critic raised on the evaluation points: the same error type, with the shapes the
    penalty passed in and the layout hint, chained to the original (``raise ... from exc``)."""
    listing = ", ".join(_fmt(s) for s in shapes)
    msg = (
        f"{where}: the critic failed on the evaluation points of shape {listing} "
        f"({type(exc).__name__}: {exc}). The points have the shape of real/fake; check that "
        f"they match what the critic takes (rank, channels-first vs channels-last layout, "
        f"one tensor per input of a multi-input critic)."
    )
    try:
        return type(exc)(msg)
    except Exception:  # exception types with other constructors
        return ValueError(msg)


def check_global_batch_size(where: str, reduction: str, global_batch_size: object) -> int | None:
    """``None``, or a positive int used with ``reduction="mean"``."""
    if global_batch_size is None:
        return None
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int) or (
        global_batch_size <= 0
    ):
        raise ValueError(
            f"{where}: global_batch_size must be a positive int (the batch size summed over "
            f"all replicas); got {global_batch_size!r}."
        )
    if reduction != "mean":
        raise ValueError(
            f"{where}: global_batch_size divides the per-replica sum, so it needs "
            f"reduction='mean'; got reduction={reduction!r}."
        )
    return global_batch_size


def check_needs_model(where: str, critic: object, accepted: str) -> TypeError:
    """``check_critic`` was given a function (a closure, a partial, a lambda) or another
    callable that is not a model: it could hide models that the check would run and change."""
    kind = "a lambda" if getattr(critic, "__name__", "") == "<lambda>" else (
        f"{_article(type(critic).__name__)} {type(critic).__name__}")
    return TypeError(
        f"{where}: the critic must be {accepted}; got {kind}. The check runs on a copy of the "
        f"model so that yours is never run nor changed, and a function can hide models that "
        f"it would run instead (their BatchNorm statistics, counters and random state would "
        f"move). Pass the model and its call options, as the penalties take them: "
        f"check_critic(D, real, fake, args=(labels,)) for lambda x: D(x, labels); "
        f"kwargs={{...}} for keyword arguments; output='score' (a key, an index or a callable) "
        f"for a critic that returns a tuple or dict."
    )


# --- errors raised by double backprop, with their known causes --------------------

_HINTS: tuple[tuple[str, str], ...] = (
    ("once_differentiable",
     "a custom autograd Function marked @once_differentiable sits in the critic; its backward "
     "cannot be differentiated again, so no gradient penalty can reach the parameters through "
     "it. Write its backward with differentiable torch operations and drop the decorator, or "
     "keep the Function out of the critic."),
    ("does not currently support double backward",
     "torch.compile (aot_autograd) has no double backward: compute the penalty through the "
     "uncompiled module (compiled._orig_mod)."),
    ("_scaled_dot_product_",
     "fused attention kernels have no double backward: compute the penalty under "
     "torch.nn.attention.sdpa_kernel(SDPBackend.MATH)."),
    ("CuDNN RNN",
     "cuDNN RNNs have no double backward: disable cuDNN for the penalty pass "
     "(torch.backends.cudnn.flags(enabled=False))."),
    ("cudnnRNN",
     "cuDNN RNNs have no higher-order gradient: build the recurrent layers with "
     "use_cudnn=False."),
    ("is not implemented",
     "an operation in the critic has no double backward in this framework; the penalty cannot "
     "be differentiated through it."),
)


def explain(exc: BaseException) -> str:
    """``"Type: message"`` of an exception raised by double backprop, with a hint if known."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    for needle, hint in _HINTS:
        if needle in str(exc):
            return f"{text} -- {hint}"
    return text
