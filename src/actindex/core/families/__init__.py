"""The vector families a build caches (DESIGN 3), one registered class per file.

``VectorFamily.get(name)`` returns one; ``VectorFamily.registry`` lists them all. See :mod:`.base`.
"""

from actindex.core.families.base import (
    BLOCK_GRADS,
    LINEAR_GRADS,
    NO_BACKWARD,
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
# isort: on

RESIDUAL_CHANGE = ResidualChange.name
RESIDUAL_CHANGE_POOLED = PooledResidualChange.name
MEAN_ACTIVATION = MeanActivation.name
GRADIENT = ProjectedGradient.name

__all__ = [
    "BLOCK_GRADS", "GRADIENT", "LINEAR_GRADS", "MEAN_ACTIVATION", "NO_BACKWARD", "RESIDUAL_CHANGE",
    "RESIDUAL_CHANGE_POOLED", "Captured", "MeanActivation", "PooledResidualChange", "ProjectedGradient",
    "ResidualChange", "VectorFamily", "VectorSpec", "family_kind", "family_name",
]
