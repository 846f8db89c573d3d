"""What a query method is: a way to turn a behaviour into a query vector ``psi`` in one stored family.

A method is one small registered class (:class:`QueryMethod`) in one file of this package. Its
capabilities tell the query pipeline (:mod:`actindex.query.pipeline`) what to do with it:

* ``kind``: the stored family it searches (at a layer, for per-layer families);
* ``projection_scores``: rows are ranked by the projection ``<v_i, psi>`` instead of the cosine;
* ``fused``: it has no single vector but fuses the rankings of its :meth:`~QueryMethod.members`;
* ``curvature``: the kind of fitted factors it needs (``--method ekfac``).

Sign convention (DESIGN 4): a positive score means training on the row pushes the model towards the
behaviour. Modules here import no tensor library at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.core.families import VectorFamily, family_name
from actindex.errors import ActindexError
from actindex.query.context import per_pair, query_rows
from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext

#: a member of a ranking: ``(method name, layer)`` (layer ``None`` for a layerless family)
Member = tuple[str, "int | None"]


class QueryMethod(Registered, noun="method"):
    """A way to turn a behaviour into a query vector in one stored family (see the module docstring)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    help: ClassVar[str]
    projection_scores: ClassVar[bool] = False
    fused: ClassVar[bool] = False
    curvature: ClassVar[str | None] = None

    def family(self, layer: int | None) -> str:
        """The stored family this method searches at ``layer``."""
        return family_name(self.kind, layer if VectorFamily.get(self.kind).per_layer else None)

    def members(self, layers: list[int], layer: int, families: tuple[str, ...]) -> list[Member]:
        """The (method, layer) rankings this method's ranking is made of: itself at ``layer``."""
        return [(self.name, layer)]

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        """``psi`` for the (completed) behaviour at ``layer``."""
        raise NotImplementedError

    def pair_difference(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        """``mean_j (v(treatment_j) - v(control_j))`` in this method's family at ``layer``; for a query by
        example (no controls) ``mean_j v(treatment_j)``, the examples' own vectors (DESIGN 4)."""
        vectors = ctx.family_vectors(self.family(layer), query_rows(behavior))
        return per_pair(behavior, vectors).mean(axis=0)


def no_single_vector(method: str) -> ActindexError:
    return ActindexError(f"--method {method} fuses several rankings and has no single query vector; pick one of its "
                         "member methods to save or search a vector")
