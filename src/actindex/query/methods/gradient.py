"""``gradient``: the Hessian-free projected gradient of the behaviour's log-odds (docs/design.md#gradient-queries)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families import GRADIENT
from actindex.query.constructions import unit
from actindex.query.methods.base import QueryMethod

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class GradientMethod(QueryMethod):
    """``psi = -grad phi`` projected, ``phi = mean_j [log p(treatment_j) - log p(control_j)]``.

    For pairs ``-grad phi = mean_j (grad L(treatment_j) - grad L(control_j))``; the projection is
    linear, so the projected query is the mean difference of projected gradients.
    """

    name, kind = "gradient", GRADIENT
    help = "Hessian-free projected gradient of the behaviour's log-odds (index built with --grad)"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior, layer))
