"""The index as a Python object: a few verbs on one object, like a FAISS index.

    idx = actindex.Index.open("idx")
    res = idx.query(behavior="hallucination", k=20)      # ranked rows for a behaviour
    scores, rows = idx.search(vector, k=10, family="residual_change/18")  # raw vectors
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import curvature as _curvature  # noqa: E402,F401 - registers the ekfac query method
from .errors import ActindexError, IndexFileError
from .files import atomic_file, bytes_sha256
from .models import LoadedModel, default_single_layer, load_model
from .queries import (
    DEFAULT_VECTOR_METHOD,
    Behavior,
    EnsembleMethod,
    QueryContext,
    QueryMethod,
    complete_behavior,
    default_method,
    load_behavior,
    reciprocal_rank_fusion,
)
from .search import read_faiss_index, rows_disagree, search, search_bottom
from .store import MANIFEST, VECTORS, inside, read_manifest, structure_problem
from .vectors import GRADIENT


@dataclass
class Hit:
    """One ranked row."""

    rank: int
    row: int
    id: str
    score: float
    snippet: str
    record: dict[str, Any]
    influence: float | None = None  # exact influence when reranked (``score`` keeps the search score)
    module_scores: dict[str, float] | None = None  # per-module terms of ``influence`` (sum to it)
    token_scores: list[tuple[str, float]] | None = None  # per-token terms of ``influence`` (sum to it)

    def to_dict(self, with_record: bool = False) -> dict[str, Any]:
        out = {"rank": self.rank, "row": self.row, "id": self.id, "score": self.score, "snippet": self.snippet}
        if self.influence is not None:
            out["influence"] = self.influence
        if self.module_scores is not None:
            out["module_scores"] = self.module_scores
        if self.token_scores is not None:
            out["tokens"] = [t for t, _ in self.token_scores]
            out["token_scores"] = [s for _, s in self.token_scores]
        if with_record:
            out["record"] = self.record
        return out


@dataclass
class QueryResult:
    """Top (most positive) and bottom (most negative) rows for one behaviour and method."""

    behavior: str
    method: str
    family: str
    top: list[Hit]
    bottom: list[Hit] = field(default_factory=list)
    vector: np.ndarray | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dicts(self, with_record: bool = False) -> list[dict[str, Any]]:
        rows = [dict(h.to_dict(with_record), side="top") for h in self.top]
        return rows + [dict(h.to_dict(with_record), side="bottom") for h in self.bottom]

    def to_dataframe(self):  # pragma: no cover - needs pandas
        import pandas as pd

        return pd.DataFrame(self.to_dicts())

    def __len__(self) -> int:
        return len(self.top)

    def __iter__(self):
        return iter(self.top)


def _snippet(record: dict[str, Any], width: int = 160) -> str:
    from .data import normalise_record

    try:
        return normalise_record(Path("<index>"), 0, 0, record).snippet(width)
    except ActindexError:
        return json.dumps(record)[:width]


class Index:
    """A complete index directory opened for reading."""

    def __init__(self, root: str | Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest
        self._faiss: dict[str, Any] = {}
        self._model: LoadedModel | None = None
        self._query_cache: dict[tuple[str, str], np.ndarray] = {}  # (family, conversation) -> vector
        self._gradient_cache: dict[str, list[dict[str, Any]]] = {}  # the last behaviour gradient
        self._curvature: dict[str, Any] = {}  # kind -> fitted curvature.Curvature

    @classmethod
    def open(cls, root: str | Path) -> Index:
        """Open a complete index: its manifest (refused when edited, format 2), and the layout it promises
        checked against ``vectors.h5`` (rows, families, layers), so a damaged index fails here in one line."""
        idx = cls(root, read_manifest(root))
        problem = idx._file_problem(VECTORS) or layout_problem(idx.root, idx.manifest)
        if problem:
            raise IndexFileError(f"{problem}; run `actindex verify {idx.root}`")
        return idx

    def _file_problem(self, name: str) -> str | None:
        """A file the manifest checksums (format 2) whose bytes changed, when it is small enough to hash at
        once (:data:`HASH_ON_OPEN_BYTES`); larger files are spot-checked instead and left to ``verify``."""
        recorded = self.manifest.get("files", {}).get(name)
        path = inside(self.root, name)
        if recorded is None or not path.is_file() or path.stat().st_size > HASH_ON_OPEN_BYTES:
            return None
        if bytes_sha256(path) != recorded:
            return f"{path}: checksum mismatch: the file was replaced or damaged since the index was written"
        return None

    # ---- what is in it --------------------------------------------------------------------
    @property
    def families(self) -> dict[str, dict[str, Any]]:
        return self.manifest["families"]

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    @contextmanager
    def _h5(self) -> Iterator[h5py.File]:
        """``vectors.h5`` opened for reading; a damaged file is one :class:`IndexFileError` line."""
        path = inside(self.root, VECTORS)
        try:
            with h5py.File(path, "r") as f:
                yield f
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise IndexFileError(f"{path}: cannot be read ({reason}); run `actindex verify {self.root}`") from None

    @cached_property
    def _meta(self) -> dict[str, np.ndarray]:
        with self._h5() as f:
            return {key: f[key][()] for key in ("ids", "loss", "valid", "n_tokens", "n_response")}

    def ids(self) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else str(i) for i in self._meta["ids"]]

    def records(self, rows: list[int] | np.ndarray) -> list[dict[str, Any]]:
        """The original training rows (all their fields) at the given row numbers."""
        rows = [int(r) for r in rows]
        if not rows:
            return []
        order = np.argsort(rows)
        with self._h5() as f:
            values = f["record"][np.asarray(rows)[order]]
        out: list[Any] = [None] * len(rows)
        for pos, value in zip(order, values):
            out[pos] = json.loads(value.decode() if isinstance(value, bytes) else value)
        return out

    def vectors(self, family: str, rows: list[int] | np.ndarray | None = None) -> np.ndarray:
        """Stored vectors of a family (float32), all rows or the given ones."""
        self._check_family(family)
        with self._h5() as f:
            ds = f[f"vectors/{family}"]
            if rows is None:
                return ds[()].astype(np.float32)
            rows = np.asarray(rows, dtype=np.int64)
            order = np.argsort(rows)
            out = np.empty((len(rows), ds.shape[1]), np.float32)
            out[order] = ds[rows[order]]
            return out

    def _check_family(self, family: str) -> None:
        if family not in self.families:
            have = ", ".join(self.families)
            raise IndexFileError(f"{self.root} has no vector family {family!r} (it has: {have})")

    def faiss_index(self, family: str):
        """The family's FAISS index, read once and checked against ``vectors.h5``: its dimension, its row
        count, and :data:`SPOT_CHECK_ROWS` sampled rows whose vectors must be the stored ones (a FAISS file
        copied in from another index, or damaged, is refused)."""
        self._check_family(family)
        if family not in self._faiss:
            path = inside(self.root, self.families[family]["faiss"])
            problem = path.is_file() and self._file_problem(self.families[family]["faiss"])
            if problem:  # hashed before FAISS parses it: a damaged header can ask for absurd allocations
                raise IndexFileError(f"{problem}; run `actindex verify {self.root}`")
            try:
                index = read_faiss_index(path)
            except IndexFileError as err:
                raise IndexFileError(f"{err}; run `actindex verify {self.root}`") from None
            valid = np.flatnonzero(self._meta["valid"])
            if index.d != self.families[family]["dim"]:
                problem = f"has dimension {index.d}, the family {family!r} {self.families[family]['dim']}"
            elif index.ntotal != len(valid):
                problem = f"holds {index.ntotal} rows, but {len(valid)} rows of vectors.h5 are valid"
            else:
                rng = np.random.default_rng(zlib.crc32(family.encode()))
                sample = np.sort(rng.choice(valid, min(SPOT_CHECK_ROWS, len(valid)), replace=False))
                wrong = rows_disagree(index, sample, self.vectors(family, sample))
                if len(wrong):
                    problem = f"disagrees with vectors.h5 at row {int(wrong[0])} (copied from another index or damaged)"
            if problem:
                raise IndexFileError(f"{path}: FAISS index {problem}; run `actindex verify {self.root}`")
            self._faiss[family] = index
        return self._faiss[family]

    # ---- verbs ----------------------------------------------------------------------------
    def search(
        self, vector: np.ndarray, k: int = 10, family: str | None = None, bottom: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-``k`` (or bottom-``k``) rows for a raw vector: ``(scores, rows)`` 1-D arrays.

        ``k = 0`` returns every valid row. ``family`` defaults to the only/first family.
        """
        family = family or next(iter(self.families))
        index = self.faiss_index(family)
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != index.d:
            raise ActindexError(f"vector has dimension {vector.shape[1]}, family {family} has {index.d}")
        scores, rows = (search_bottom if bottom else search)(index, vector, k)
        keep = rows[0] >= 0
        scores, rows = scores[0][keep], rows[0][keep]
        if len(scores) and not (np.isfinite(scores).all() and np.abs(scores).max() <= MAX_COSINE):
            worst = scores[~(np.isfinite(scores) & (np.abs(scores) <= MAX_COSINE))][0]
            raise IndexFileError(
                f"{self.root}: the FAISS index of {family!r} returned the impossible cosine {worst:.4g}: it is "
                f"damaged; run `actindex verify {self.root}`"
            )
        return scores, rows

    def model(self, name: str | None = None, device: str | None = None, dtype: str | None = None) -> LoadedModel:
        """The model the index was built with (loaded once and kept), checked against the manifest."""
        if self._model is None:
            built = self.manifest["model"]
            self._model = load_model(name or built["name"], device, dtype or "auto")
        self.check_model(self._model)
        return self._model

    def companion_model(self, model: LoadedModel | str, option: str) -> LoadedModel:
        """Another model that works on the index's rows (``option`` names it in errors): loaded like the
        index's model when given as a path, and refused unless its tokenizer is the index's (the rows'
        tokens must mean the same to both)."""
        if isinstance(model, str):
            model = load_model(model, str(self.model().device), "auto")
        if model.tokenizer_id() != self.manifest["model"]["tokenizer"]:
            raise IndexFileError(f"{option} {model.name!r} has another tokenizer than the index {self.root}'s model; "
                                 "the same text would be other tokens to it")
        return model

    def use_model(self, lm: LoadedModel) -> Index:
        """Use an already loaded model for queries (notebooks, tests); checked against the manifest."""
        self.check_model(lm)
        if lm is not self._model:
            self._query_cache.clear()
            self._gradient_cache.clear()
        self._model = lm
        return self

    def check_model(self, lm: LoadedModel) -> None:
        built = self.manifest["model"]
        if lm.fingerprint != built["fingerprint"]:
            raise IndexFileError(
                f"{self.root} was built with model {built['name']!r} (weights {built['fingerprint'][:12]}), "
                f"but the query model {lm.name!r} has weights {lm.fingerprint[:12]}; query with the same model"
            )
        if lm.tokenizer_id() != built["tokenizer"]:
            raise IndexFileError(
                f"{self.root} was built with another tokenizer than {lm.name!r}'s; query with the same tokenizer"
            )

    def resolve_layer(self, layer: int | None) -> int:
        if layer is None:
            return default_single_layer(self.layers, self.manifest["model"]["num_layers"])
        if layer not in self.layers:
            raise IndexFileError(
                f"{self.root} has no vectors for layer {layer} (it was built with --layers "
                f"{','.join(map(str, self.layers))})"
            )
        return layer

    def query_vector(
        self, behavior: str | Behavior, method: str = DEFAULT_VECTOR_METHOD, layer: int | None = None
    ) -> tuple[np.ndarray, str, Behavior]:
        """``(psi, family, behaviour)``: the query vector of a behaviour for one method."""
        strategy = QueryMethod.get(method)
        layer = self.resolve_layer(layer)
        family = self.method_family(method, layer)
        ctx = self.query_context(layer)
        behavior = load_behavior(behavior) if isinstance(behavior, str) else behavior
        behavior = complete_behavior(behavior, ctx.lm)
        return strategy.vector(ctx, behavior), family, behavior

    def method_family(self, method: str, layer: int | None = None) -> str:
        """The stored family a query method searches at a layer, refused when the index lacks it."""
        strategy = QueryMethod.get(method)
        family = strategy.family(self.resolve_layer(layer))
        if family not in self.families:
            hint = " rebuild with --grad" if strategy.kind == GRADIENT else " rebuild with the family switched on"
            raise IndexFileError(f"method {method} needs the {family!r} vectors, which {self.root} lacks;{hint}")
        return family

    def query_context(self, layer: int | None = None) -> QueryContext:
        """The model and vector settings that compute query-side vectors exactly as the build did."""
        projection = self.manifest["projection"]
        build = self.manifest["build"]
        return QueryContext(
            lm=self.model(),
            layer=self.resolve_layer(layer),
            grad_modules=projection["modules"],
            grad_k=projection["k"],
            seed=projection["seed"],
            max_length=build.get("max_length", 512),
            batch_size=build.get("batch_size", 8),
            layers=self.layers,
            cache=self._query_cache,
            curvature=self.curvature,
            families=tuple(self.families),
            gradients=self._gradient_cache,
        )

    def query(
        self,
        behavior: str | Behavior | None = None,
        method: str | None = None,
        layer: int | None = None,
        k: int = 10,
        bottom_k: int = 0,
        vector: np.ndarray | None = None,
        family: str | None = None,
        rerank: str | None = None,
        candidates: int = 100,
        per_token: bool = False,
        clusters: int = 0,
        recall: str | None = None,
    ) -> QueryResult:
        """Rank the training rows for a behaviour (or a saved query ``vector`` of ``family``).

        ``method`` defaults to ``ensemble`` (rank fusion over the indexed layers), or to
        ``residual-change`` for a saved ``vector``.

        ``rerank="ekfac"|"linfac"`` re-scores the top-``candidates`` and bottom-``candidates`` search
        (or fused) results (plus the top-``candidates`` of ``recall="tfidf"``) with exact influence and ranks by it
        (:mod:`actindex.rerank`); ``per_token`` adds per-token terms, ``clusters`` one query per k-means
        cluster of the behaviour's pairs.
        """
        started = time.perf_counter()
        method = method or default_method(needs_vector=vector is not None)
        strategy = QueryMethod.get(method)
        if rerank is not None:  # refused here, before any model pass
            from .rerank import RECALLS

            if candidates < 1:
                raise ActindexError(f"--candidates must be at least 1, got {candidates}")
            if behavior is None:
                raise ActindexError("reranking needs the behaviour (its pairs form the query gradient)")
            if recall is not None and recall not in RECALLS:
                raise ActindexError(f"unknown --recall {recall!r}: expected one of {', '.join(RECALLS)}")
            self.curvature(rerank)  # nothing fitted: the error names fit-curvature
        exact = dict(kind=rerank, candidates=candidates, per_token=per_token, clusters=clusters, recall=recall)
        if isinstance(strategy, EnsembleMethod):
            if vector is not None:
                raise ActindexError("--method ensemble fuses rankings: it cannot search a saved vector; pick one "
                                    "of its member methods for that")
            return self._ensemble_query(behavior, strategy, layer, k, bottom_k, started, exact)
        notes: list[str] = []
        saved = vector is not None
        if vector is None:
            if behavior is None:
                raise ActindexError("query needs a behaviour or a query vector")
            behavior = complete_behavior(load_behavior(behavior) if isinstance(behavior, str) else behavior,
                                         self.model())
            self._prefetch_gradient(behavior, exact)
            vector, family, completed = self.query_vector(behavior, method, layer)
            name, notes = completed.name, list(completed.notes)
        else:
            family = family or strategy.family(self.resolve_layer(layer))
            name = behavior if isinstance(behavior, str) else "vector"
        if rerank is not None:
            source = completed if not saved else load_behavior(behavior) if isinstance(behavior, str) else behavior
            if strategy.projection_scores:
                (_, top), (_, bottom) = self._projection_ranking(vector, family, candidates, candidates)
            else:
                top = self.search(vector, candidates, family)[1]
                bottom = self.search(vector, candidates, family, bottom=True)[1]
            top_hits, bottom_hits = self._rerank(
                source, top, bottom, lambda rows: self._vector_scores(strategy, vector, family, rows), k, bottom_k,
                notes, **exact,
            )
        else:
            if strategy.projection_scores:
                top, bottom = self._projection_ranking(vector, family, k, bottom_k)
            else:
                top = self.search(vector, k, family)
                bottom = self.search(vector, bottom_k, family, bottom=True) if bottom_k else (np.zeros(0), np.zeros(0))
            top_hits, bottom_hits = self._hits(*top), self._hits(*bottom)
        return QueryResult(
            behavior=name,
            method=method if rerank is None else f"{method}+{rerank}",
            family=family,
            top=top_hits,
            bottom=bottom_hits,
            vector=vector,
            seconds=time.perf_counter() - started,
            notes=notes,
        )

    def _ensemble_query(
        self, behavior: str | Behavior | None, strategy: EnsembleMethod, layer: int | None, k: int, bottom_k: int,
        started: float, exact: dict[str, Any],
    ) -> QueryResult:
        """The ensemble's ranking; with ``exact["kind"]`` its top and bottom ``candidates`` reranked."""
        if behavior is None:
            raise ActindexError("query needs a behaviour or a query vector")
        # loaded and completed once: the members then share its pair vectors through the query cache
        behavior = complete_behavior(load_behavior(behavior) if isinstance(behavior, str) else behavior, self.model())
        notes = list(behavior.notes)
        self._prefetch_gradient(behavior, exact)
        if exact["kind"] is None:
            top, bottom, family = self._fused_ranking(behavior, strategy, layer, k, bottom_k)
            top_hits, bottom_hits = self._hits(*top), self._hits(*bottom)
        else:
            n = exact["candidates"]
            top, bottom, family = self._fused_ranking(behavior, strategy, layer, n, n)
            fused = dict(zip(bottom[1].tolist(), bottom[0].tolist())) | dict(zip(top[1].tolist(), top[0].tolist()))
            top_hits, bottom_hits = self._rerank(
                behavior, top[1], bottom[1], lambda rows: np.array([fused.get(int(r), 0.0) for r in rows]), k,
                bottom_k, notes, **exact,
            )
        method = strategy.name if exact["kind"] is None else f"{strategy.name}+{exact['kind']}"
        return QueryResult(behavior=behavior.name, method=method, family=family, top=top_hits, bottom=bottom_hits,
                           seconds=time.perf_counter() - started, notes=notes)

    def _prefetch_gradient(self, behavior: Behavior, exact: dict[str, Any]) -> None:
        """Before a reranked search, the rerank's query-gradient pass: it also gives the search its pair
        vectors, so the behaviour costs one model pass instead of two (not with ``clusters``, whose
        groups are only known after a pass of their own)."""
        if exact["kind"] is not None and exact["clusters"] <= 1 and behavior.pairs:
            self.query_context().behavior_gradients(behavior, self.curvature(exact["kind"]).names)

    def _fused_ranking(
        self, behavior: Behavior, strategy: EnsembleMethod, layer: int | None, k: int, bottom_k: int
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
        """Fuse the members' rankings (:class:`queries.EnsembleMethod`) over every indexed layer, or over
        ``layer`` alone when given: ``(top (scores, rows), bottom (-scores, rows), family)``. Each member
        searches deep enough (``max(1000, 10 k)`` rows, every row for ``k = 0``) for the fused top ``k``
        to be stable; bottom rows fuse the members' bottom rankings and carry minus their fused score."""
        layers = self.layers if layer is None else [self.resolve_layer(layer)]
        members = [(m, at) for m in strategy.members for at in layers
                   if QueryMethod.get(m).family(at) in self.families]
        if not members:
            raise IndexFileError(f"method ensemble needs residual-change vectors, which {self.root} lacks")
        depth = 0 if k <= 0 else max(1000, 10 * k)
        tops, bottoms = [], []
        for method, at in members:
            psi, family, _ = self.query_vector(behavior, method, at)
            tops.append(self.search(psi, depth, family)[1])
            if bottom_k:
                bottoms.append(self.search(psi, max(1000, 10 * bottom_k), family, bottom=True)[1])
        top_score = reciprocal_rank_fusion(tops, len(self))
        ranked = np.flatnonzero(top_score > 0)
        ranked = ranked[np.argsort(-top_score[ranked], kind="stable")]
        ranked = ranked if k <= 0 else ranked[:k]
        low = np.zeros(0, dtype=np.int64)
        bottom_score = np.zeros(len(self))
        if bottom_k:
            bottom_score = reciprocal_rank_fusion(bottoms, len(self))
            low = np.flatnonzero(bottom_score > 0)
            low = low[np.argsort(-bottom_score[low], kind="stable")][:bottom_k]
        family = "rrf(" + ", ".join(QueryMethod.get(m).family(at) for m, at in members) + ")"
        return (top_score[ranked], ranked), (-bottom_score[low], low), family

    # ---- curvature and exact influence (DESIGN 5) -------------------------------------------
    def fit_curvature(self, config: Any = None, progress: bool = True, **kwargs: Any) -> dict[str, Any]:
        """Fit EK-FAC and/or LinFAC factors on a sample of the rows and store them in the index
        (``kind``, ``samples``, ``modules``, ``sublayer``, ``empirical_fisher``, ``damping``: see
        :class:`~actindex.curvature.CurvatureConfig`)."""
        from .curvature import fit_curvature

        return fit_curvature(self, config, progress, **kwargs)

    def curvature(self, kind: str = "ekfac") -> Any:
        """The stored factors of ``kind`` (``ekfac`` or ``linfac``), loaded once."""
        from .curvature import load_curvature

        if kind not in self._curvature:
            self._curvature[kind] = load_curvature(self, kind)
        return self._curvature[kind]

    def influence(
        self,
        behavior: str | Behavior,
        kind: str = "ekfac",
        rows: list[int] | np.ndarray | None = None,
        per_token: bool = False,
        clusters: int = 0,
        progress: bool = False,
    ) -> Any:
        """Exact influence of ``rows`` (default: every valid row) on a behaviour, a
        :class:`~actindex.rerank.RowInfluence` (``.rows``, ``.influence.total``, ``.per_module``...)."""
        from .rerank import row_influence

        return row_influence(self, behavior, kind, rows, per_token, clusters, progress)

    def _rerank(
        self, behavior: Any, top: np.ndarray, bottom: np.ndarray, search_scores: Callable[[np.ndarray], np.ndarray],
        k: int, bottom_k: int, notes: list[str], kind: str, candidates: int, per_token: bool, clusters: int,
        recall: str | None,
    ) -> tuple[list[Hit], list[Hit]]:
        """Re-score the search's ``top`` and ``bottom`` candidate rows (plus TF-IDF's top ``candidates``
        with ``recall``) with exact influence and rank by it; hits keep their ``search_scores(rows)``."""
        from .rerank import tfidf_recall

        pool = [top, bottom]
        if recall == "tfidf":
            behavior = complete_behavior(behavior, self.model())
            pool.append(tfidf_recall(self, behavior, candidates))
        rows = np.array(sorted(set(np.concatenate(pool).astype(int).tolist())), dtype=np.int64)
        searched = search_scores(rows)
        result = self.influence(behavior, kind, rows, per_token, clusters)
        total = result.influence.total
        notes.append(f"reranked {len(rows)} candidates by exact {kind} influence"
                     + (f" ({len(result.cluster_sizes)} pair clusters, max-|I| merge)" if result.cluster is not None
                        else ""))
        order = np.argsort(-total, kind="stable")
        k = len(order) if k <= 0 else min(k, len(order))
        sides = (order[:k], order[::-1][: min(bottom_k, len(order))])
        hits = []
        for side in sides:
            side_hits = self._hits(searched[side], rows[side])
            for hit, pos in zip(side_hits, side):
                hit.influence = float(total[pos])
                hit.module_scores = dict(zip(result.influence.modules, map(float, result.influence.per_module[pos])))
                if result.tokens is not None:
                    hit.token_scores = list(zip(result.tokens[pos], map(float, result.influence.per_token[pos])))
            hits.append(side_hits)
        return hits[0], hits[1]

    def _vector_scores(self, strategy: QueryMethod, vector: np.ndarray, family: str, rows: np.ndarray) -> np.ndarray:
        """The search scores of ``rows``: cosine with the stored vectors, or their projection on ``psi``."""
        from .search import normalise

        stored = self.vectors(family, rows)
        if strategy.projection_scores:
            return stored @ (vector / np.linalg.norm(vector))
        return normalise(stored) @ normalise(vector)[0]

    def _projection_ranking(self, vector: np.ndarray, family: str, k: int, bottom_k: int):
        """Rank by the projection ``<v_i, psi>`` of the raw stored vectors (activation baseline)."""
        valid = np.flatnonzero(self._meta["valid"])
        scores = self.vectors(family, valid) @ (vector / np.linalg.norm(vector))
        order = np.argsort(-scores, kind="stable")
        k = len(order) if k <= 0 else min(k, len(order))
        top = (scores[order[:k]], valid[order[:k]])
        rev = order[::-1][: min(bottom_k, len(order))]
        return top, (scores[rev], valid[rev])

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        ids = self._meta["ids"]
        records = self.records(rows)
        return [
            Hit(
                rank=i + 1,
                row=int(row),
                id=ids[row].decode() if isinstance(ids[row], bytes) else str(ids[row]),
                score=float(score),
                snippet=_snippet(record),
                record=record,
            )
            for i, (score, row, record) in enumerate(zip(scores, rows, records))
        ]


#: files up to this size are hashed against the manifest when first read (vectors.h5 and the FAISS files of
#: a 10k-row index: about 25 ms each); larger ones are spot-checked and left to ``actindex verify``
HASH_ON_OPEN_BYTES = 64 << 20
#: rows of each FAISS index compared with vectors.h5 when a query first reads it (``verify`` compares all)
SPOT_CHECK_ROWS = 16
#: the largest cosine a search may return: 1 for exact indexes, a little more for quantised codes
MAX_COSINE = 1.5


def layout_problem(root: Path, manifest: dict[str, Any]) -> str | None:
    """The first way the manifest's promises disagree with ``vectors.h5`` (cheap: shapes only), or ``None``:
    ``rows`` rows in every per-row dataset, ``(rows, dim)`` per family, and layers that match the families
    (every per-layer family at a listed layer, every listed layer inside the model)."""
    problem = structure_problem(manifest)
    if problem:
        return f"{root / MANIFEST}: {problem}"
    rows = int(manifest["rows"])
    families = {name: int(fam["dim"]) for name, fam in manifest["families"].items()}
    try:
        with h5py.File(inside(root, VECTORS), "r") as f:
            if "ids" not in f or f["ids"].shape != (rows,):
                have = f["ids"].shape[0] if "ids" in f else "no"
                return f"{root / VECTORS}: holds {have} rows, the manifest says {rows}"
            for name, dim in families.items():
                key = f"vectors/{name}"
                if key not in f or f[key].shape != (rows, dim):
                    shape = f[key].shape if key in f else "nothing"
                    return f"{root / VECTORS}: family {name!r} has shape {shape}, the manifest says ({rows}, {dim})"
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # h5py's errors for a damaged file
        return f"{root / VECTORS}: cannot be read as HDF5 ({(str(err).splitlines() or ['?'])[0]})"
    return None


def save_query_vector(path: str | Path, vector: np.ndarray, meta: dict[str, Any]) -> None:
    """Save a query vector with its settings as ``.npz`` (no pickle)."""
    with atomic_file(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, vector=np.asarray(vector, np.float32), meta=np.array(json.dumps(meta)))


def load_query_vector(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return data["vector"], json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise ActindexError(f"{path}: not a saved actindex query vector ({err})") from None
