"""``adaptive`` (the default): the fusion's members chosen per behaviour by its own held-out pairs."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.core.families import (
    MEAN_ACTIVATION,
    MEAN_ACTIVATION_OPENING,
    MEAN_ACTIVATION_START,
    MEAN_ACTIVATION_SURPRISAL,
    RESIDUAL_CHANGE,
    RESIDUAL_CHANGE_OPENING,
    VectorFamily,
    family_name,
)
from actindex.errors import IndexFileError
from actindex.query.constructions import Construction
from actindex.query.methods.base import FormedMember, QueryMethod, no_single_vector
from actindex.query.selection import MIN_PAIRS, MOST, PairCheck, check_pairs, choose

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class AdaptiveMethod(QueryMethod):
    """Members chosen from the behaviour's own pairs (docs/design.md#adaptive-choice).

    Candidates: every construction (:mod:`actindex.query.constructions`: contrast, centered, hybrid) that a
    family forms (:attr:`~actindex.core.families.VectorFamily.constructions`: the answer's start forms the
    centered one alone), in every family of :attr:`kinds` the index holds, at every indexed layer (or at
    ``--layer`` alone). Each is checked on held-out pairs (:func:`~actindex.query.selection.check_pairs`, no
    model pass: the pairs' vectors are formed once for every family), the best are kept with weights from
    those checks (:func:`~actindex.query.selection.choose`: near the best quality, at most
    :data:`~actindex.query.selection.MOST` by separation), and their rankings are fused by the weighted
    calibrated mean (``zmean``), so the score shown is the weighted mean standardised cosine. With fewer than
    :data:`~actindex.query.selection.MIN_PAIRS` pairs nothing can be held out: the ``hybrid`` construction in
    every candidate family that forms it counts equally.

    A query by example (no controls) takes part the same way with the constructions that need no controls
    (``centered``: the examples' shared direction against the typical row), checked on held-out examples by
    the index AUROC alone.
    """

    name, kind = "adaptive", RESIDUAL_CHANGE
    help = "(default) fusion of the queries (construction x family x layer) the behaviour's held-out pairs rank best"
    fused = True
    fusion = "zmean"
    #: the families tried, by kind, when the index holds them: residual change and its opening; the mean
    #: activation weighted by each token's loss (in place of the plain mean, which it matches on short answers and
    #: beats on long ones), its opening and its start (bench/RESULTS.md, "Retrieval"). An index built before the
    #: loss-weighted mean answers with the plain one; one built without the openings or the start, without them.
    kinds: ClassVar[tuple[str, ...]] = (RESIDUAL_CHANGE, MEAN_ACTIVATION_SURPRISAL, RESIDUAL_CHANGE_OPENING,
                                        MEAN_ACTIVATION_OPENING, MEAN_ACTIVATION_START)
    #: the kind tried in place of another that an (older) index lacks
    fallbacks: ClassVar[dict[str, str]] = {MEAN_ACTIVATION_SURPRISAL: MEAN_ACTIVATION}
    #: the most members kept (:func:`~actindex.query.selection.choose`; bench/retrieval.py ``--most`` sweeps it)
    most: ClassVar[int] = MOST
    #: the construction every candidate family keeps when there are too few pairs to check (examples: the
    #: first that needs no controls)
    fallback: ClassVar[str] = "hybrid"

    def candidates(self, layers: list[int], layer: int | None, families: tuple[str, ...],
                   example: bool = False) -> list[tuple[str, str, int]]:
        """``(construction, family, layer)`` of every candidate the index can answer (for a query by example,
        the constructions that need no controls)."""
        at = layers if layer is None else [layer]
        constructions = [c for c, cls in Construction.registry.items() if not (example and cls.needs_controls)]
        kinds = [k if any(family_name(k, a) in families for a in at) else self.fallbacks.get(k, k) for k in self.kinds]
        return [(c, family_name(k, a), a) for k in kinds for a in at for c in constructions
                if family_name(k, a) in families and VectorFamily.get(k).answers(c)]

    def form(self, ctx: QueryContext, reader: IndexReader, behavior: Behavior, layer: int | None) -> list[FormedMember]:
        candidates = self.candidates(reader.layers, layer, tuple(reader.families), behavior.example)
        if not candidates:
            raise IndexFileError(f"method {self.name} needs residual-change or mean-activation vectors, which "
                                 f"{reader.root} lacks")
        checked = len(behavior.pairs) >= MIN_PAIRS
        families = dict.fromkeys(family for _, family, _ in candidates)
        sides = {family: self.sides(ctx, behavior, family) for family in families}
        typical = {family: reader.typical(family) for family in families}  # mu, once per family
        if checked:  # the same pairs against the same index choose the same members: checked once per reader
            arrays = [a for pair in sides.values() for a in pair]
            digest = hashlib.sha256(repr([a.shape for a in arrays]).encode() + b"".join(a.tobytes() for a in arrays))
            checks = reader.remembered((self.name, tuple(candidates), digest.hexdigest()),
                                       lambda: self.check_candidates(reader, candidates, sides, typical))
            weights = choose(checks, most=self.most)
        else:
            checks = []
            fallback = candidates[0][0] if behavior.example else self.fallback
            weights = np.array([float(c == fallback) for c, _, _ in candidates])
        out = []
        for i, (construction, family, at) in enumerate(candidates):
            weight = float(weights[i])
            psi = Construction.get(construction).psi(*sides[family], typical[family]) if weight > 0 else None
            notes = ({"pair AUROC": checks[i].pair_auroc, "index AUROC": checks[i].index_auroc,
                      "separation": checks[i].separation} if checked else {})
            notes = {key: value for key, value in notes.items() if value is not None}
            out.append(FormedMember(method=construction, layer=at, family=family, psi=psi, weight=weight, notes=notes))
        return out

    @staticmethod
    def check_candidates(reader: IndexReader, candidates: list[tuple[str, str, int]],
                         sides: dict[str, tuple[np.ndarray, np.ndarray]],
                         typical: dict[str, np.ndarray]) -> list[PairCheck]:
        """Every candidate's held-out check (:func:`~actindex.query.selection.check_pairs`)."""
        return [check_pairs(*sides[family], reader.calibration_sample(family),
                            lambda t, c, s=Construction.get(construction), mu=typical[family]: s.psi(t, c, mu))
                for construction, family, _ in candidates]

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        raise no_single_vector(self.name)
