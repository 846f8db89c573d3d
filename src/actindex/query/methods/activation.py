"""``activation``: the persona-vector screening baseline, a projection on the behaviour direction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families import MEAN_ACTIVATION
from actindex.query.constructions import unit
from actindex.query.methods.base import QueryMethod
from actindex.query.methods.persona import PersonaMethod

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class ActivationMethod(QueryMethod):
    """Baseline: project each row's mean activation on the unit persona (or difference) vector.

    Score = ``<a_l(x), psi>`` (a projection, not a cosine), as in persona-vector data screening.
    """

    name, kind = "activation", MEAN_ACTIVATION
    help = "baseline: projection of mean activations on the behaviour direction"
    projection_scores = True

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        if behavior.persona is not None:
            return PersonaMethod().vector(ctx, behavior, layer)
        return unit(self.pair_difference(ctx, behavior, layer))
