"""gpreg: gradient-penalty regularizers for GAN critics, defined once for every framework.

This core package imports NumPy only. The framework functions live in ``gpreg_torch`` and
``gpreg_keras``; this package holds what they share: the penalty specifications and their
registry, the formulas, the evaluation points, the input checks and the numerical fixtures.
"""

from gpreg._lazy import LazyRegularization
from gpreg._report import CheckReport
from gpreg._specs import (
    BUILTIN_NAMES,
    ENTRY_POINT_GROUP,
    SHAPES,
    PenaltySpec,
    Shape,
    UnknownPenaltyError,
    get_spec,
    penalty_names,
    register_penalty,
)
from gpreg._tolerances import TOLERANCES
from gpreg._validation import BatchNormWarning, FixedSeedWarning, InexactStatisticsWarning

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_NAMES",
    "ENTRY_POINT_GROUP",
    "SHAPES",
    "TOLERANCES",
    "BatchNormWarning",
    "CheckReport",
    "FixedSeedWarning",
    "InexactStatisticsWarning",
    "LazyRegularization",
    "PenaltySpec",
    "Shape",
    "UnknownPenaltyError",
    "__version__",
    "get_spec",
    "penalty_names",
    "register_penalty",
]
