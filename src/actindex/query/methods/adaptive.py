"""``adaptive`` (the default): the fusion's members chosen per behaviour by its own held-out pairs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
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
    family_kind,
    family_name,
)
from actindex.errors import IndexFileError
from actindex.query.constructions import Centered, Construction, specific
from actindex.query.methods.base import FormedMember, QueryMethod, no_single_vector
from actindex.query.selection import (
    MIN_PAIRS,
    MOST,
    PairCheck,
    blend,
    check_pairs,
    check_share,
    choose,
    folds_for,
    margin_for,
)

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
    those checks (:func:`~actindex.query.selection.choose`: within
    :func:`~actindex.query.selection.margin_for` of the best quality, at most
    :data:`~actindex.query.selection.MOST` by separation), and their rankings are fused by the weighted
    calibrated mean (``zmean``), so the score shown is the weighted mean standardised cosine.

    Few pairs: up to :data:`~actindex.query.selection.LOO_PAIRS` the check leaves one pair out at a time, and
    below :data:`~actindex.query.selection.TRUSTED_PAIRS` its choice is shrunk toward the :attr:`prior`
    (:func:`~actindex.query.selection.blend`, in the proportion :func:`~actindex.query.selection.check_share`);
    with one pair nothing can be held out and the prior alone chooses. The result's notes say so
    (:meth:`choice_notes`).

    Versus other behaviours: every candidate's ``psi`` is made specific to theirs by the same construction in the
    same family (:func:`~actindex.query.constructions.specific`), and the check adds the held-out treatments'
    AUROC against the other behaviours' held-out treatments (docs/design.md#versus).

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
    #: the members chosen when there are too few pairs to check, and toward which a thin check's choice is shrunk
    #: (:func:`~actindex.query.selection.blend`): ``(construction, kind)`` at every layer (bench/RESULTS.md,
    #: "Few pairs": chosen by its worst case over the benchmark pools with 1 and 2 pairs)
    prior: ClassVar[tuple[tuple[str, str], ...]] = (
        ("contrast", RESIDUAL_CHANGE), ("centered", RESIDUAL_CHANGE), ("contrast", MEAN_ACTIVATION_OPENING),
        ("centered", MEAN_ACTIVATION_OPENING), ("centered", MEAN_ACTIVATION_START))

    def candidates(self, layers: list[int], layer: int | None, families: tuple[str, ...],
                   example: bool = False) -> list[tuple[str, str, int]]:
        """``(construction, family, layer)`` of every candidate the index can answer (for a query by example,
        the constructions that need no controls)."""
        at = layers if layer is None else [layer]
        constructions = [c for c, cls in Construction.registry.items() if not (example and cls.needs_controls)]
        kinds = [k if any(family_name(k, a) in families for a in at) else self.fallbacks.get(k, k) for k in self.kinds]
        return [(c, family_name(k, a), a) for k in kinds for a in at for c in constructions
                if family_name(k, a) in families and VectorFamily.get(k).answers(c)]

    def form(self, ctx: QueryContext, reader: IndexReader, behavior: Behavior, layer: int | None,
             versus: Sequence[Behavior] = ()) -> list[FormedMember]:
        candidates = self.candidates(reader.layers, layer, tuple(reader.families), behavior.example)
        if not candidates:
            raise IndexFileError(f"method {self.name} needs residual-change or mean-activation vectors, which "
                                 f"{reader.root} lacks")
        n = len(behavior.pairs)
        checked, share = n >= MIN_PAIRS, check_share(n)
        families = dict.fromkeys(family for _, family, _ in candidates)
        sides = {family: self.sides(ctx, behavior, family) for family in families}
        against = {family: [self.sides(ctx, other, family) for other in versus] for family in families}
        typical = {family: reader.typical(family) for family in families}  # mu, once per family
        checks: list[PairCheck] = []
        chosen = np.zeros(len(candidates))
        if checked:  # the same pairs against the same index choose the same members: checked once per reader
            arrays = [a for family in families for a in (*sides[family], *(x for o in against[family] for x in o))]
            digest = hashlib.sha256(repr([a.shape for a in arrays]).encode() + b"".join(a.tobytes() for a in arrays))
            checks = reader.remembered((self.name, tuple(candidates), len(versus), digest.hexdigest()),
                                       lambda: self.check_candidates(reader, candidates, sides, typical, against))
            chosen = choose(checks, margin=margin_for(n), most=self.most)
        prior = self.prior_weights(candidates)
        weights = blend(chosen, prior, share)
        out = []
        for i, (construction, family, at) in enumerate(candidates):
            weight = float(weights[i])
            psi = None
            if weight > 0:
                form = self.construct(construction, typical[family])
                psi = specific(form(*sides[family]), [form(*other) for other in against[family]], typical[family])
            notes = ({"pair AUROC": checks[i].pair_auroc, "index AUROC": checks[i].index_auroc,
                      "versus AUROC": checks[i].versus_auroc, "separation": checks[i].separation} if checked else {})
            if share < 1:
                notes["prior"] = float(prior[i])
            notes = {key: value for key, value in notes.items() if value is not None}
            out.append(FormedMember(method=construction, layer=at, family=family, psi=psi, weight=weight, notes=notes))
        return out

    def prior_weights(self, candidates: list[tuple[str, str, int]]) -> np.ndarray:
        """1 for every candidate of the :attr:`prior` (``construction``, kind) at any layer, else 0; for a query by
        example (no candidate of the prior's constructions), its kinds' candidates."""
        prior = {*self.prior, *((c, self.fallbacks[k]) for c, k in self.prior if k in self.fallbacks)}
        kinds = {kind for _, kind in prior}
        weights = np.array([float((c, family_kind(f)) in prior) for c, f, _ in candidates])
        if not weights.any():
            weights = np.array([float(family_kind(f) in kinds) for _, f, _ in candidates])
        return weights if weights.any() else np.ones(len(candidates))

    def choice_notes(self, behavior: Behavior) -> list[str]:
        """What chose the members when the pairs are too few for the check alone (:func:`check_share`)."""
        n = len(behavior.pairs)
        share = check_share(n)
        if share >= 1:
            return []
        unit = "example" if behavior.example else "pair"
        prior = ", ".join(f"{c} {k}" for c, k in self.prior) + " at every layer"
        if share == 0:
            return [f"{n} {unit}: nothing to hold out, so the members are the prior's ({prior}; chosen on the "
                    "benchmark pools with few pairs)"]
        return [f"{n} {unit}s: the held-out check (leave-one-out) is thin, so its choice weighs {share:.2f} and the "
                f"prior's ({prior}) {1 - share:.2f} in the members' weights"]

    @staticmethod
    def construct(construction: str, typical: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``(T, C) -> psi`` of a construction with the family's typical row; a behaviour without controls (an
        example, asked against) forms the ``centered`` query in place of one that needs them."""
        strategy = Construction.get(construction)

        def form(treatments: np.ndarray, controls: np.ndarray) -> np.ndarray:
            own = strategy if len(controls) == len(treatments) or not strategy.needs_controls else Centered()
            return own.psi(treatments, controls, typical)

        return form

    @classmethod
    def check_candidates(cls, reader: IndexReader, candidates: list[tuple[str, str, int]],
                         sides: dict[str, tuple[np.ndarray, np.ndarray]], typical: dict[str, np.ndarray],
                         against: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None) -> list[PairCheck]:
        """Every candidate's held-out check (:func:`~actindex.query.selection.check_pairs`; leave-one-out up to
        :data:`~actindex.query.selection.LOO_PAIRS` pairs), against the other behaviours' ``(T, C)`` when given."""
        return [check_pairs(*sides[family], reader.calibration_sample(family),
                            cls.construct(construction, typical[family]), folds=folds_for(len(sides[family][0])),
                            versus=(against or {}).get(family, ()), mu=typical[family])
                for construction, family, _ in candidates]

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        raise no_single_vector(self.name)
