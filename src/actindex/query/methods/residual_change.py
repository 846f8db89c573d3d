"""``residual-change``: the behaviour's mean residual-change difference (docs/design.md#constructions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families import RESIDUAL_CHANGE
from actindex.query.constructions import unit
from actindex.query.methods.base import QueryMethod

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class ResidualChangeMethod(QueryMethod):
    """``psi = norm(mean_j (t_l(treatment_j) - t_l(control_j)))`` against residual-change vectors."""

    name, kind = "residual-change", RESIDUAL_CHANGE
    help = "residual-change vectors of treatment minus control"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior, layer))
