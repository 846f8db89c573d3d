"""What a query method is: a way to turn a behaviour into a query vector ``psi`` in one stored family.

A method is one small registered class (:class:`QueryMethod`), listed in the package's registry. Its
capabilities tell the query pipeline (:mod:`actindex.query.pipeline`) what to do with it:

* ``kind``: the stored family it searches (at a layer, for per-layer families);
* ``projection_scores``: rows are ranked by the projection ``<v_i, psi>`` instead of the cosine;
* ``fused``: it has no single vector but fuses the rankings of the members it forms
  (:meth:`~QueryMethod.form`: each a query vector in one family, with a weight);
* ``curvature``: the kind of fitted factors it needs (``--method ekfac``).

Sign convention (docs/design.md#sign): a positive score means training on the row pushes the model towards the
behaviour. Modules here import no tensor library at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.core.families import VectorFamily, family_name
from actindex.errors import ActindexError
from actindex.query.constructions import specific
from actindex.query.context import per_pair, query_rows
from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext

#: a member of a ranking: ``(method name, layer)`` (layer ``None`` for a layerless family)
Member = tuple[str, "int | None"]


@dataclass
class FormedMember:
    """One member of a fused query, formed: what it is (``method``: a method's name, or for an adaptive
    member its construction), the family it searches, its query vector, its weight in the fusion and what
    chose it (``notes``: the held-out pair checks). A weight of 0 is a candidate that was not kept."""

    method: str
    layer: int | None
    family: str
    psi: np.ndarray | None
    weight: float = 1.0
    projection: bool = False
    notes: dict[str, float] = field(default_factory=dict)


class QueryMethod(Registered, noun="method", listed=True):
    """A way to turn a behaviour into a query vector in one stored family (see the module docstring)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    help: ClassVar[str]
    projection_scores: ClassVar[bool] = False
    fused: ClassVar[bool] = False
    #: a fused method's fusion rule (:mod:`actindex.query.fusion`) unless ``--fusion`` says otherwise
    fusion: ClassVar[str] = "rrf"
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

    def form(self, ctx: QueryContext, reader: IndexReader, behavior: Behavior, layer: int | None,
             versus: Sequence[Behavior] = ()) -> list[FormedMember]:
        """A fused method's members, formed: by default each of :meth:`members` with its own method's vector
        and weight 1 (``layer``: the one layer asked for, or ``None`` for every indexed layer); against the
        ``versus`` behaviours, each vector keeps what theirs by the same member do not share
        (:func:`~actindex.query.constructions.specific`)."""
        out = []
        for method, at in self.members(reader.layers, layer, tuple(reader.families)):
            strategy = QueryMethod.get(method)
            family = strategy.family(at)
            psi = specific(strategy.vector(ctx, behavior, at), [strategy.vector(ctx, o, at) for o in versus],
                           reader.typical(family) if versus else None)
            out.append(FormedMember(method=method, layer=at, family=family, psi=psi,
                                    projection=strategy.projection_scores))
        return out

    def choice_notes(self, behavior: Behavior) -> list[str]:
        """What the result's notes say about how a fused method chose its members for ``behavior`` (nothing by
        default)."""
        return []

    @staticmethod
    def sides(ctx: QueryContext, behavior: Behavior, family: str) -> tuple[np.ndarray, np.ndarray]:
        """``(T, C)``: the vectors of ``family`` of every ``(prompt_j, treatment_j)`` and ``(prompt_j, control_j)``
        (row ``j`` of each is pair ``j``; a query by example has no controls: ``C`` has no rows)."""
        vectors = ctx.family_vectors(family, query_rows(behavior))
        n = len(behavior.pairs)
        return vectors[:n], vectors[n:]

    def pair_difference(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        """``mean_j (v(treatment_j) - v(control_j))`` in this method's family at ``layer``; for a query by
        example (no controls) ``mean_j v(treatment_j)``, the examples' own vectors."""
        vectors = ctx.family_vectors(self.family(layer), query_rows(behavior))
        return per_pair(behavior, vectors).mean(axis=0)


def no_single_vector(method: str) -> ActindexError:
    return ActindexError(f"--method {method} fuses several rankings and has no single query vector; pick one of its "
                         "member methods to save or search a vector")
