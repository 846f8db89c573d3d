"""``residual-difference``: the behaviour's mean activation difference (docs/design.md#constructions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families import MEAN_ACTIVATION
from actindex.query.constructions import unit
from actindex.query.methods.base import QueryMethod

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class ResidualDifferenceMethod(QueryMethod):
    """``psi = norm(mean_j (a_l(treatment_j) - a_l(control_j)))`` against mean activations."""

    name, kind = "residual-difference", MEAN_ACTIVATION
    help = "mean-activation difference of treatment minus control"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior, layer))
