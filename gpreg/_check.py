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
copy the critic (the user's model is never run nor changed) and evaluate the penalty at given
parameter values; everything else lives here, in NumPy: the random draws, the finite
differences, the comparison, the sample-coupling test, the report and its text.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpreg import _validation as v
from gpreg._report import CheckReport, CouplingCheck, GroupCheck, PenaltyCheck
from gpreg._specs import BUILTIN_NAMES, PenaltySpec, get_spec

#: Default step (relative to the parameters' root mean square) and tolerance per dtype.
DEFAULTS: dict[str, dict[str, float]] = {
    "float64": {"eps": 1e-4, "rtol": 1e-6},
    "float32": {"eps": 3e-3, "rtol": 5e-3},
}

_ROUGH_RETRIES = 2  # step / 8 at most twice when the two step sizes disagree
_NOISE_ULPS = 64.0  # rounding noise of one penalty value, in units of the dtype's epsilon


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


# --- the comparison --------------------------------------------------------------------------

def _eps_of(dtype: str) -> float:
    return float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)


def _directional(values: Callable[..., np.ndarray], k: int, theta: np.ndarray, dtype: Any,
                 d: np.ndarray, h: float, g: dict[int, np.ndarray], ulp: float,
                 rtol: float) -> dict[int, tuple[float, float, float | None]]:
    """``{penalty: (autodiff, finite difference, relative error)}`` along ``d`` in group ``k``
    (NaN and ``None`` where every step stayed rough or non-finite)."""
    ad = {p: float(np.sum(gp * d)) for p, gp in g.items()}
    out: dict[int, tuple[float, float, float | None]] = {}
    pending = list(g)
    for attempt in range(_ROUGH_RETRIES + 1):
        f = [np.asarray(values(k, (theta + c * h * d).astype(dtype)), dtype=np.float64)
             for c in (1.0, -1.0, 0.5, -0.5)]
        still = []
        for p in pending:
            fp = [float(x[p]) for x in f]
            if not all(math.isfinite(x) for x in fp):
                still.append(p)
                continue
            d1, d2 = (fp[0] - fp[1]) / (2 * h), (fp[2] - fp[3]) / h
            rich = (4 * d2 - d1) / 3
            noise = _NOISE_ULPS * ulp * max(abs(x) for x in fp) / h
            ref = max(abs(ad[p]), abs(rich), float(np.sqrt(np.sum(g[p] * g[p]))), noise / rtol)
            rough = abs(d1 - d2) / ref if ref > 0 else 0.0
            if rough <= math.sqrt(rtol):
                out[p] = (ad[p], rich, abs(ad[p] - rich) / ref if ref > 0 else 0.0)
            elif attempt < _ROUGH_RETRIES:
                still.append(p)
            else:
                out[p] = (ad[p], float("nan"), None)
        pending, h = still, h / 8.0
        if not pending:
            break
    out.update({p: (ad[p], float("nan"), None) for p in pending})  # non-finite at every step
    return out


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
    ulp = _eps_of(dtype)
    first, again = (np.asarray(values(None, None), dtype=np.float64) for _ in range(2))
    fin = np.isfinite(first) & np.isfinite(again)
    deterministic = bool(np.all(np.abs(first - again)[fin] <= 8 * ulp * np.abs(first)[fin]))
    per_pen: list[list[GroupCheck]] = [[] for _ in penalties]
    for k, (gname, theta0) in enumerate(groups):
        theta = np.asarray(theta0, dtype=np.float64)
        shape = tuple(int(s) for s in theta.shape)
        h = eps * ((float(np.sqrt(np.mean(theta * theta))) if theta.size else 0.0) or 1.0)
        g = {p: np.asarray(gp[k], dtype=np.float64) for p, gp in enumerate(grads)
             if not isinstance(gp, str)}
        live = {p: gp for p, gp in g.items() if np.all(np.isfinite(gp))
                and math.isfinite(base[p])}
        found: dict[int, list[tuple[float, float, float | None]]] = {p: [] for p in g}
        for _ in range(directions):
            d = rng.standard_normal(shape)
            for p, r in _directional(values, k, theta, theta0.dtype, d, h, live, ulp,
                                     rtol).items():
                found[p].append(r)
        for p, rs in found.items():
            errs = [e for _, _, e in rs if e is not None]
            err = max(errs) if errs else float("nan")
            status = ("nonfinite" if p not in live and not np.all(np.isfinite(g[p])) else
                      "inconclusive" if not errs else "mismatch" if err > rtol else "ok")
            per_pen[p].append(GroupCheck(gname, shape, err if status != "nonfinite" else
                                         float("nan"), status, tuple(a for a, _, _ in rs),
                                         tuple(f for _, f, _ in rs)))
    results = []
    for p, name in enumerate(penalties):
        if isinstance(grads[p], str):
            results.append(PenaltyCheck(name, float(base[p]), "error", (), str(grads[p])))
            continue
        gs = tuple(per_pen[p])
        status = next((s for s in ("nonfinite", "mismatch", "inconclusive")
                       if any(g.status == s for g in gs)), "ok")
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


@dataclass(frozen=True)
class Points:
    """The check's data: ``real`` and ``fake`` parts, a fixed ``alpha`` and DRAGAN ``noise``
    (float64 NumPy arrays in the core; an adapter maps them to its tensors)."""

    real: tuple[Any, ...]
    fake: tuple[Any, ...] | None
    alpha: Any
    noise: tuple[Any, ...]

    def map(self, fn: Callable[[Any], Any]) -> Points:
        """The same points with ``fn`` applied to every array."""
        return Points(tuple(map(fn, self.real)),
                      None if self.fake is None else tuple(map(fn, self.fake)),
                      fn(self.alpha), tuple(map(fn, self.noise)))

    def penalty_args(self, spec: PenaltySpec) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The data arguments and the ``alpha``/``noise`` keywords of ``spec``'s penalty."""
        real, fake, noise = (p[0] if p and len(p) == 1 else p
                             for p in (self.real, self.fake, self.noise))
        if spec.points == "interpolates":
            return (real, fake), {"alpha": self.alpha}
        if spec.points == "perturbed_real":
            return (real,), {"alpha": self.alpha, "noise": noise}
        return (fake if spec.points == "fake" else real,), {}


def check_dtype(where: str, dtype: Any) -> None:
    """``dtype`` is ``None``, ``"float64"`` or ``"float32"``."""
    if dtype not in (None, "float64", "float32"):
        raise ValueError(f"{where}: dtype must be None, 'float64' or 'float32'; got {dtype!r}. "
                         f"Finite differences need at least float32.")


def run(where: str, framework: str, make: Callable[[str, list[PenaltySpec], Points], Any],
        dtypes: Sequence[str], real: Sequence[np.ndarray], fake: Sequence[np.ndarray] | None,
        *, penalties: Any, directions: Any, eps: Any, rtol: Any, seed: int) -> CheckReport:
    """The whole check, for an adapter's ``make(dtype, specs, points)``.

    ``make`` copies the critic in ``dtype`` and returns a target with ``dtype`` (the one it
    computes in), ``groups`` (``(name, value)`` per parameter group), ``values`` and
    ``gradients`` (see :func:`compare`), ``outputs(parts)`` (the per-sample summed scores at
    float64 NumPy ``parts``), ``notes`` and ``unchecked``. It may raise: the next of
    ``dtypes`` is tried, and if none works the first error is raised (as the penalties do).
    """
    if fake is not None:
        v.check_same_shapes(where, [a.shape for a in real], [a.shape for a in fake])
    specs = resolve_penalties(where, penalties, fake is not None)
    settings(where, dtypes[0], directions, eps, rtol)  # bad values fail before any work
    r_pts, d_rng, c_rng = streams(seed)
    alpha = r_pts.uniform(0.0, 1.0, size=(real[0].shape[0],))  # fixed alpha and DRAGAN noise
    noise = tuple(r_pts.uniform(0.0, 1.0, size=a.shape) for a in real)
    pts = Points(tuple(real), None if fake is None else tuple(fake), alpha, noise)
    first: BaseException | None = None
    for dt in dtypes:
        try:
            target = make(dt, specs, pts)
            base_out = target.outputs(pts.real)
            break
        except Exception as exc:
            first = first or exc
    else:
        assert first is not None
        raise v.critic_failed(where, [a.shape for a in real], first)
    dtype, notes = target.dtype, list(target.notes)
    if first is not None:
        notes.insert(0, f"the critic failed in {dtypes[0]} ({v.explain(first)}), so the check ran "
                        f"in {dtype} with looser eps and rtol")
    directions, eps, rtol = settings(where, dtype, directions, eps, rtol)
    base, grads = target.gradients()
    results, deterministic = compare(
        [s.name for s in specs], target.groups, target.values, base, grads, dtype=dtype,
        directions=directions, eps=eps, rtol=rtol, rng=d_rng)
    coupled = None
    if len(base_out) >= 2:
        moved = [(j, target.outputs(perturbation(c_rng, pts.real, j, dtype)))
                 for j in ((0,) if len(base_out) < 3 else (0, len(base_out) - 1))]
        coupled = coupling(base_out, moved, dtype, rtol)
    else:
        notes.append("one sample: sample coupling was not tested (pass at least 2)")
    if not target.groups and not target.unchecked:
        notes.append("the critic has no trainable parameters: only coupling and finite values "
                     "were checked")
    ok = (all(p.status == "ok" and math.isfinite(p.value) for p in results)
          and not (coupled is not None and coupled.coupled)
          and deterministic and not target.unchecked)
    return CheckReport(ok=bool(ok), framework=framework, dtype=dtype, penalties=results,
                       groups=tuple(n for n, _ in target.groups), coupling=coupled,
                       deterministic=deterministic, unchecked=tuple(target.unchecked),
                       notes=tuple(notes), eps=eps, rtol=rtol, directions=directions,
                       seed=int(seed))
