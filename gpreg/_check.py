"""The framework-free half of ``check_critic``: is a penalty's parameter gradient right?

A gradient penalty's parameter gradient is a second derivative of the critic (double
backprop). Any piece of the critic that is right to first order but not to second order — a
``stop_gradient`` inside a normalization layer, a custom autograd function whose backward is
not itself differentiable, a fused kernel — leaves the penalty's *value* right and its
parameter gradient silently wrong. No loss curve shows it.

``check_critic`` (in ``gpreg_torch`` and ``gpreg_keras``) makes it visible: on a float64 copy
of the critic it compares each penalty's parameter gradient, computed by gpreg's double
backprop, with central finite differences of the penalty's *value* along random directions
in parameter space, one parameter group (tensor or variable) at a time. The adapters only
evaluate the penalty at given parameter values; everything else lives here, in NumPy: the
random draws, the finite differences, the comparison, the sample-coupling test, the report and
its text, and the copying of plain-function critics.

The finite differences, for a direction :math:`d` (standard normal entries) in the parameters
:math:`\\theta_k` of group :math:`k` and a step :math:`h = \\text{eps} \\cdot
\\operatorname{rms}(\\theta_k)`:

.. math::

    D_h = \\frac{P(\\theta + h d) - P(\\theta - h d)}{2h}, \\qquad
    R = \\frac{4 D_{h/2} - D_h}{3}

(Richardson's extrapolation: error :math:`O(h^4)`). The relative error of the direction is
:math:`|\\langle g, d\\rangle - R| / \\max(|\\langle g, d\\rangle|, |R|, \\lVert g\\rVert,
\\nu / \\text{rtol})`, where :math:`g` is gpreg's gradient for the group and :math:`\\nu` the
size of the rounding noise in :math:`R`. When :math:`D_h` and :math:`D_{h/2}` disagree by more
than :math:`\\sqrt{\\text{rtol}}` (a step crossed a ReLU kink or the top of a max), the step is
divided by 8, twice at most; a direction that stays rough is *inconclusive*, not wrong.
"""

from __future__ import annotations

import copy
import functools
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpreg._specs import BUILTIN_NAMES, PenaltySpec, get_spec

#: Default step (relative to the parameters' root mean square) and tolerance per dtype.
DEFAULTS: dict[str, dict[str, float]] = {
    "float64": {"eps": 1e-4, "rtol": 1e-6},
    "float32": {"eps": 3e-3, "rtol": 5e-3},
}

#: Statuses of one penalty × parameter group, and of a penalty.
STATUSES = ("ok", "mismatch", "nonfinite", "inconclusive", "error")

_ROUGH_RETRIES = 2  # step / 8 at most twice when the two step sizes disagree
_NOISE_ULPS = 64.0  # rounding noise of one penalty value, in units of the dtype's epsilon


# --- the report ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupCheck:
    """One penalty × one parameter group.

    Attributes:
        group: the parameter group's name (``named_parameters()`` name, variable path).
        shape: its shape.
        rel_error: the largest relative error over the conclusive directions (NaN when none
            was conclusive or the gradient was not finite).
        status: ``"ok"``, ``"mismatch"``, ``"nonfinite"`` or ``"inconclusive"``.
        autodiff: gpreg's directional derivatives :math:`\\langle g, d\\rangle`, one per
            direction.
        finite_diff: the finite-difference estimates, one per direction (NaN where a
            direction stayed rough).
    """

    group: str
    shape: tuple[int, ...]
    rel_error: float
    status: str
    autodiff: tuple[float, ...] = ()
    finite_diff: tuple[float, ...] = ()


@dataclass(frozen=True)
class PenaltyCheck:
    """One penalty: its value at the check points and its per-group comparisons.

    Attributes:
        penalty: the penalty's registry name.
        value: its value at the check points (NaN when it could not be computed).
        status: ``"error"`` when the parameter gradient could not be computed (see
            ``error``), else the worst status of its groups.
        groups: one :class:`GroupCheck` per parameter group.
        error: the exception that double backprop raised, with a hint when gpreg knows the
            cause.
    """

    penalty: str
    value: float
    status: str
    groups: tuple[GroupCheck, ...] = ()
    error: str = ""

    @property
    def max_error(self) -> float:
        """The largest relative error over the groups (NaN if there is none)."""
        errs = [g.rel_error for g in self.groups if not math.isnan(g.rel_error)]
        return max(errs) if errs else float("nan")


@dataclass(frozen=True)
class CouplingCheck:
    """Whether one sample's output depends on another sample's input.

    A gradient penalty takes per-sample input gradients, which assumes that the critic scores
    each sample on its own. BatchNorm in training mode (batch statistics) breaks that: then
    :math:`\\partial D(x_i) / \\partial x_j \\neq 0` and the per-sample norms are not what the
    penalty means.

    Attributes:
        coupled: True when moving one sample's input moved another sample's output.
        ratio: the largest :math:`|\\Delta D_i| / |\\Delta D_j|` over the perturbed samples
            :math:`j` and the others :math:`i`.
        pair: ``(i, j)`` for that largest ratio (``(-1, -1)`` with a single sample).
        perturbed: the perturbed samples :math:`j`.
    """

    coupled: bool
    ratio: float
    pair: tuple[int, int] = (-1, -1)
    perturbed: tuple[int, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    """What ``check_critic`` found. ``str(report)`` is :meth:`summary`.

    Attributes:
        ok: True when every penalty's parameter gradient agrees with the finite differences
            in every group, every value and gradient is finite, no sample is coupled to
            another, the critic is a deterministic function of its parameters and every
            parameter it uses could be checked.
        framework: e.g. ``"torch"`` or ``"keras (tensorflow)"``.
        dtype: the dtype the check ran in (``"float64"`` where the framework allows).
        penalties: one :class:`PenaltyCheck` per penalty.
        groups: the parameter groups' names, in order.
        coupling: the sample-coupling test (None when it could not run).
        deterministic: False when two evaluations at the same parameters differed.
        unchecked: parameters the critic uses that the check could not reach on a copy.
        notes: anything else worth knowing (precision, copies, fallbacks).
        eps: the relative finite-difference step.
        rtol: the tolerance on the relative error.
        directions: random directions per parameter group.
        seed: the seed of every random draw of the check.
    """

    ok: bool
    framework: str
    dtype: str
    penalties: tuple[PenaltyCheck, ...]
    groups: tuple[str, ...]
    coupling: CouplingCheck | None
    deterministic: bool = True
    unchecked: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    eps: float = 0.0
    rtol: float = 0.0
    directions: int = 0
    seed: int = 0

    @property
    def errors(self) -> dict[str, dict[str, float]]:
        """``{penalty: {group: relative error}}`` (NaN where nothing was compared)."""
        return {p.penalty: {g.group: g.rel_error for g in p.groups} for p in self.penalties}

    @property
    def nonfinite(self) -> list[str]:
        """``"penalty"`` or ``"penalty: group"`` for every non-finite value or gradient."""
        out = []
        for p in self.penalties:
            if not math.isfinite(p.value) and p.status != "error":
                out.append(p.penalty)
            out.extend(f"{p.penalty}: {g.group}" for g in p.groups if g.status == "nonfinite")
        return out

    def failures(self) -> list[str]:
        """One line per problem found (empty when ``ok``)."""
        out = []
        by_error: dict[str, list[str]] = {}
        for p in self.penalties:
            if p.status == "error":
                by_error.setdefault(p.error, []).append(p.penalty)
        out.extend(f"{', '.join(names)}: the parameter gradient could not be computed: {err}"
                   for err, names in by_error.items())
        out.extend(f"{p.penalty}: the penalty value is {p.value} at the check points"
                   for p in self.penalties if p.status != "error" and not math.isfinite(p.value))
        for status, what in (("mismatch", "disagrees with finite differences"),
                             ("nonfinite", "is not finite"),
                             ("inconclusive", "stayed inconclusive")):
            for name in self.groups:
                hits = [(p.penalty, g) for p in self.penalties for g in p.groups
                        if g.group == name and g.status == status]
                if not hits:
                    continue
                pens = ", ".join(pen for pen, _ in hits)
                if status == "mismatch":
                    pen, worst = max(hits, key=lambda h: h[1].rel_error)
                    out.append(f"{name}: the penalty gradient {what} (relative error up to "
                               f"{worst.rel_error:.1e}, in {pen}; rtol {self.rtol:.0e}) for "
                               f"{pens}")
                elif status == "nonfinite":
                    out.append(f"{name}: the penalty gradient {what} for {pens}")
                else:
                    out.append(f"{name}: the finite differences {what} for {pens}: every step "
                               f"crossed a kink (ReLU, max); rerun with another seed or a "
                               f"smaller eps")
        if any(g.status == "mismatch" for p in self.penalties for g in p.groups):
            out.append("a gradient that is wrong for some parameters and right for the ones "
                       "after them points at a layer that is right to first order only (a "
                       "stop_gradient in its statistics, a custom gradient, a fused kernel) "
                       "between them: see the double-backprop pitfalls in gpreg's docs")
        if self.coupling is not None and self.coupling.coupled:
            i, j = self.coupling.pair
            out.append(
                f"sample coupling: moving sample {j}'s input moved sample {i}'s output "
                f"({self.coupling.ratio:.2g} times as much as sample {j}'s own): the critic "
                f"mixes the samples of a batch (BatchNorm in training mode, batch statistics, "
                f"attention across the batch), so per-sample gradient norms are not what the "
                f"penalty means. Use LayerNorm, GroupNorm or no normalization in the critic, "
                f"or evaluate it in inference mode for the penalty."
            )
        if not self.deterministic:
            out.append(
                "the critic gave two different outputs for the same parameters and inputs "
                "(random layers such as dropout, or state updated during the forward pass): "
                "finite differences are meaningless; check it in inference mode "
                "(training=False)"
            )
        if self.unchecked:
            out.append("parameters used by the critic that the check could not copy (not "
                       "checked): " + ", ".join(self.unchecked))
        return out

    def summary(self) -> str:
        """A readable account: the verdict, the table of errors, coupling, notes."""
        head = "check_critic: OK" if self.ok else "check_critic: FAILED"
        lines = [
            head,
            f"  {self.framework}, {self.dtype} copy of the critic; {self.directions} random "
            f"direction(s) per parameter group, step {self.eps:.0e} x rms(group), "
            f"rtol {self.rtol:.0e}, seed {self.seed}",
        ]
        lines.extend("  " + line for line in _table(self))
        fails = self.failures()
        if fails:
            lines.append("  problems:")
            lines.extend(f"    - {f}" for f in fails)
        if self.coupling is None:
            lines.append("  sample coupling: not tested")
        elif not self.coupling.coupled:
            lines.append(f"  sample coupling: none (largest cross-sample response "
                         f"{self.coupling.ratio:.1e})")
        zero = [p.penalty for p in self.penalties if p.status == "ok" and p.value == 0.0]
        if zero:
            lines.append(f"  note: {', '.join(zero)} is zero at the check points (and so is "
                         f"its gradient): the comparison there is trivial")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _fmt_err(g: GroupCheck, rtol: float) -> str:
    if g.status == "nonfinite":
        return "nonfinite"
    if g.status == "inconclusive" or math.isnan(g.rel_error):
        return "?"
    return f"{g.rel_error:.1e}" + ("!" if g.rel_error > rtol else "")


def _table(report: CheckReport) -> list[str]:
    pens = [p for p in report.penalties if p.groups]
    if not report.groups:
        return ["no parameter groups found: nothing to compare"]
    if not pens:
        return []
    shapes = {g.group: g.shape for p in pens for g in p.groups}
    names = list(report.groups)
    w0 = max(12, *(len(n) for n in names))
    w1 = max(7, *(len(str(s)) for s in shapes.values()))
    widths = [max(9, len(p.penalty)) for p in pens]
    out = ["max relative error per parameter group ('!' above rtol, '?' inconclusive):"]
    out.append("  " + "group".ljust(w0) + "  " + "shape".ljust(w1) + "".join(
        "  " + p.penalty.rjust(w) for p, w in zip(pens, widths)))
    for name in names:
        cells = []
        for p, w in zip(pens, widths):
            g = next((g for g in p.groups if g.group == name), None)
            cells.append("  " + ("-" if g is None else _fmt_err(g, report.rtol)).rjust(w))
        out.append("  " + name.ljust(w0) + "  " + str(shapes.get(name, "")).ljust(w1)
                   + "".join(cells))
    return out


# --- arguments -------------------------------------------------------------------------------

def resolve_penalties(where: str, penalties: Any, has_fake: bool) -> list[PenaltySpec]:
    """The specs to check: the given names, or every built-in that the data allow."""
    if penalties is None:
        specs = [get_spec(n) for n in BUILTIN_NAMES]
        return [s for s in specs if has_fake or s.points in ("real", "perturbed_real")]
    names = [penalties] if isinstance(penalties, str) else list(penalties)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{where}: penalties must be None, a penalty name or a list of names "
                        f"such as ['wgan_gp', 'r1']; got {penalties!r}.")
    specs = [get_spec(n) for n in names]
    for s in specs:
        if s.points in ("interpolates", "fake") and not has_fake:
            raise ValueError(f"{where}: {s.name} is evaluated at {s.points} and needs fake "
                             f"samples; pass fake= (a batch shaped like real).")
    return specs


def settings(where: str, dtype: str, directions: Any, eps: Any,
             rtol: Any) -> tuple[int, float, float]:
    """Validated ``(directions, eps, rtol)`` with the dtype's defaults filled in."""
    if isinstance(directions, bool) or not isinstance(directions, (int, np.integer)) or (
            directions < 1):
        raise ValueError(f"{where}: directions must be a positive int (random directions per "
                         f"parameter group); got {directions!r}.")
    d = DEFAULTS["float64" if dtype == "float64" else "float32"]
    out = []
    for name, value in (("eps", eps), ("rtol", rtol)):
        if value is None:
            out.append(d[name])
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
                math.isfinite(float(value)) and 0 < float(value) < 1):
            raise ValueError(f"{where}: {name} must be a number between 0 and 1 (or None for "
                             f"the default, {d[name]:g} in {dtype}); got {value!r}.")
        out.append(float(value))
    return int(directions), out[0], out[1]


def streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for the points (alpha, noise), the directions and coupling."""
    a, b, c = np.random.SeedSequence(int(seed)).spawn(3)
    return np.random.default_rng(a), np.random.default_rng(b), np.random.default_rng(c)


def draws(rng: np.random.Generator, shapes: Sequence[tuple[int, ...]]) -> tuple[
        np.ndarray, tuple[np.ndarray, ...]]:
    """Fixed ``alpha`` (B,) and DRAGAN ``noise`` (one array per part), both U[0, 1)."""
    alpha = rng.uniform(0.0, 1.0, size=(int(shapes[0][0]),))
    noise = tuple(rng.uniform(0.0, 1.0, size=tuple(s)) for s in shapes)
    return alpha, noise


def perturbation(rng: np.random.Generator, parts: Sequence[np.ndarray], j: int,
                 dtype: str) -> tuple[np.ndarray, ...]:
    """The parts with sample ``j`` (only) moved by a small random step."""
    rel = 1e-3 if dtype == "float64" else 3e-2
    out = []
    for p in parts:
        q = np.array(p, dtype=np.float64, copy=True)
        scale = float(np.sqrt(np.mean(q * q))) or 1.0
        q[j] = q[j] + rel * scale * rng.standard_normal(q[j].shape)
        out.append(q)
    return tuple(out)


def coupled_samples(batch: int) -> tuple[int, ...]:
    """The samples whose input the coupling test moves."""
    return (0,) if batch < 3 else (0, batch - 1)


# --- the comparison --------------------------------------------------------------------------

def _eps_of(dtype: str) -> float:
    return float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)


def compare(
    penalties: Sequence[str],
    groups: Sequence[tuple[str, np.ndarray]],
    values: Callable[[int | None, np.ndarray | None], np.ndarray],
    base: np.ndarray,
    grads: Sequence[Sequence[np.ndarray] | str],
    *,
    dtype: str,
    directions: int,
    eps: float,
    rtol: float,
    rng: np.random.Generator,
) -> tuple[tuple[PenaltyCheck, ...], bool]:
    """Compare autodiff with finite differences, penalty by penalty and group by group.

    Args:
        penalties: the penalty names, in the order of ``values``'s output.
        groups: ``(name, base value)`` per parameter group (any float dtype).
        values: ``values(k, theta)`` gives the penalty values (shape (P,), NaN for a penalty
            that failed) with group ``k`` set to ``theta`` and every other group at its base
            value; ``values(None, None)`` evaluates at the base.
        base: the penalty values at the base parameters (P,).
        grads: per penalty, gpreg's gradient for each group (arrays shaped like the groups),
            or the error message when double backprop failed.
        dtype: the dtype the adapter computed in (sets the rounding-noise estimate).
        directions, eps, rtol: see ``check_critic``.
        rng: the generator of the directions.

    Returns:
        ``(results, deterministic)``.
    """
    n_pen = len(penalties)
    ulp = _eps_of(dtype)
    again = np.asarray(values(None, None), dtype=np.float64)
    first = np.asarray(values(None, None), dtype=np.float64)
    finite = np.isfinite(first) & np.isfinite(again)
    spread = np.abs(first - again)[finite]
    scale = np.abs(first)[finite]
    deterministic = bool(np.all(spread <= 8 * ulp * scale))

    per_pen: list[list[GroupCheck]] = [[] for _ in range(n_pen)]
    for k, (gname, theta0) in enumerate(groups):
        theta = np.asarray(theta0, dtype=np.float64)
        shape = tuple(int(s) for s in theta.shape)
        rms = float(np.sqrt(np.mean(theta * theta))) if theta.size else 0.0
        h0 = eps * (rms if rms > 0 else 1.0)
        g_k: list[np.ndarray | None] = []
        for p in range(n_pen):
            gp = grads[p]
            g_k.append(None if isinstance(gp, str) else np.asarray(gp[k], dtype=np.float64))
        ad_all = [[] for _ in range(n_pen)]
        fd_all = [[] for _ in range(n_pen)]
        err_all: list[list[float]] = [[] for _ in range(n_pen)]
        for _ in range(directions):
            d = rng.standard_normal(shape)
            pending = [p for p in range(n_pen) if g_k[p] is not None
                       and np.all(np.isfinite(g_k[p])) and math.isfinite(base[p])]
            ad = {p: float(np.sum(g_k[p] * d)) for p in pending}
            h = h0
            for attempt in range(_ROUGH_RETRIES + 1):
                f = [np.asarray(values(k, (theta + c * h * d).astype(theta0.dtype)),
                                dtype=np.float64) for c in (1.0, -1.0, 0.5, -0.5)]
                still = []
                for p in pending:
                    fp = [float(x[p]) for x in f]
                    if not all(math.isfinite(x) for x in fp):
                        still.append(p)
                        continue
                    d1 = (fp[0] - fp[1]) / (2 * h)
                    d2 = (fp[2] - fp[3]) / h
                    rich = (4 * d2 - d1) / 3
                    noise = _NOISE_ULPS * ulp * max(abs(x) for x in fp) / h
                    gnorm = float(np.sqrt(np.sum(g_k[p] * g_k[p])))
                    ref = max(abs(ad[p]), abs(rich), gnorm, noise / rtol)
                    rough = abs(d1 - d2) / ref if ref > 0 else 0.0
                    if rough > math.sqrt(rtol) and attempt < _ROUGH_RETRIES:
                        still.append(p)
                        continue
                    ad_all[p].append(ad[p])
                    if rough > math.sqrt(rtol):
                        fd_all[p].append(float("nan"))
                        continue
                    fd_all[p].append(rich)
                    err_all[p].append(abs(ad[p] - rich) / ref if ref > 0 else 0.0)
                pending = still
                if not pending:
                    break
                h /= 8.0
            for p in pending:  # non-finite values at every step size
                ad_all[p].append(ad[p])
                fd_all[p].append(float("nan"))
        for p in range(n_pen):
            if g_k[p] is None:
                continue
            if not np.all(np.isfinite(g_k[p])):
                status, err = "nonfinite", float("nan")
            elif not err_all[p]:
                status, err = "inconclusive", float("nan")
            else:
                err = max(err_all[p])
                status = "mismatch" if err > rtol else "ok"
            per_pen[p].append(GroupCheck(gname, shape, err, status, tuple(ad_all[p]),
                                         tuple(fd_all[p])))
    results = []
    for p, name in enumerate(penalties):
        if isinstance(grads[p], str):
            results.append(PenaltyCheck(name, float(base[p]), "error", (), str(grads[p])))
            continue
        gs = tuple(per_pen[p])
        status = "ok"
        for s in ("nonfinite", "mismatch", "inconclusive"):
            if any(g.status == s for g in gs):
                status = s
                break
        if not math.isfinite(float(base[p])):
            status = "nonfinite"
        results.append(PenaltyCheck(name, float(base[p]), status, gs))
    return tuple(results), deterministic


def coupling(base: np.ndarray, moved: Sequence[tuple[int, np.ndarray]], dtype: str,
             rtol: float) -> CouplingCheck:
    """Coupling from the per-sample outputs at the points and with sample ``j`` moved."""
    base = np.asarray(base, dtype=np.float64).reshape(-1)
    if base.size < 2 or not moved:
        return CouplingCheck(False, 0.0, (-1, -1), ())
    ulp = _eps_of(dtype)
    noise = 16 * ulp * float(np.max(np.abs(base)))
    ratio, pair, coupled = 0.0, (-1, -1), False
    for j, out in moved:
        delta = np.abs(np.asarray(out, dtype=np.float64).reshape(-1) - base)
        own = float(delta[j])
        others = np.delete(delta, j)
        idx = np.delete(np.arange(base.size), j)
        i = int(idx[int(np.argmax(others))])
        worst = float(np.max(others))
        r = worst / own if own > 0 else (float("inf") if worst > noise else 0.0)
        if r > ratio or pair == (-1, -1):
            ratio, pair = r, (i, j)
        if worst > rtol * own + noise:
            coupled = True
    return CouplingCheck(coupled, ratio, pair, tuple(j for j, _ in moved))


# --- error messages with their known causes --------------------------------------------------

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


def report(*, framework: str, dtype: str, penalties: Sequence[PenaltyCheck],
           groups: Sequence[str], coupling_check: CouplingCheck | None, deterministic: bool,
           unchecked: Sequence[str], notes: Sequence[str], eps: float, rtol: float,
           directions: int, seed: int) -> CheckReport:
    """Assemble a :class:`CheckReport` and its verdict."""
    ok = (all(p.status == "ok" for p in penalties)
          and all(math.isfinite(p.value) for p in penalties)
          and not (coupling_check is not None and coupling_check.coupled)
          and deterministic and not unchecked)
    return CheckReport(ok=bool(ok), framework=framework, dtype=dtype, penalties=tuple(penalties),
                       groups=tuple(groups), coupling=coupling_check,
                       deterministic=deterministic, unchecked=tuple(unchecked),
                       notes=tuple(notes), eps=eps, rtol=rtol, directions=directions,
                       seed=int(seed))


# --- copying a plain-function critic ---------------------------------------------------------

_LIBRARIES = ("torch", "tensorflow", "keras", "jax", "jaxlib", "numpy", "tf_keras", "functools",
              "builtins", "flax", "optax", "array_api_compat", "scipy")
_KEEP = object()


def _library(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".", 1)[0] in _LIBRARIES


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


class Rebinder:
    """Copy a critic callable, replacing every object that ``copier`` copies by its copy.

    ``copier(obj, path)`` returns the copy of a framework object (a module, a model, a
    parameter) or ``None`` to leave it alone. The rebinder looks through closures, the globals
    a function reads, default arguments, ``functools.partial``, bound methods, containers and
    the attributes of callable objects, and builds new functions around the copies; the
    original callable and everything it refers to are left untouched. ``found`` lists the
    paths (``"D"``, ``"self.net"``) of what was copied.
    """

    def __init__(self, copier: Callable[[Any, str], Any], max_depth: int = 6) -> None:
        self.copier = copier
        self.max_depth = max_depth
        self.memo: dict[int, Any] = {}
        self.found: list[str] = []

    def __call__(self, obj: Any) -> Any:
        return self._walk(obj, "", 0)

    def _walk(self, obj: Any, path: str, depth: int) -> Any:
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if obj is None or isinstance(obj, (str, bytes, int, float, complex, bool, type,
                                           types.ModuleType)):
            return obj
        made = self.copier(obj, path)
        if made is not None:
            self.memo[key] = made
            self.found.append(path)
            return made
        if depth >= self.max_depth:
            return obj
        self.memo[key] = obj  # cycles resolve to the original
        new = self._rebuild(obj, path, depth)
        self.memo[key] = new
        return new

    def _join(self, path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def _rebuild(self, obj: Any, path: str, depth: int) -> Any:
        walk = self._walk
        if isinstance(obj, functools.partial):
            func = walk(obj.func, path, depth + 1)
            args = [walk(a, self._join(path, f"args[{i}]"), depth + 1)
                    for i, a in enumerate(obj.args)]
            kws = {k: walk(v, self._join(path, k), depth + 1) for k, v in obj.keywords.items()}
            if func is obj.func and all(a is b for a, b in zip(args, obj.args)) and all(
                    kws[k] is obj.keywords[k] for k in kws):
                return obj
            return functools.partial(func, *args, **kws)
        if isinstance(obj, types.MethodType):
            owner = walk(obj.__self__, path or "self", depth + 1)
            return obj if owner is obj.__self__ else types.MethodType(obj.__func__, owner)
        if isinstance(obj, types.FunctionType):
            return self._function(obj, path, depth)
        if isinstance(obj, (list, tuple)):
            items = [walk(v, self._join(path, f"[{i}]"), depth + 1) for i, v in enumerate(obj)]
            if all(a is b for a, b in zip(items, obj)):
                return obj
            if isinstance(obj, list):
                return items
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        if isinstance(obj, dict):
            vals = {k: walk(v, self._join(path, str(k)), depth + 1) for k, v in obj.items()}
            if all(vals[k] is obj[k] for k in obj):
                return obj
            return type(obj)(vals) if type(obj) is dict else vals
        if callable(obj) and hasattr(obj, "__dict__") and not _library(type(obj)):
            attrs = vars(obj)
            vals = {k: walk(v, self._join(path, k), depth + 1) for k, v in attrs.items()}
            changed = {k: v for k, v in vals.items() if v is not attrs[k]}
            if not changed:
                return obj
            twin = copy.copy(obj)
            twin.__dict__.update(changed)
            return twin
        return obj

    def _function(self, fn: types.FunctionType, path: str, depth: int) -> Any:
        if _library(fn):
            return fn
        code = fn.__code__
        walk = self._walk
        changed = False
        cells = []
        for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                cells.append(cell)
                continue
            new = walk(value, name if not path else self._join(path, name), depth + 1)
            changed |= new is not value
            cells.append(cell if new is value else types.CellType(new))
        glb = fn.__globals__
        replaced = {}
        for name in sorted(_global_names(code)):
            if name in glb and not isinstance(glb[name], (types.ModuleType, type)):
                value = glb[name]
                new = walk(value, name, depth + 1)
                if new is not value:
                    replaced[name] = new
        defaults = None
        if fn.__defaults__:
            defaults = tuple(walk(v, self._join(path, f"<default {i}>"), depth + 1)
                             for i, v in enumerate(fn.__defaults__))
            changed |= any(a is not b for a, b in zip(defaults, fn.__defaults__))
        kwdefaults = None
        if fn.__kwdefaults__:
            kwdefaults = {k: walk(v, self._join(path, k), depth + 1)
                          for k, v in fn.__kwdefaults__.items()}
            changed |= any(kwdefaults[k] is not fn.__kwdefaults__[k] for k in kwdefaults)
        if not changed and not replaced:
            return fn
        new_globals = {**glb, **replaced} if replaced else glb
        twin = types.FunctionType(code, new_globals, fn.__name__, defaults, tuple(cells) or None)
        twin.__kwdefaults__ = kwdefaults
        twin.__qualname__ = fn.__qualname__
        twin.__dict__.update(fn.__dict__)
        return twin
