"""What ``check_critic`` found: the report, its table and its text (see :mod:`gpreg._check`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Statuses of one penalty × parameter group, and of a penalty.
STATUSES = ("ok", "mismatch", "nonfinite", "inconclusive", "error")


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
