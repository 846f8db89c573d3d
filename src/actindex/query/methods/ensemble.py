"""``ensemble``: rank fusion of residual-change and its pooled variant over the layers (fixed members)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from actindex.core.families import RESIDUAL_CHANGE
from actindex.query.methods.base import Member, QueryMethod, no_single_vector

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class EnsembleMethod(QueryMethod):
    """Rank fusion of several (method, layer) rankings (docs/design.md#fusion).

    Members: ``residual-change`` and ``residual-change-pooled`` at every layer the index holds (the
    ones it has vectors for), or at ``--layer`` alone; the fusion rule (:mod:`actindex.query.fusion`,
    reciprocal rank fusion by default) combines their rankings. A fixed member set: the adaptive default
    (:mod:`.adaptive`) chooses its members per behaviour instead; a rerank re-scores the fused candidates.
    """

    name, kind = "ensemble", RESIDUAL_CHANGE
    help = "rank fusion of residual-change and its pooled variant over every indexed layer (fixed members)"
    fused = True
    member_methods: ClassVar[tuple[str, ...]] = ("residual-change", "residual-change-pooled")

    def members(self, layers: list[int], layer: int | None, families: tuple[str, ...]) -> list[Member]:
        at = layers if layer is None else [layer]
        return [(m, a) for m in self.member_methods for a in at if QueryMethod.get(m).family(a) in families]

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        raise no_single_vector(self.name)
