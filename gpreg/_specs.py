"""One ``PenaltySpec`` per penalty variant, and the registry that finds them by name.

A spec says where the penalty is evaluated, which function of the per-sample gradient norm it
applies, how it is weighted by default and which paper it comes from. Adapters turn a spec into
a framework function; nothing about a variant is written twice.

Third-party packages add penalties through the entry-point group ``gpreg.penalties``: each
entry point names a ``PenaltySpec`` (or a zero-argument callable returning one).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gpreg import _math
from gpreg._validation import check_choice, check_power

ENTRY_POINT_GROUP = "gpreg.penalties"

Points = Literal["interpolates", "real", "fake", "perturbed_real", "real_fake"]
POINTS: tuple[str, ...] = ("interpolates", "real", "fake", "perturbed_real", "real_fake")


@dataclass(frozen=True)
class Shape:
    """A function of the per-sample gradient norm: ``fn(norms, *, target, ratio, xp, **params)``.

    Call the shape itself, ``shape(norms, target=..., ratio=..., xp=...)``: it passes its own
    ``params`` on to ``fn``.

    Attributes:
        name: registry key, e.g. ``"two_sided"``.
        fn: the formula, written against an array namespace ``xp``.
        uses_target: whether ``target`` and ``ratio`` mean anything for this shape.
        math: the formula in LaTeX, for docs and tables.
        params: the shape's own numeric parameters and their current values, as
            ``(name, value)`` pairs, e.g. ``(("p", 6.0),)`` for ``"power"``; change them with
            :meth:`with_params`.
        check: optional ``check(where, name, value) -> float`` that validates one parameter.
        of_squares: optional, the same formula as a function of the per-sample sum of
            squares :math:`s = n^2` (``of_squares(s, *, target, ratio, xp, **params)``), for a
            shape that needs no square root; the adapters then skip the norm
            (:meth:`from_squares`).
    """

    name: str
    fn: Callable[..., Any]
    uses_target: bool
    math: str
    params: tuple[tuple[str, float], ...] = ()
    check: Callable[[str, str, Any], float] | None = field(default=None, compare=False)
    of_squares: Callable[..., Any] | None = field(default=None, compare=False)

    def __call__(self, norms: Any, *, target: float, ratio: bool, xp: Any) -> Any:
        return self.fn(norms, target=target, ratio=ratio, xp=xp, **dict(self.params))

    def from_squares(self, sq_sums: Any, *, target: float, ratio: bool, xp: Any) -> Any:
        """The shape's values from the per-sample sums of squares (only where
        ``of_squares`` is set)."""
        return self.of_squares(sq_sums, target=target, ratio=ratio, xp=xp, **dict(self.params))

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.params)

    def with_params(self, where: str = "gpreg.Shape.with_params", /, **params: Any) -> Shape:
        """A copy with some parameters changed, e.g. ``SHAPES["power"].with_params(p=3.0)``.

        Raises:
            TypeError: a parameter the shape does not have.
            ValueError: a value its ``check`` rejects.
        """
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            known = ", ".join(self.param_names) or "none"
            raise TypeError(
                f"{where}: shape {self.name!r} has no parameter(s) {', '.join(unknown)}; its "
                f"parameters: {known}."
            )
        values = dict(self.params)
        for name, value in params.items():
            values[name] = self.check(where, name, value) if self.check else float(value)
        return replace(self, params=tuple(values.items()))


def _check_power(where: str, name: str, value: Any) -> float:
    return check_power(where, value)


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("two_sided", _math.two_sided, True, r"(\|g\| - t)^2"),
        Shape("one_sided", _math.one_sided, True, r"\max(0, \|g\| - t)^2"),
        Shape("squared", _math.squared, False, r"\|g\|^2", of_squares=_math.squared_of_squares),
        Shape("power", _math.power, False, r"\|g\|^p", params=(("p", 6.0),),
              check=_check_power),
    )
}


def resolve_shape(where: str, shape: str | Shape) -> Shape:
    """A :class:`Shape`, or the name of a built-in one, as a :class:`Shape`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: neither a name nor a :class:`Shape`.
    """
    if isinstance(shape, Shape):
        return shape
    if not isinstance(shape, str):
        raise TypeError(
            f"{where}: shape must be a name ({', '.join(sorted(SHAPES))}) or a gpreg.Shape; got "
            f"{type(shape).__name__}."
        )
    if shape not in SHAPES:
        raise ValueError(
            f"{where}: unknown shape {shape!r}; expected one of {', '.join(sorted(SHAPES))}."
        )
    return SHAPES[shape]


@dataclass(frozen=True)
class PenaltySpec:
    """Everything that defines one gradient penalty, independent of any framework.

    The per-sample penalty is ``weight_factor * weight * shape(n_i)``; the batch value is
    ``reduce(per_sample, default_reduction)`` unless the caller picks another reduction. At
    ``"real_fake"`` points the per-sample term is the mean of the shape at the real and at the
    fake sample, ``(shape(n(x_i)) + shape(n(x~_i))) / 2``.

    Attributes:
        name: the public name (``gpreg_torch.<name>``, registry key).
        points: where the critic is evaluated by default: ``"interpolates"`` (between real
            and fake), ``"real"``, ``"fake"``, ``"perturbed_real"`` (DRAGAN) or
            ``"real_fake"`` (the real and the fake samples, both).
        shape: key of :data:`SHAPES` (or a :class:`Shape`, e.g. with its parameters set:
            ``SHAPES["power"].with_params(p=6.0)``); the shape's parameters are keywords of
            the public function.
        weight_name: the keyword that carries the weight (``"weight"``, ``"gamma"``, ``"k"``).
        default_weight: the customary default of that keyword.
        weight_factor: constant factor on the weight (1/2 for R1/R2's gamma/2).
        default_target: default gradient-norm target (for shapes that use one).
        default_reduction: ``"mean"`` for most; ``"max"`` for max-GP.
        title: human-readable name.
        paper: short citation.
        arxiv: arXiv identifier of the paper.
        point_options: the values the public function's ``points=`` keyword accepts, the
            default (``points``) first; empty when the points are fixed.
    """

    name: str
    points: str
    shape: str | Shape
    weight_name: str = "weight"
    default_weight: float = 10.0
    weight_factor: float = 1.0
    default_target: float = 1.0
    default_reduction: str = "mean"
    title: str = ""
    paper: str = ""
    arxiv: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    point_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"PenaltySpec name must be a Python identifier; got {self.name!r}")
        if self.points not in POINTS:
            raise ValueError(
                f"PenaltySpec {self.name!r}: points must be one of {', '.join(POINTS)}; "
                f"got {self.points!r}"
            )
        bad = [p for p in self.point_options if p not in POINTS]
        if bad or (self.point_options and self.point_options[0] != self.points):
            raise ValueError(
                f"PenaltySpec {self.name!r}: point_options must list values of "
                f"{', '.join(POINTS)}, starting with points={self.points!r}; got "
                f"{self.point_options!r}"
            )
        if isinstance(self.shape, str) and self.shape not in SHAPES:
            raise ValueError(
                f"PenaltySpec {self.name!r}: unknown shape {self.shape!r}; expected one of "
                f"{', '.join(sorted(SHAPES))} or a gpreg.Shape"
            )

    @property
    def shape_obj(self) -> Shape:
        """The resolved :class:`Shape`."""
        return SHAPES[self.shape] if isinstance(self.shape, str) else self.shape

    @property
    def uses_target(self) -> bool:
        return self.shape_obj.uses_target

    @property
    def shape_params(self) -> dict[str, float]:
        """The shape's parameters and their defaults (``{"p": 6.0}`` for WGAN-div)."""
        return dict(self.shape_obj.params)


def choose_points(where: str, spec: PenaltySpec, points: str | None) -> str:
    """The points ``spec`` is evaluated at: its default, or ``points`` from its
    ``point_options``.

    Raises:
        ValueError: ``points`` is not one of the spec's options (or it has none).
    """
    if points is None or points == spec.points:
        return spec.points
    if not spec.point_options:
        raise ValueError(
            f"{where}: {spec.name} is always evaluated at {spec.points!r}; it takes no "
            f"points={points!r}."
        )
    return check_choice(where, "points", points, spec.point_options)


def resolve_spec_shape(
    where: str, spec: PenaltySpec, shape: str | Shape | None = None,
    params: dict[str, Any] | None = None,
) -> Shape:
    """The shape a call of ``spec`` applies: the spec's own (or ``shape``, where the penalty
    takes one), with ``params`` (``{"p": 3.0}``) set."""
    resolved = spec.shape_obj if shape is None else resolve_shape(where, shape)
    return resolved.with_params(where, **params) if params else resolved


_WGAN_DIV = PenaltySpec(
    "wgan_div", "interpolates", SHAPES["power"].with_params(p=6.0), weight_name="k",
    default_weight=2.0,
    title="WGAN-div (Wasserstein divergence: k times the p-th power of the gradient norm)",
    paper="Wu, Huang, Thoma, Acharya, Van Gool, Wasserstein Divergence for GANs, ECCV 2018",
    arxiv="1712.01026",
    point_options=("interpolates", "real_fake"),
)

_BUILTINS: tuple[PenaltySpec, ...] = (
    PenaltySpec(
        "wgan_gp", "interpolates", "two_sided",
        title="WGAN-GP (two-sided gradient penalty)",
        paper="Gulrajani et al., Improved Training of Wasserstein GANs, NeurIPS 2017",
        arxiv="1704.00028",
    ),
    PenaltySpec(
        "wgan_lp", "interpolates", "one_sided",
        title="WGAN-LP (one-sided Lipschitz penalty)",
        paper="Petzka, Fischer, Lukovnikov, On the Regularization of Wasserstein GANs, ICLR 2018",
        arxiv="1709.08894",
    ),
    PenaltySpec(
        "zero_gp", "interpolates", "squared",
        title="0-GP (zero-centred gradient penalty)",
        paper="Thanh-Tung, Tran, Venkatesh, Improving Generalization and Stability of GANs, "
        "ICLR 2019",
        arxiv="1902.03984",
    ),
    PenaltySpec(
        "r1", "real", "squared", weight_name="gamma", weight_factor=0.5,
        title="R1 (gradient penalty on real data)",
        paper="Mescheder, Geiger, Nowozin, Which Training Methods for GANs do actually "
        "Converge?, ICML 2018",
        arxiv="1801.04406",
    ),
    PenaltySpec(
        "r2", "fake", "squared", weight_name="gamma", weight_factor=0.5,
        title="R2 (gradient penalty on generated data)",
        paper="Mescheder, Geiger, Nowozin, Which Training Methods for GANs do actually "
        "Converge?, ICML 2018",
        arxiv="1801.04406",
    ),
    PenaltySpec(
        "dragan", "perturbed_real", "two_sided",
        title="DRAGAN (penalty around perturbed real data)",
        paper="Kodali, Abernethy, Hays, Kira, On Convergence and Stability of GANs, 2017",
        arxiv="1705.07215",
        extra={"default_c": 0.5},
    ),
    PenaltySpec(
        "max_gp", "interpolates", "squared", default_reduction="max",
        title="Max-GP (LGAN: the largest squared gradient norm in the batch)",
        paper="Zhou et al., Lipschitz Generative Adversarial Nets, ICML 2019",
        arxiv="1902.05687",
    ),
    _WGAN_DIV,
)

BUILTIN_NAMES: tuple[str, ...] = tuple(s.name for s in _BUILTINS)

class UnknownPenaltyError(KeyError):
    """A penalty name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_registry: dict[str, PenaltySpec] = {s.name: s for s in _BUILTINS}
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}


def register_penalty(spec: PenaltySpec, *, replace: bool = False) -> PenaltySpec:
    """Add ``spec`` to the registry (at run time; installed packages use the entry-point group).

    Raises:
        ValueError: the name is taken and ``replace`` is false, or it names a built-in.
    """
    if not isinstance(spec, PenaltySpec):
        raise TypeError(f"register_penalty takes a gpreg.PenaltySpec; got {type(spec).__name__}")
    if spec.name in BUILTIN_NAMES:
        raise ValueError(f"{spec.name!r} is a built-in penalty and cannot be replaced")
    if spec.name in _registry and not replace and _registry[spec.name] != spec:
        raise ValueError(
            f"a penalty named {spec.name!r} is already registered; pass replace=True to "
            f"replace it"
        )
    _registry[spec.name] = spec
    return spec


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            spec = obj() if callable(obj) and not isinstance(obj, PenaltySpec) else obj
            if not isinstance(spec, PenaltySpec):
                raise TypeError(f"it gave a {type(spec).__name__}, not a gpreg.PenaltySpec")
            if spec.name != ep.name:
                raise ValueError(f"the spec is named {spec.name!r}, the entry point {ep.name!r}")
            if spec.name in BUILTIN_NAMES:
                raise ValueError("that name belongs to a built-in penalty")
            _registry.setdefault(spec.name, spec)
        except Exception as exc:  # a broken plugin must not break the built-ins
            _plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"gpreg: skipping penalty plugin {ep.name!r} ({ep.value}): {exc}",
                RuntimeWarning,
                stacklevel=3,
            )


def penalty_names() -> list[str]:
    """Names of every known penalty: the built-ins, then registered and plugin ones, sorted."""
    _load_plugins()
    extra = sorted(n for n in _registry if n not in BUILTIN_NAMES)
    return list(BUILTIN_NAMES) + extra


def get_spec(name: str) -> PenaltySpec:
    """The :class:`PenaltySpec` registered under ``name``.

    Raises:
        UnknownPenaltyError: (a ``KeyError``) unknown name; the message lists the known ones.
    """
    _load_plugins()
    try:
        return _registry[name]
    except (KeyError, TypeError):
        hint = ""
        if name in _plugin_errors:
            hint = f" The plugin of that name failed to load: {_plugin_errors[name]}."
        raise UnknownPenaltyError(
            f"unknown penalty {name!r}; known penalties: {', '.join(penalty_names())}.{hint}"
        ) from None


_ROLES = {"interpolates": ("real", "fake"), "real": ("real",), "fake": ("fake",),
          "perturbed_real": ("real",), "real_fake": ("real", "fake")}


def bind(spec: PenaltySpec, run: Callable[..., Any], package: str) -> Callable[..., Any]:
    """A public-style function for ``spec`` (used for plugin penalties by every adapter).

    The result takes ``(critic, *data, **options)`` with the data arguments that the spec's
    points need (``real, fake`` for interpolates, ``real`` for R1 and DRAGAN-like, ``fake``
    for R2-like) and calls ``run(spec, critic, real=..., fake=..., weight=..., **options)``;
    keywords named after the shape's parameters travel as ``shape_params={...}``.
    """
    roles = _ROLES[spec.points]

    def penalty(critic: Any, *data: Any, **options: Any) -> Any:
        if len(data) != len(roles):
            raise TypeError(
                f"{package}.{spec.name} takes critic, {', '.join(roles)}; got {len(data)} data "
                f"argument(s)"
            )
        if spec.weight_name != "weight" and spec.weight_name in options:
            options["weight"] = options.pop(spec.weight_name)
        params = {n: options.pop(n) for n in spec.shape_obj.param_names if n in options}
        if params:
            options["shape_params"] = params
        return run(spec, critic, **dict(zip(roles, data)), **options)

    penalty.__name__ = penalty.__qualname__ = spec.name
    penalty.__doc__ = (
        f"{spec.title or spec.name} (plugin penalty, evaluated at {spec.points}).\n\n"
        f"    Call as ``{spec.name}(critic, {', '.join(roles)}, **options)``. {spec.paper}"
        + (f" arXiv:{spec.arxiv}" if spec.arxiv else "")
    )
    return penalty
