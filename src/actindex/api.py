"""The index as a Python object: a few verbs on one object, like a FAISS index.

    idx = actindex.Index.open("idx")
    res = idx.query("hallucination", k=20)                 # ranked rows for a behaviour (method adaptive)
    res.to_pandas(); res.to_json()                          # the rows as a table, as JSON text
    scores, rows = idx.search(vector, k=10, family="residual_change/18")  # raw vectors
    idx.fit_curvature(kind="ekfac"); idx.influence("hallucination")        # exact influence

:class:`Index` is a small facade: it holds the :class:`~actindex.index.reader.IndexReader` (``idx.reader``:
what is on disk, its rows, vectors and FAISS indexes) and a :class:`~actindex.query.session.QuerySession`
(``idx.session``: the model, the query context, the curvature and the behaviour cache, what the CLI, the
server and the other stages drive), and offers the verbs a user needs, with every option a keyword argument.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from actindex.errors import ActindexError
from actindex.files import atomic_file
from actindex.index.reader import IndexReader
from actindex.query.cache import CacheConfig
from actindex.query.curvature.config import CurvatureConfig
from actindex.query.pipeline import QueryConfig, Ranked
from actindex.query.result import Hit, QueryResult
from actindex.query.session import ModelNeeded, QuerySession
from actindex.query.where import row_mask

if TYPE_CHECKING:
    from actindex.core.models import LoadedModel
    from actindex.index.manifest import FamilyInfo, Manifest
    from actindex.index.memorisation import Memorisation
    from actindex.query.behaviors import Behavior
    from actindex.query.curvature.kron import Curvature
    from actindex.query.rerank import RowInfluence

__all__ = ["Hit", "Index", "ModelNeeded", "QueryResult", "load_query_vector", "save_query_vector"]

Q = QueryConfig  # the query options' defaults are the config's own
C = CurvatureConfig


class Index:
    """A complete index directory opened for reading, with the model it was built with and the query verbs.

    ``Index.open(root)`` checks the index and holds its ``vectors.h5`` open (a writer replaces the file by a
    rename, so reads keep seeing the index as it was opened); ``close()``, or ``with Index.open(...) as idx:``,
    lets it go. ``cache`` (default on) keeps each behaviour's model-made vectors in the index's behaviour cache,
    so a behaviour is formed once per index, not once per process, within ``cache_config``'s size budget
    (:class:`~actindex.query.cache.CacheConfig`); ``progress`` shows a bar while a behaviour is formed with the
    model. ``len(idx)`` is the number of rows (searchable or not).

    Verbs: :meth:`query` (ranked rows for a behaviour, an example or a saved vector), :meth:`ranking` (the
    same as arrays, every row with ``k=0``), :meth:`search` (a raw vector), :meth:`query_vector`,
    :meth:`fit_curvature`, :meth:`influence`. ``reader`` is what is on disk; ``session`` the query machinery.
    """

    def __init__(self, reader: IndexReader, cache: bool = True, progress: bool = False,
                 cache_config: CacheConfig | None = None):
        self.reader = reader
        self.session = QuerySession(reader, cache=cache, progress=progress, cache_config=cache_config)

    @classmethod
    def open(cls, root: str | Path, *, cache: bool = True, progress: bool = False,
             cache_config: CacheConfig | None = None) -> Index:
        """Open and check a complete index (:meth:`IndexReader.open`); see the class docstring for the options."""
        reader = IndexReader.open(root)
        reader.hold_open()  # queries read a few rows each: one handle, not an open per read (closed by close())
        return cls(reader, cache=cache, progress=progress, cache_config=cache_config)

    # ---- what it is -----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The index directory."""
        return self.reader.root

    @property
    def manifest(self) -> Manifest:
        """What the index holds and how it was built (:class:`~actindex.index.manifest.Manifest`)."""
        return self.reader.manifest

    @property
    def families(self) -> dict[str, FamilyInfo]:
        """The stored vector families, by name (``residual_change/18``, ``gradient``...)."""
        return self.reader.families

    @property
    def memorisation(self) -> Memorisation | None:
        """Whether the index's model has memorised its rows (``None`` for an index without a held-out loss)."""
        return self.session.memorisation

    def __len__(self) -> int:
        return len(self.reader)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Index({str(self.root)!r}: {m.rows} rows ({m.valid_rows} searchable), model {m.model.name!r}, "
                f"layers {m.layers}, {len(m.families)} families)")

    def close(self) -> None:
        """Let the index's files go."""
        self.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the model ------------------------------------------------------------------------------
    def model(self) -> LoadedModel:
        """The model the index was built with (loaded on first use and kept, checked against the manifest)."""
        return self.session.model()

    def use_model(self, lm: LoadedModel) -> Index:
        """Use an already loaded model for queries (notebooks, tests); checked against the manifest."""
        self.session.use_model(lm)
        return self

    # ---- queries ---------------------------------------------------------------------------------
    def query(self, behavior: str | Behavior | None = None, *, k: int = Q.k, bottom_k: int = Q.bottom_k,
              method: str | None = Q.method, layer: int | None = Q.layer, fusion: str | None = Q.fusion,
              rerank: str | None = Q.rerank, candidates: int = Q.candidates, per_token: bool = Q.per_token,
              clusters: int = Q.clusters, recall: str | None = Q.recall, offset: int = Q.offset,
              where: Mapping[str, Any] | None = Q.where, vector: np.ndarray | None = None,
              family: str | None = None, example: Any = None,
              generate: str | list[str] | None = None, versus: Sequence[str | Behavior] = ()) -> QueryResult:
        """Rank the training rows for a behaviour: a built-in name, a pairs file or a
        :class:`~actindex.query.behaviors.Behavior`.

        ``method``: default ``adaptive`` (the queries the behaviour's own held-out pairs rank best, fused by
        their calibrated mean); ``residual-change`` for a saved ``vector``; any of ``actindex query
        --help-methods``. ``layer``: one layer (default: a single method's layer nearest 60% of the depth, a
        fused method's every indexed layer). ``k`` top rows (0: every row), ``bottom_k`` most negative rows.
        ``fusion``: a fused method's rule (default its own). ``rerank="ekfac"|"linfac"`` re-scores the top and
        bottom ``candidates`` with exact influence and ranks by it (needs :meth:`fit_curvature`); with it,
        ``per_token`` (per-token influence), ``clusters`` (one query per k-means cluster of the pairs) and
        ``recall="tfidf"`` (lexical candidates too). ``where`` ranks only the rows whose records match
        (``{"label": "clean"}``, ``{"label": ["a", "b"]}``: :mod:`actindex.query.where`); ``offset`` skips that
        many rows of each side (a page: ranks ``offset + 1`` to ``offset + k``).

        Instead of a behaviour: ``vector`` (a saved query vector, searched in ``family``), ``example`` (a file of
        training rows, a row, or ``"prompt => response"``: the rows ranked by the example's own vectors), or
        ``generate`` (a prompt, prompts or a file of them: the model answers first and its answers are
        attributed). Every hit's ``score`` is the calibrated score (robust standard deviations above the
        typical row), in the order of the ranking; ``cosine`` is the raw cosine (:mod:`actindex.query.result`).

        ``versus``: other behaviours (names, files or :class:`~actindex.query.behaviors.Behavior`) the answer is
        asked against: each query vector keeps only what the behaviour's asks and theirs do not share, so rows of
        a neighbouring behaviour that shares its answer fall back (docs/design.md#versus).
        """
        config = QueryConfig(method=method, layer=layer, k=k, bottom_k=bottom_k, fusion=fusion, rerank=rerank,
                             candidates=candidates, per_token=per_token, clusters=clusters, recall=recall,
                             offset=offset, where=None if where is None else dict(where))
        return self.session.query(behavior, config, vector=vector, family=family, example=example,
                                  generate=generate, versus=versus)

    def ranking(self, behavior: str | Behavior, *, k: int = 0, bottom_k: int = Q.bottom_k,
                method: str | None = Q.method, layer: int | None = Q.layer, fusion: str | None = Q.fusion,
                where: Mapping[str, Any] | None = Q.where) -> Ranked:
        """The rows :meth:`query` ranks, as arrays (:class:`~actindex.query.pipeline.Ranked`: ``top.rows``,
        ``top.scores``, ``top.cosines``...) without making hits; by default (``k=0``) every searchable row (that
        ``where`` lets through)."""
        config = QueryConfig(method=method, layer=layer, k=k, bottom_k=bottom_k, fusion=fusion,
                             where=None if where is None else dict(where))
        return self.session.ranking(behavior, config)

    def search(self, vector: np.ndarray, k: int = 10, family: str | None = None, bottom: bool = False, *,
               where: Mapping[str, Any] | None = None, offset: int = 0, allowed: np.ndarray | None = None,
               space: str = "stored") -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-``k`` (or bottom-``k``) rows for a raw vector: ``(cosines, rows)``, the rows ranked
        ``offset + 1`` to ``offset + k`` (``k = 0``: every row from there) among the rows whose records match
        ``where`` (:mod:`actindex.query.where`; default every row) and that ``allowed`` (a boolean mask over the
        rows) marks; ``family`` defaults to the first. ``vector`` is searched as ``vector / max|vector_i|`` (the
        same cosines; any finite values, even beyond float32's range).

        ``space``: ``stored`` (default) takes ``vector`` where the family's rows live, as the index's query
        vectors (``--save-query``) and its exports are; ``model`` takes a residual-stream vector of the model's
        width and maps it by the index's storage projection (:mod:`actindex.core.reduction`) first."""
        if offset < 0:
            raise ActindexError(f"offset must be at least 0, got {offset}")
        if space not in ("stored", "model"):
            raise ActindexError(f"space must be 'stored' or 'model', got {space!r}")
        family = family or next(iter(self.families))
        reduction = self.reader.reduction
        if space == "model" and reduction is not None and "/" in family:
            vector = np.asarray(vector, dtype=np.float64).reshape(-1)
            if vector.size != reduction.hidden:
                raise ActindexError(f"a model-space vector has the model's width {reduction.hidden}, got {vector.size}")
            vector = reduction.matrix.T.astype(np.float64) @ vector
        vector = np.asarray(vector, dtype=np.float64)
        if not vector.size or not np.isfinite(vector).all() or not np.abs(vector).max() > 0:
            raise ActindexError("vector must be a non-empty list of finite numbers, not all zero")
        vector = vector / np.abs(vector).max()  # the same cosines, and no float32 overflow in its norm
        mask = row_mask(self.reader, where)
        if allowed is not None:
            mask = allowed if mask is None else mask & allowed
        cosines, rows = self.reader.search(vector, k + offset if k > 0 else 0, family, bottom, mask)
        return cosines[offset:], rows[offset:]

    def query_vector(self, behavior: str | Behavior, method: str = "residual-change",
                     layer: int | None = None) -> tuple[np.ndarray, str, Behavior]:
        """``(psi, family, behaviour)``: the query vector of a behaviour for one single-vector method."""
        return self.session.query_vector(behavior, method, layer)

    def behavior(self, spec: str | Behavior) -> Behavior:
        """A behaviour (built-in name, file, or :class:`Behavior`) completed with the index's model, or taken
        from the behaviour cache (no model pass)."""
        return self.session.behavior(spec)

    # ---- curvature and exact influence ---------------------------------------------------------
    def fit_curvature(self, *, kind: str = C.kind, samples: int = C.samples, modules: list[str] | None = C.modules,
                      sublayer: str = C.sublayer, empirical_fisher: bool = C.empirical_fisher,
                      damping: float | None = C.damping, batch_size: int = C.batch_size, seed: int = C.seed,
                      progress: bool = True, say: Callable[[str], Any] | None = None) -> dict[str, Any]:
        """Fit EK-FAC and/or LinFAC factors (``kind``: ``ekfac``, ``linfac`` or ``both``) on ``samples`` seeded
        rows and store them in the index (the other options:
        :class:`~actindex.query.curvature.config.CurvatureConfig`); returns the new manifest entries.
        ``say(text)`` is told the fit's cost before it starts."""
        config = CurvatureConfig(kind=kind, samples=samples, modules=modules, sublayer=sublayer,
                                 empirical_fisher=empirical_fisher, damping=damping, batch_size=batch_size, seed=seed)
        return self.session.fit_curvature(config, progress, say)

    def curvature(self, kind: str = "ekfac") -> Curvature:
        """The stored factors of ``kind`` (``ekfac`` or ``linfac``), loaded once."""
        return self.session.curvature(kind)

    def influence(self, behavior: str | Behavior, kind: str = "ekfac", *,
                  rows: list[int] | np.ndarray | None = None, per_token: bool = False, clusters: int = 0,
                  progress: bool = False) -> RowInfluence:
        """Exact influence ``I(m) = sum_modules <precond(q), G_m>`` of ``rows`` (default: every valid row) on a
        behaviour, a :class:`~actindex.query.rerank.RowInfluence` (``.rows``, ``.influence.total``...)."""
        return self.session.influence(behavior, kind, rows, per_token, clusters, progress)


def save_query_vector(path: str | Path, vector: np.ndarray, meta: dict[str, Any]) -> None:
    """Save a query vector with its settings as ``.npz`` (no pickle)."""
    with atomic_file(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, vector=np.asarray(vector, np.float32), meta=np.array(json.dumps(meta)))


def load_query_vector(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A query vector saved by :func:`save_query_vector`, and its settings."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return data["vector"], json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise ActindexError(f"{path}: not a saved actindex query vector ({err})") from None
