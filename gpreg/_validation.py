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
    """A critic with batch normalization in training mode: its samples are coupled.

    Silence it with ``warnings.filterwarnings("ignore", category=gpreg.BatchNormWarning)``.
    """


def batchnorm_message(where: str, layers: Sequence[str]) -> str:
    names = ", ".join(layers[:4]) + (" ..." if len(layers) > 4 else "")
    return (
        f"{where}: the critic has batch normalization in training mode ({names}). Batch "
        f"statistics couple the samples, so sample i's gradient also depends on the other "
        f"samples and the per-sample norms are not those of the penalty's definition (WGAN-GP "
        f"recommends no BatchNorm in the critic). Use LayerNorm or GroupNorm, or evaluate in "
        f"inference mode. To silence: warnings.filterwarnings('ignore', "
        f"category=gpreg.BatchNormWarning). (Shown once per critic.)"
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
            f"(the gradient with respect to integer or bool inputs is undefined). Convert "
            f"first: x.float() in PyTorch, keras.ops.cast(x, 'float32') in Keras."
        )


def check_same_dtype(where: str, dtypes: Sequence[tuple[str, str]]) -> None:
    """``dtypes`` is a list of (role, dtype name); all must agree."""
    names = {d for _, d in dtypes}
    if len(names) > 1:
        listing = ", ".join(f"{role} {d}" for role, d in dtypes)
        raise TypeError(
            f"{where}: the points have different dtypes ({listing}); cast them to one dtype, "
            f"e.g. fake.to(real.dtype)."
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


def check_finite(where: str, what: str, bad_samples: Sequence[int]) -> None:
    if len(bad_samples):
        shown = ", ".join(str(int(i)) for i in list(bad_samples)[:8])
        more = "" if len(bad_samples) <= 8 else f" and {len(bad_samples) - 8} more"
        raise FloatingPointError(
            f"{where}: {what} is not finite (NaN or Inf) for sample(s) {shown}{more}. "
            f"Check the inputs of those samples and the critic's numerics."
        )


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
