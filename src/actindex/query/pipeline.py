"""Stage 9 — the query pipeline: a behaviour becomes ranked rows in four explicit stages.

    members  = method.form(...)                       which queries (psi in a family, with a weight) the answer
                                                      is made of (model pass; cached by the context); the
                                                      adaptive default weighs them by the held-out pairs
    rankings = search(member, psi)                    FAISS cosine, or the projection <v, psi>
    ranking  = fuse(rankings)                         one member: itself; several: the fusion rule
    hits     = rerank(ranking) if asked               exact EK-FAC / LinFAC influence on the candidates

One score scale: a hit's ``score`` is calibrated, ``z(x) = (s(x) - median) / (1.4826 MAD)`` with ``s`` the search
score (cosine, or projection) and the median and MAD those of ``s`` over the index's typical rows, so ``z > 0``
pushes towards the behaviour, in robust standard deviations; for a single method it is an increasing map of ``s``,
so the ranking's order holds, and a fused method's ``zmean`` is the members' weighted mean ``z``. A rule that
orders by another score (``rrf``) shows that score and keeps the calibrated one as ``calibrated``. ``cosine`` is
always the raw cosine of the row with the query vector (a fused method: the members' weighted mean).

:class:`QueryConfig` holds every setting (the CLI's ``query`` options are made from it); the
components are injected (the :class:`~actindex.index.reader.IndexReader`, a
:class:`~actindex.query.context.QueryContext` for model passes, the fitted curvature), as TRAKer injects
its projector and score computer. Nothing below this module imports it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.configs import check_choices, option
from actindex.errors import ActindexError, IndexFileError
from actindex.query.constructions import specific
from actindex.query.fusion import (
    BOTTOM,
    TOP,
    FusionRule,
    MemberRanking,
    calibrated,
    fusion_names,
    mean_cosines,
    robust_center_scale,
)
from actindex.query.methods import FormedMember, Member, QueryMethod, default_method, method_names
from actindex.query.rerank import RECALLS, row_influence, tfidf_recall
from actindex.query.result import Hit, QueryResult, snippet_of
from actindex.query.where import describe as describe_where
from actindex.query.where import row_mask, where_of

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


def _kinds() -> list[str]:
    from actindex.query.curvature import kind_names

    return kind_names()


@dataclass
class QueryConfig:
    """Settings of one query: how a behaviour's rows are ranked, how many are returned, how they are reranked."""

    method: str | None = option(
        "Query method (see --help-methods). Default: adaptive (the queries the behaviour's held-out pairs rank "
        "best, fused); residual-change with --save-query or --query-vector (one vector).", None,
        choices=method_names)
    layer: int | None = option("Layer to query (default: the indexed layer nearest 60% of the depth; adaptive and "
                               "ensemble: every indexed layer).", None)
    k: int = option("Rows to return; 0 = every row.", 10, minimum=0, flag="--top-k")
    bottom_k: int = option("Also return the k most negative rows.", 0, minimum=0)
    offset: int = option("Skip this many rows of each ranking first: a page of rows offset+1 to offset+k.", 0,
                         minimum=0)
    fusion: str | None = option("How a fused method combines its members' rankings (default: the method's own: "
                                "zmean for adaptive, rrf for ensemble).", None, choices=fusion_names)
    rerank: str | None = option("Re-score the candidates with exact influence (needs `actindex fit-curvature`) and "
                                "rank by it.", None, choices=_kinds)
    candidates: int = option("With --rerank: top-K and bottom-K search results re-scored.", 100, minimum=1)
    per_token: bool = option("With --rerank: per-token influence ([[+token]] marks in tables).", False)
    clusters: int = option("With --rerank: one query per k-means cluster of the behaviour's pairs (max-|I| merge).",
                           0, minimum=0)
    recall: str | None = option("With --rerank: add lexical candidates.", None, choices=RECALLS)
    where: dict[str, Any] | None = option(
        "Rank only the rows whose record fields have these values: {field: value} or {field: [values]} (every "
        "field must match; values compare as text, so 1 and \"1\" are equal).", None, cli=False)

    def __post_init__(self) -> None:
        check_choices(self)
        where_of(self.where)  # a malformed filter is refused before any model pass
        if (self.per_token or self.clusters or self.recall) and not self.rerank:
            raise ActindexError("--per-token, --clusters and --recall refine a rerank: add --rerank ekfac|linfac")

    def resolved_method(self, needs_vector: bool = False) -> str:
        """The method asked for, or the default (``adaptive``; ``residual-change`` for a saved vector)."""
        return self.method or default_method(needs_vector)

    def resolved_fusion(self) -> str:
        """The fusion rule asked for, or the method's own."""
        return self.fusion or QueryMethod.get(self.resolved_method()).fusion


@dataclass
class Ranking:
    """Ranked rows of one side, best first: ``scores`` is the score that orders them (never rising down the top,
    never falling down the bottom), ``calibrated`` the calibrated score (robust standard deviations from the
    typical row; the same as ``scores`` but for a rule that orders by another score, ``rrf``) and ``cosines``
    the raw cosine of each row with the query (a fused ranking: the members' weighted mean)."""

    scores: np.ndarray
    rows: np.ndarray
    calibrated: np.ndarray | None = None
    cosines: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Ranking:
        return cls(np.zeros(0), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))


@dataclass
class Ranked:
    """One query's rankings before hits are made (:meth:`QueryPipeline.rank`): the method, the family searched
    (for a fused method, the rule over its members' families), both sides, the query vector of a single method,
    the members of a fused one, and ``search_scores(rows)``: the calibrated score and the raw cosine of any rows
    (what a reranked hit keeps of its search)."""

    method: str
    family: str
    top: Ranking
    bottom: Ranking
    vector: np.ndarray | None
    members: list[MemberRanking]
    search_scores: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    behavior: str = ""
    #: an adaptive method's candidates that were not kept (weight 0; shown by --explain)
    unkept: list[FormedMember] = field(default_factory=list)
    #: the rows the query's filter lets through (``QueryConfig.where``; ``None``: every row)
    allowed: np.ndarray | None = None


def page(ranking: Ranking, offset: int) -> Ranking:
    """``ranking`` without its first ``offset`` rows."""
    if not offset:
        return ranking
    cut = (None if values is None else values[offset:] for values in (ranking.calibrated, ranking.cosines))
    return Ranking(ranking.scores[offset:], ranking.rows[offset:], *cut)


def deeper(k: int, offset: int) -> int:
    """Rows to fetch for a page of ``k`` rows after ``offset``: ``k + offset``; 0 stays 0 (every row for the top,
    none for the bottom)."""
    return k + offset if k > 0 else 0


#: fused orders an index keeps (:class:`FusedOrders`)
FUSED_KEPT = 64


def behavior_digest(behavior: Behavior) -> str:
    """sha256 of what a completed behaviour's vectors are made of: its pairs (with their turns before), its persona
    spec and whether it is a query by example."""
    pairs = [(p.prompt, p.treatment, p.control, p.history) for p in behavior.pairs]
    persona = asdict(behavior.persona) if behavior.persona is not None else None
    content = json.dumps([behavior.name, pairs, persona, behavior.example], sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()


def member_depth(k: int) -> int:
    """Rows each member of a fused query searches for a fused top ``k``: ``max(1000, 10 k)`` (deep enough for the
    fused top ``k`` to be stable), every row for ``k = 0``."""
    return 0 if k <= 0 else max(1000, 10 * k)


class FusedOrders:
    """The fused orders of the latest :data:`FUSED_KEPT` fused queries of one index, by what they depend on: the
    completed behaviour, the method, layer, fusion rule and filter, each side's member depth
    (:func:`member_depth`) and the index's search settings. Every ``k`` up to 100 searches the members 1,000 rows
    deep, so a cached behaviour asked for another ``k`` or another page is cut from the same order (the same rows a
    fresh query ranks) instead of forming, searching and fusing its members again: the pure-Python part of a query,
    which holds the GIL and so keeps a server's threads from answering in parallel."""

    def __init__(self, kept: int = FUSED_KEPT):
        self.kept, self.orders = kept, {}
        self.lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self.lock:
            found = self.orders.get(key)
        if found is None:
            found = compute()
            with self.lock:
                self.orders[key] = found
                while len(self.orders) > self.kept:
                    self.orders.pop(next(iter(self.orders)))
        return found


@dataclass
class QueryPipeline:
    """The stages of a query over one index (see the module docstring); components are injected (``kept``: the
    index's :class:`FusedOrders`, a fresh one when not given)."""

    reader: IndexReader
    context: Callable[[], QueryContext]
    curvature: Callable[[str], Any]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    kept: FusedOrders = field(default_factory=FusedOrders)

    # ---- members and their vectors ----------------------------------------------------------
    def resolve_layer(self, layer: int | None) -> int:
        """``layer``, checked against the index, or the indexed layer nearest 60% of the depth."""
        from actindex.core.layers import default_single_layer

        if layer is None:
            return default_single_layer(self.reader.layers, self.reader.manifest.model.num_layers)
        if layer not in self.reader.layers:
            raise IndexFileError(f"{self.reader.root} has no vectors for layer {layer} (it was built with --layers "
                                 f"{','.join(map(str, self.reader.layers))})")
        return layer

    def family_of(self, method: str, layer: int | None) -> str:
        """The stored family a method searches at a layer, refused when the index lacks it."""
        strategy = QueryMethod.get(method)
        family = strategy.family(self.resolve_layer(layer))
        if family not in self.reader.families:
            hint = " rebuild with --grad" if family == "gradient" else " rebuild with the family switched on"
            raise IndexFileError(f"method {method} needs the {family!r} vectors, which {self.reader.root} lacks;{hint}")
        return family

    def members(self, method: str, layer: int | None) -> list[Member]:
        """The (method, layer) ranking of a single-vector method."""
        return [(method, self.resolve_layer(layer))]

    def form(self, behavior: Behavior, method: str, layer: int | None,
             versus: Sequence[Behavior] = ()) -> list[FormedMember]:
        """A fused method's members, formed (:meth:`QueryMethod.form`; against the ``versus`` behaviours); at least
        one with a positive weight."""
        at = None if layer is None else self.resolve_layer(layer)
        formed = QueryMethod.get(method).form(self.context(), self.reader, behavior, at, versus)
        if not any(member.weight > 0 for member in formed):
            raise IndexFileError(f"method {method} needs residual-change vectors, which {self.reader.root} lacks")
        return formed

    def formed(self, behavior: Behavior, method: str, layer: int | None) -> list[FormedMember]:
        """The members any method ranks with: a fused method's (:meth:`form`), or a single method's one vector
        with weight 1; only the kept members (weight > 0)."""
        strategy = QueryMethod.get(method)
        if strategy.fused:
            return [f for f in self.form(behavior, method, layer) if f.weight > 0]
        member = self.members(method, layer)[0]
        psi, family = self.vector(behavior, member)
        return [FormedMember(method=method, layer=member[1], family=family, psi=psi,
                             projection=strategy.projection_scores)]

    def vector(self, behavior: Behavior, member: Member, versus: Sequence[Behavior] = ()) -> tuple[np.ndarray, str]:
        """``(psi, family)`` of one member: the form stage (a model pass unless cached); against the ``versus``
        behaviours, what the behaviour's vector asks that none of theirs (by the same method) shares
        (:func:`~actindex.query.constructions.specific`)."""
        method, layer = member
        family = self.family_of(method, layer)
        strategy, at = QueryMethod.get(method), self.resolve_layer(layer)
        psi = strategy.vector(self.context(), behavior, at)
        if versus:
            psi = specific(psi, [strategy.vector(self.context(), other, at) for other in versus],
                           self.reader.typical(family))
        return psi, family

    # ---- search, fuse ---------------------------------------------------------------------------
    def search(self, psi: np.ndarray, family: str, k: int, bottom_k: int,
               projection: bool = False, allowed: np.ndarray | None = None) -> tuple[Ranking, Ranking]:
        """Top ``k`` and bottom ``bottom_k`` rows of one query vector: cosine search, or with ``projection`` the
        projection ``<v, psi>`` of every searchable row; only the rows ``allowed`` marks, when given."""
        if projection:
            valid = self.reader.table.searchable
            valid = valid if allowed is None else valid[allowed[valid]]
            scores = self.reader.projections(psi, family, valid)
            order = np.argsort(-scores, kind="stable")
            k = len(order) if k <= 0 else min(k, len(order))
            rev = order[::-1][: min(bottom_k, len(order))]
            return Ranking(scores[order[:k]], valid[order[:k]]), Ranking(scores[rev], valid[rev])
        top = Ranking(*self.reader.search(psi, k, family, allowed=allowed))
        bottom = (Ranking(*self.reader.search(psi, bottom_k, family, bottom=True, allowed=allowed)) if bottom_k
                  else Ranking.empty())
        return top, bottom

    def calibrator(self, psi: np.ndarray, family: str, projection: bool = False) -> tuple[float, float]:
        """``(center, scale)`` that calibrate one query vector's search scores, ``(s - center) / scale``: the median and
        1.4826 MAD of its cosines over the index's calibration sample, or for a projection method of its
        projections ``<v, psi>`` over every searchable row (what its search computes anyway)."""
        if projection:
            key = ("projection calibration", family, np.asarray(psi, np.float32).tobytes())
            return self.reader.remembered(key, lambda: robust_center_scale(self.reader.projections(psi, family)))
        return self.reader.calibration(psi, family, robust_center_scale)

    def member_rankings(self, formed: list[FormedMember], k: int, bottom_k: int,
                        allowed: np.ndarray | None = None, rows_read: Any = None) -> list[MemberRanking]:
        """Each member's searched rows (:func:`member_depth` of ``k`` and ``bottom_k``) and its calibration: the
        median and scaled MAD of its cosines over a seeded sample of the index's rows
        (:meth:`IndexReader.calibration_cosines`). ``rows_read``: the
        :class:`~actindex.index.reader.SharedCosines` the members score rows through (a fresh one by default)."""
        depth, bottom_depth = member_depth(k), member_depth(bottom_k)
        rows_read = rows_read or self.reader.shared_cosines()  # members of one family score the same rows once
        out = []
        for member in formed:
            psi, family = member.psi, member.family
            started = time.perf_counter()
            top, bottom = self.search(psi, family, depth, bottom_depth, member.projection, allowed)
            center, scale = self.reader.calibration(psi, family, robust_center_scale)
            self.timings["search"] = self.timings.get("search", 0.0) + time.perf_counter() - started
            out.append(MemberRanking(
                method=member.method, layer=member.layer, family=family, psi=psi, top=top.rows,
                bottom=bottom.rows,
                cosines=lambda rows, psi=psi, family=family: rows_read.cosines(psi, family, rows),
                center=center, scale=scale, weight=member.weight, notes=dict(member.notes),
            ))
        return out

    def fused(self, members: list[MemberRanking], fusion: str, k: int, bottom_k: int,
              orders: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[Ranking, Ranking]:
        """The fusion rule's ranking of each side (``orders``: :meth:`orders` of the members, when already made),
        cut at ``k`` (0: every ranked row) and ``bottom_k``: the rule's score orders it, with the calibrated score
        (:func:`~actindex.query.fusion.calibrated`) and the members' weighted cosine
        (:func:`~actindex.query.fusion.mean_cosines`) of every row."""
        rule = FusionRule.get(fusion)
        orders = orders if orders is not None else self.orders(members, fusion, bool(bottom_k))
        sides = []
        for side, n in ((TOP, k), (BOTTOM, bottom_k)):
            if side == BOTTOM and not bottom_k:
                sides.append(Ranking.empty())
                continue
            rows, scores = orders[side]
            rows, scores = (rows, scores) if n <= 0 else (rows[:n], scores[:n])
            shown = scores if rule.calibrated_score else calibrated(members, rows)
            sides.append(Ranking(scores, rows, shown, mean_cosines(members, rows)))
        return sides[0], sides[1]

    @staticmethod
    def orders(members: list[MemberRanking], fusion: str, bottom: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``side -> (rows, rule scores)``: the fusion rule's whole order of the top side (and the bottom)."""
        rule = FusionRule.get(fusion)
        return {side: rule.fuse(members, side) for side in ((TOP, BOTTOM) if bottom else (TOP,))}

    def fused_members(self, behavior: Behavior, method: str, config: QueryConfig, k: int, bottom_k: int,
                      allowed: np.ndarray | None, versus: Sequence[Behavior] = ()
                      ) -> tuple[list[MemberRanking], list[FormedMember], dict]:
        """``(members, unkept candidates, orders)`` of a fused query (against the ``versus`` behaviours): its members
        formed, searched (:meth:`member_rankings`) and fused (:meth:`orders`), kept by the index
        (:class:`FusedOrders`) under all they depend on."""
        fusion = config.resolved_fusion()
        where = json.dumps(config.where, sort_keys=True, default=str)
        content = behavior_digest(behavior)
        searching = tuple(sorted(self.reader.search_settings.items()))  # IVF nprobe, HNSW efSearch: other rows
        key = ("fused", content, method, config.layer, fusion, where, member_depth(k), member_depth(bottom_k),
               searching, tuple(behavior_digest(other) for other in versus))

        def compute() -> tuple[list[MemberRanking], list[FormedMember], dict]:
            ctx = self.context()
            choosing = time.perf_counter()
            formed = self.form(behavior, method, config.layer, versus)
            self.timings["members"] = time.perf_counter() - choosing - ctx.model_seconds
            rows_read = self.reader.shared_cosines()
            members = self.member_rankings([f for f in formed if f.weight > 0], k, bottom_k, allowed, rows_read)
            orders = self.orders(members, fusion, bool(bottom_k))
            rows_read.last.clear()  # the vectors of every fused row: not kept with the order
            return members, [f for f in formed if f.weight <= 0], orders

        return self.kept.get(key, compute)

    # ---- rerank -----------------------------------------------------------------------------------
    def rerank(self, behavior: Behavior, top: np.ndarray, bottom: np.ndarray,
               search_scores: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], config: QueryConfig,
               allowed: np.ndarray | None = None) -> tuple[list[Hit], list[Hit]]:
        """Re-score the search's ``top`` and ``bottom`` candidate rows (plus TF-IDF's top ``candidates``
        with ``recall``; only rows ``allowed`` marks) with exact influence and rank by it, and return the page
        ``config.offset`` onwards; hits keep their search's calibrated score and cosine (``search_scores(rows)``)."""
        pool = [top, bottom]
        if config.recall == "tfidf":
            pool.append(tfidf_recall(self.reader, behavior, config.candidates))
        rows = np.array(sorted(set(np.concatenate(pool).astype(int).tolist())), dtype=np.int64)
        rows = rows if allowed is None else rows[allowed[rows]]
        searched, cosines = search_scores(rows)
        result = row_influence(self.reader, self.context(), self.curvature(config.rerank), behavior, rows,
                               config.per_token, config.clusters)
        total = result.influence.total
        clusters = f" ({len(result.cluster_sizes)} pair clusters, max-|I| merge)" if result.cluster is not None else ""
        self.notes.append(f"reranked {len(rows)} candidates by exact {config.rerank} influence{clusters}")
        order = np.argsort(-total, kind="stable")
        skip = config.offset
        top_side = order[skip:] if config.k <= 0 else order[skip : skip + config.k]
        sides = (top_side, order[::-1][skip : skip + config.bottom_k])
        hits = []
        for side in sides:
            side_hits = self.hits(Ranking(searched[side], rows[side], searched[side], cosines[side]), skip)
            for hit, pos in zip(side_hits, side):
                hit.influence = float(total[pos])
                hit.module_scores = dict(zip(result.influence.modules, map(float, result.influence.per_module[pos])))
                if result.tokens is not None:
                    hit.token_scores = list(zip(result.tokens[pos], map(float, result.influence.per_token[pos])))
                    hit.token_response = result.response[pos]
            hits.append(side_hits)
        return hits[0], hits[1]

    def prefetch_gradient(self, behavior: Behavior, config: QueryConfig) -> None:
        """Before a reranked search, the rerank's query-gradient pass: it also gives the search its pair
        vectors, so the behaviour costs one model pass instead of two (not with ``clusters``, whose
        groups are only known after a pass of their own)."""
        if config.rerank is not None and config.clusters <= 1 and behavior.pairs:
            self.context().behavior_gradients(behavior, self.curvature(config.rerank).names)

    def hits(self, ranking: Ranking, skipped: int = 0) -> list[Hit]:
        """Hits (rank, row, id, score, calibrated score, cosine, snippet, record) of a ranking whose first row has
        rank ``skipped + 1``."""
        ids = self.reader.ids_of(ranking.rows)
        records = self.reader.records(ranking.rows)
        none = [None] * len(ranking.rows)
        calibrated_ = none if ranking.calibrated is None else ranking.calibrated
        cosines = none if ranking.cosines is None else ranking.cosines
        return [Hit(rank=skipped + i + 1, row=int(row), id=row_id, score=float(score), snippet=snippet_of(record),
                    record=record, calibrated=_float(c), cosine=_float(cos))
                for i, (score, row, row_id, record, c, cos) in enumerate(zip(ranking.scores, ranking.rows, ids,
                                                                             records, calibrated_, cosines))]

    # ---- the whole query ----------------------------------------------------------------------------
    def rank(self, config: QueryConfig, behavior: Behavior | None, vector: np.ndarray | None = None,
             family: str | None = None, versus: Sequence[Behavior] = ()) -> Ranked:
        """The ranked rows of both sides for a completed ``behavior`` (or a saved query ``vector`` of ``family``),
        before any hit is made: what :meth:`run` shows, and what ``filter`` and ``report`` read for every row
        (``k = 0``) without turning a million rows into hits. Only the rows ``config.where`` lets through are
        searched; each side starts after ``config.offset`` rows (a reranked query's candidates are the first
        ``candidates`` rows; the rerank pages them). ``versus``: completed behaviours the query asks against
        (docs/design.md#versus)."""
        method = config.resolved_method(needs_vector=vector is not None)
        strategy = QueryMethod.get(method)
        if config.rerank is not None:  # refused here, before any model pass
            if behavior is None:
                raise ActindexError("reranking needs the behaviour (its pairs form the query gradient)")
            self.curvature(config.rerank)  # nothing fitted: the error names fit-curvature
        if vector is None and behavior is None:
            raise ActindexError("query needs a behaviour or a query vector")
        if strategy.fused and vector is not None:
            raise ActindexError(f"--method {method} fuses rankings: it cannot search a saved vector; pick one of "
                                "its member methods for that")
        self.notes = list(behavior.notes) if behavior is not None and vector is None else []
        self.timings = {}
        name = behavior.name if behavior is not None else "vector"
        ctx = self.context() if vector is None else None
        if ctx is not None:
            ctx.start()
            self.prefetch_gradient(behavior, config)
        allowed = row_mask(self.reader, config.where)
        if allowed is not None:
            matching = int(np.count_nonzero(allowed[self.reader.table.searchable]))
            self.notes.append(f"only the rows where {describe_where(config.where)}: {matching} searchable rows")
        if versus:
            self.notes.append(f"versus {', '.join(repr(other.name) for other in versus)}: each query vector keeps what "
                              "the behaviour asks and theirs do not")
        skip = 0 if config.rerank else config.offset
        n = config.candidates if config.rerank else None
        k, bottom_k = deeper(n or config.k, skip), deeper(n or config.bottom_k, skip)
        if strategy.fused:
            members, unkept, orders = self.fused_members(behavior, method, config, k, bottom_k, allowed, versus)
            self.notes += strategy.choice_notes(behavior)
            fusion = config.resolved_fusion()
            fusing = time.perf_counter()
            top, bottom = self.fused(members, fusion, k, bottom_k, orders)
            self.timings["fusion"] = time.perf_counter() - fusing
            described = f"{fusion}(" + ", ".join(member_label(m.method, m.family) for m in members) + ")"
            return Ranked(method, described, page(top, skip), page(bottom, skip), None, members,
                          lambda rows: (calibrated(members, rows), mean_cosines(members, rows)), name, unkept,
                          allowed)
        if vector is None:
            vector, described = self.vector(behavior, self.members(method, config.layer)[0], versus)
        else:
            described = family or strategy.family(self.resolve_layer(config.layer))
        searching = time.perf_counter()
        projection = strategy.projection_scores
        top, bottom = self.search(vector, described, k, bottom_k, projection, allowed)
        center, scale = self.calibrator(vector, described, projection)
        self.timings["search"] = time.perf_counter() - searching
        psi, searched_family = vector, described

        def search_scores(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The calibrated score ``(s - center) / scale`` of each row's search score, and its cosine."""
            cosines = self.reader.cosines(psi, searched_family, rows)
            raw = self.reader.projections(psi, searched_family, rows) if projection else cosines
            return (raw - center) / scale, cosines

        def shown(ranking: Ranking) -> Ranking:
            """A side as it is shown: ordered by the search, scored on the calibrated scale (an increasing map of
            the search score, so the order holds), with its raw cosines."""
            z = (ranking.scores - center) / scale
            cosines = self.reader.cosines(psi, searched_family, ranking.rows) if projection else ranking.scores
            return Ranking(z, ranking.rows, z, cosines)

        return Ranked(method, described, page(shown(top), skip), page(shown(bottom), skip), vector, [],
                      search_scores, name, allowed=allowed)

    def run(self, config: QueryConfig, behavior: Behavior | None, vector: np.ndarray | None = None,
            family: str | None = None, name: str | None = None, versus: Sequence[Behavior] = ()) -> QueryResult:
        """Rank the rows for a completed ``behavior`` (or a saved query ``vector`` of ``family``; against the completed
        ``versus`` behaviours) and make the hits of both sides (reranked when asked)."""
        started = time.perf_counter()
        ranked = self.rank(config, behavior, vector, family, versus)
        ctx = self.context() if vector is None else None
        if config.rerank is not None:
            reranking = time.perf_counter()
            top_hits, bottom_hits = self.rerank(behavior, ranked.top.rows, ranked.bottom.rows, ranked.search_scores,
                                                config, ranked.allowed)
            self.timings["rerank"] = time.perf_counter() - reranking - (ctx.model_seconds if ctx else 0.0)
        else:
            top_hits, bottom_hits = self.hits(ranked.top, config.offset), self.hits(ranked.bottom, config.offset)
        if ctx is not None:
            self.timings["model pass"] = ctx.model_seconds
        label = name or (behavior.name if behavior is not None else "vector")
        method = ranked.method if config.rerank is None else f"{ranked.method}+{config.rerank}"
        answers = behavior.answers() if behavior is not None else []
        return QueryResult(behavior=label, method=method, family=ranked.family, top=top_hits, bottom=bottom_hits,
                           vector=ranked.vector, seconds=time.perf_counter() - started, notes=self.notes,
                           members=[describe(m) for m in ranked.members] + [describe(m) for m in ranked.unkept],
                           timings={k: round(v, 4) for k, v in self.timings.items()}, answers=answers)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def member_label(method: str, family: str) -> str:
    """``residual_change/18`` for a member named by its method, ``hybrid mean_activation/18`` for an adaptive one
    (named by its construction)."""
    return family if method in QueryMethod.registry else f"{method} {family}"


def describe(member: MemberRanking | FormedMember) -> dict[str, Any]:
    """A member as ``--explain`` and the JSON output show it (a candidate the adaptive choice did not keep has
    weight 0 and no calibration)."""
    calibration = {"median": member.center, "scale": member.scale} if isinstance(member, MemberRanking) else {}
    return {"method": member.method, "layer": member.layer, "family": member.family, "weight": member.weight,
            **calibration, **member.notes}
