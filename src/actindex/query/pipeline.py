"""Stage 9 — the query pipeline: a behaviour becomes ranked rows in four explicit stages.

    members  = method.members(...)                    which (method, layer) rankings the answer is made of
    vectors  = form(member)                           psi per member (model pass; cached by the context)
    rankings = search(member, psi)                    FAISS cosine, or the projection <v, psi>
    ranking  = fuse(rankings)                         one member: itself; several: the fusion rule
    hits     = rerank(ranking) if asked               exact EK-FAC / LinFAC influence on the candidates

:class:`QueryConfig` holds every setting (the CLI's ``query`` options are made from it); the
components are injected (the :class:`~actindex.index.reader.IndexReader`, a
:class:`~actindex.query.context.QueryContext` for model passes, the fitted curvature), as TRAKer injects
its projector and score computer. Nothing below this module imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.configs import check_choices, option
from actindex.errors import ActindexError, IndexFileError
from actindex.query.fusion import FusionRule
from actindex.query.methods import Member, QueryMethod, default_method, method_names
from actindex.query.rerank import RECALLS, row_influence, tfidf_recall
from actindex.query.result import Hit, QueryResult, snippet_of

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


def _kinds() -> list[str]:
    from actindex.query.curvature import kind_names

    return kind_names()


def _fusions() -> list[str]:
    return list(FusionRule.registry)


@dataclass
class QueryConfig:
    """Settings of one query: how a behaviour's rows are ranked, how many are returned, how they are reranked."""

    method: str | None = option(
        "Query method (see --help-methods). Default: ensemble (rank fusion over the indexed layers); "
        "residual-change with --save-query or --query-vector (one vector).", None, choices=method_names)
    layer: int | None = option("Layer to query (default: the indexed layer nearest 60% of the depth; ensemble: "
                               "every indexed layer).", None)
    k: int = option("Rows to return; 0 = every row.", 10, minimum=0, flag="--top-k")
    bottom_k: int = option("Also return the k most negative rows.", 0, minimum=0)
    fusion: str = option("How a fused method (ensemble) combines its members' rankings.", "rrf", choices=_fusions)
    rerank: str | None = option("Re-score the candidates with exact influence (needs `actindex fit-curvature`) and "
                                "rank by it.", None, choices=_kinds)
    candidates: int = option("With --rerank: top-K and bottom-K search results re-scored.", 100, minimum=1)
    per_token: bool = option("With --rerank: per-token influence ([[+token]] marks in tables).", False)
    clusters: int = option("With --rerank: one query per k-means cluster of the behaviour's pairs (max-|I| merge).",
                           0, minimum=0)
    recall: str | None = option("With --rerank: add lexical candidates.", None, choices=RECALLS)

    def __post_init__(self) -> None:
        check_choices(self)
        if (self.per_token or self.clusters or self.recall) and not self.rerank:
            raise ActindexError("--per-token, --clusters and --recall refine a rerank: add --rerank ekfac|linfac")

    def resolved_method(self, needs_vector: bool = False) -> str:
        """The method asked for, or the default (``ensemble``; ``residual-change`` for a saved vector)."""
        return self.method or default_method(needs_vector)


@dataclass
class Ranking:
    """Ranked rows of one side: row numbers best first and the score the ranking ordered them by."""

    scores: np.ndarray
    rows: np.ndarray

    @classmethod
    def empty(cls) -> Ranking:
        return cls(np.zeros(0), np.zeros(0, np.int64))


@dataclass
class QueryPipeline:
    """The stages of a query over one index (see the module docstring); components are injected."""

    reader: IndexReader
    context: Callable[[], QueryContext]
    curvature: Callable[[str], Any]
    notes: list[str] = field(default_factory=list)

    # ---- members and their vectors ----------------------------------------------------------
    def resolve_layer(self, layer: int | None) -> int:
        """``layer``, checked against the index, or the indexed layer nearest 60% of the depth."""
        from actindex.core.models import default_single_layer

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
        """The (method, layer) rankings a method's answer is made of."""
        strategy = QueryMethod.get(method)
        if not strategy.fused:
            return [(method, self.resolve_layer(layer))]
        at = None if layer is None else self.resolve_layer(layer)
        found = strategy.members(self.reader.layers, at, tuple(self.reader.families))
        if not found:
            raise IndexFileError(f"method {method} needs residual-change vectors, which {self.reader.root} lacks")
        return found

    def vector(self, behavior: Behavior, member: Member) -> tuple[np.ndarray, str]:
        """``(psi, family)`` of one member: the form stage (a model pass unless cached)."""
        method, layer = member
        family = self.family_of(method, layer)
        return QueryMethod.get(method).vector(self.context(), behavior, self.resolve_layer(layer)), family

    # ---- search, fuse ---------------------------------------------------------------------------
    def search(self, method: str, psi: np.ndarray, family: str, k: int, bottom_k: int) -> tuple[Ranking, Ranking]:
        """Top ``k`` and bottom ``bottom_k`` rows of one member: cosine search, or the projection ``<v, psi>``
        of every searchable row for projection methods."""
        if QueryMethod.get(method).projection_scores:
            valid = self.reader.table.searchable
            scores = self.reader.projections(psi, family, valid)
            order = np.argsort(-scores, kind="stable")
            k = len(order) if k <= 0 else min(k, len(order))
            rev = order[::-1][: min(bottom_k, len(order))]
            return Ranking(scores[order[:k]], valid[order[:k]]), Ranking(scores[rev], valid[rev])
        top = Ranking(*self.reader.search(psi, k, family))
        bottom = Ranking(*self.reader.search(psi, bottom_k, family, bottom=True)) if bottom_k else Ranking.empty()
        return top, bottom

    def fused(self, behavior: Behavior, members: list[Member], fusion: str, k: int,
              bottom_k: int) -> tuple[Ranking, Ranking, str]:
        """Fuse the members' rankings: each member searches deep enough (``max(1000, 10 k)`` rows, every row
        for ``k = 0``) for the fused top ``k`` to be stable; bottom rows fuse the members' bottom rankings and
        carry minus their fused score. Returns ``(top, bottom, family description)``."""
        rule = FusionRule.get(fusion)
        depth = 0 if k <= 0 else max(1000, 10 * k)
        tops, bottoms, families = [], [], []
        for member in members:
            psi, family = self.vector(behavior, member)
            families.append(family)
            top, bottom = self.search(member[0], psi, family, depth, max(1000, 10 * bottom_k) if bottom_k else 0)
            tops.append(top.rows)
            bottoms.append(bottom.rows)
        n = len(self.reader)
        top_score = rule.fuse(tops, n)
        ranked = np.flatnonzero(top_score > 0)
        ranked = ranked[np.argsort(-top_score[ranked], kind="stable")]
        ranked = ranked if k <= 0 else ranked[:k]
        low, bottom_score = np.zeros(0, dtype=np.int64), np.zeros(n)
        if bottom_k:
            bottom_score = rule.fuse(bottoms, n)
            low = np.flatnonzero(bottom_score > 0)
            low = low[np.argsort(-bottom_score[low], kind="stable")][:bottom_k]
        description = f"{fusion}(" + ", ".join(families) + ")"
        return Ranking(top_score[ranked], ranked), Ranking(-bottom_score[low], low), description

    # ---- rerank -----------------------------------------------------------------------------------
    def rerank(self, behavior: Behavior, top: np.ndarray, bottom: np.ndarray,
               search_scores: Callable[[np.ndarray], np.ndarray], config: QueryConfig) -> tuple[list[Hit], list[Hit]]:
        """Re-score the search's ``top`` and ``bottom`` candidate rows (plus TF-IDF's top ``candidates``
        with ``recall``) with exact influence and rank by it; hits keep their ``search_scores(rows)``."""
        pool = [top, bottom]
        if config.recall == "tfidf":
            pool.append(tfidf_recall(self.reader, behavior, config.candidates))
        rows = np.array(sorted(set(np.concatenate(pool).astype(int).tolist())), dtype=np.int64)
        searched = search_scores(rows)
        result = row_influence(self.reader, self.context(), self.curvature(config.rerank), behavior, rows,
                               config.per_token, config.clusters)
        total = result.influence.total
        clusters = f" ({len(result.cluster_sizes)} pair clusters, max-|I| merge)" if result.cluster is not None else ""
        self.notes.append(f"reranked {len(rows)} candidates by exact {config.rerank} influence{clusters}")
        order = np.argsort(-total, kind="stable")
        k = len(order) if config.k <= 0 else min(config.k, len(order))
        sides = (order[:k], order[::-1][: min(config.bottom_k, len(order))])
        hits = []
        for side in sides:
            side_hits = self.hits(Ranking(searched[side], rows[side]))
            for hit, pos in zip(side_hits, side):
                hit.influence = float(total[pos])
                hit.module_scores = dict(zip(result.influence.modules, map(float, result.influence.per_module[pos])))
                if result.tokens is not None:
                    hit.token_scores = list(zip(result.tokens[pos], map(float, result.influence.per_token[pos])))
            hits.append(side_hits)
        return hits[0], hits[1]

    def prefetch_gradient(self, behavior: Behavior, config: QueryConfig) -> None:
        """Before a reranked search, the rerank's query-gradient pass: it also gives the search its pair
        vectors, so the behaviour costs one model pass instead of two (not with ``clusters``, whose
        groups are only known after a pass of their own)."""
        if config.rerank is not None and config.clusters <= 1 and behavior.pairs:
            self.context().behavior_gradients(behavior, self.curvature(config.rerank).names)

    def hits(self, ranking: Ranking) -> list[Hit]:
        """Hits (rank, row, id, score, snippet, record) of a ranking."""
        ids = self.reader.ids()
        records = self.reader.records(ranking.rows)
        return [Hit(rank=i + 1, row=int(row), id=ids[row], score=float(score), snippet=snippet_of(record),
                    record=record)
                for i, (score, row, record) in enumerate(zip(ranking.scores, ranking.rows, records))]

    # ---- the whole query ----------------------------------------------------------------------------
    def run(self, config: QueryConfig, behavior: Behavior | None, vector: np.ndarray | None = None,
            family: str | None = None, name: str | None = None) -> QueryResult:
        """Rank the rows for a completed ``behavior`` (or a saved query ``vector`` of ``family``)."""
        started = time.perf_counter()
        method = config.resolved_method(needs_vector=vector is not None)
        strategy = QueryMethod.get(method)
        if config.rerank is not None:  # refused here, before any model pass
            if behavior is None:
                raise ActindexError("reranking needs the behaviour (its pairs form the query gradient)")
            self.curvature(config.rerank)  # nothing fitted: the error names fit-curvature
        if vector is None and behavior is None:
            raise ActindexError("query needs a behaviour or a query vector")
        if strategy.fused and vector is not None:
            raise ActindexError("--method ensemble fuses rankings: it cannot search a saved vector; pick one of its "
                                "member methods for that")
        self.notes = list(behavior.notes) if behavior is not None and vector is None else []
        if behavior is not None and vector is None:
            self.prefetch_gradient(behavior, config)
        n = config.candidates if config.rerank else None
        if strategy.fused:
            top, bottom, described = self.fused(behavior, self.members(method, config.layer), config.fusion,
                                                n or config.k, n or config.bottom_k)
            fused = dict(zip(bottom.rows.tolist(), bottom.scores.tolist())) | dict(zip(top.rows.tolist(),
                                                                                       top.scores.tolist()))
            search_scores = lambda rows: np.array([fused.get(int(r), 0.0) for r in rows])  # noqa: E731
        else:
            if vector is None:
                vector, described = self.vector(behavior, self.members(method, config.layer)[0])
            else:
                described = family or strategy.family(self.resolve_layer(config.layer))
            top, bottom = self.search(method, vector, described, n or config.k, n or config.bottom_k)
            psi, searched_family = vector, described
            search_scores = lambda rows: (  # noqa: E731
                self.reader.projections(psi, searched_family, rows) if strategy.projection_scores
                else self.reader.cosines(psi, searched_family, rows))
        if config.rerank is not None:
            top_hits, bottom_hits = self.rerank(behavior, top.rows, bottom.rows, search_scores, config)
        else:
            top_hits, bottom_hits = self.hits(top), self.hits(bottom)
        label = name or (behavior.name if behavior is not None else "vector")
        return QueryResult(behavior=label, method=method if config.rerank is None else f"{method}+{config.rerank}",
                           family=described, top=top_hits, bottom=bottom_hits,
                           vector=None if strategy.fused else vector, seconds=time.perf_counter() - started,
                           notes=self.notes)
