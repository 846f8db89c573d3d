"""The vector families a build caches (docs/design.md#vector-families), one registered class per file.

``VectorFamily.get(name)`` returns one; ``VectorFamily.registry`` lists them all. See :mod:`.base`.
"""

from actindex.core.families.base import (
    BLOCK_GRADS,
    LINEAR_GRADS,
    NO_BACKWARD,
    OPENING_TOKENS,
    START_TOKENS,
    Captured,
    VectorFamily,
    VectorSpec,
    family_kind,
    family_name,
)

# the registry lists the families in this order
# isort: off
from actindex.core.families.residual_change import ResidualChange
from actindex.core.families.residual_change_pooled import PooledResidualChange
from actindex.core.families.mean_activation import MeanActivation
from actindex.core.families.gradient import ProjectedGradient
from actindex.core.families.residual_change_opening import ResidualChangeOpening
from actindex.core.families.mean_activation_opening import MeanActivationOpening
from actindex.core.families.mean_activation_start import MeanActivationStart
from actindex.core.families.mean_activation_surprisal import MeanActivationSurprisal
# isort: on

RESIDUAL_CHANGE = ResidualChange.name
RESIDUAL_CHANGE_POOLED = PooledResidualChange.name
MEAN_ACTIVATION = MeanActivation.name
GRADIENT = ProjectedGradient.name
RESIDUAL_CHANGE_OPENING = ResidualChangeOpening.name
MEAN_ACTIVATION_OPENING = MeanActivationOpening.name
MEAN_ACTIVATION_START = MeanActivationStart.name
MEAN_ACTIVATION_SURPRISAL = MeanActivationSurprisal.name

__all__ = [
    "BLOCK_GRADS", "GRADIENT", "LINEAR_GRADS", "MEAN_ACTIVATION", "MEAN_ACTIVATION_OPENING",
    "MEAN_ACTIVATION_START", "MEAN_ACTIVATION_SURPRISAL", "NO_BACKWARD", "OPENING_TOKENS", "RESIDUAL_CHANGE",
    "RESIDUAL_CHANGE_OPENING", "RESIDUAL_CHANGE_POOLED", "START_TOKENS", "Captured", "MeanActivation",
    "MeanActivationOpening", "MeanActivationStart", "MeanActivationSurprisal", "PooledResidualChange",
    "ProjectedGradient", "ResidualChange", "ResidualChangeOpening", "VectorFamily", "VectorSpec", "family_kind",
    "family_name",
]
