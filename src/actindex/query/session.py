"""The query session: everything that answers queries over one index, the reader and the model with it.

:class:`QuerySession` holds an :class:`~actindex.index.reader.IndexReader` (what is on disk), the model the
index was built with (loaded on first use, checked against the manifest), the query context that forms query
vectors exactly as the build formed the rows', the fitted curvature and the behaviour cache. Behaviours are
loaded and completed here, once; the query itself runs through :class:`~actindex.query.pipeline.QueryPipeline`.
:class:`actindex.Index` is the small public face over a session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.errors import ActindexError, IndexFileError
from actindex.index.memorisation import Memorisation, memorisation, warn_if_memorised
from actindex.query.cache import BehaviorCache, CacheConfig
from actindex.query.pipeline import FusedOrders, QueryConfig, QueryPipeline, Ranked
from actindex.query.result import QueryResult

if TYPE_CHECKING:
    from actindex.core.models import LoadedModel
    from actindex.index.reader import IndexReader
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext
    from actindex.query.curvature import CurvatureConfig
    from actindex.query.curvature.kron import Curvature
    from actindex.query.rerank import RowInfluence


class ModelNeeded(Exception):
    """Raised when work run in :meth:`QuerySession.without_model` asks for the model (not a user error: the caller
    runs the work again with the model)."""


class QuerySession:
    """What answers queries over one index: the :class:`~actindex.index.reader.IndexReader` (what is on disk), the
    model it was built with, the query context that forms query vectors as the build formed the rows', the
    fitted curvature and the behaviour cache.

    ``cache`` (default on) keeps each behaviour's model-made vectors in the index's behaviour cache
    (:mod:`actindex.query.cache`), so a behaviour is formed once per index, not once per process, within
    ``cache_config``'s size budget; ``progress`` shows a progress bar while a behaviour is formed with the model.
    :class:`actindex.Index` is the small public face over it; the stages (CLI, server, filter, report, correct,
    detect) use it directly.
    """

    def __init__(self, reader: IndexReader, cache: bool = True, progress: bool = False,
                 cache_config: CacheConfig | None = None):
        self.reader = reader
        self.use_cache, self.progress = cache, progress
        self.cache_config = cache_config or CacheConfig()
        self._model: LoadedModel | None = None
        self._no_model = threading.local()
        self._context: QueryContext | None = None
        self._curvature: dict[str, Curvature] = {}
        self._fused = FusedOrders()  # fused queries of cached behaviours: other pages and k cut from one order

    @property
    def root(self) -> Path:
        return self.reader.root

    @property
    def manifest(self) -> Any:
        return self.reader.manifest

    @cached_property
    def behavior_cache(self) -> BehaviorCache:
        """The index's behaviour cache (``actindex cache list|clear``)."""
        return BehaviorCache(self.root, self.manifest, self.cache_config)

    @cached_property
    def memorisation(self) -> Memorisation | None:
        """Whether the index's model has memorised its rows: the figures of :mod:`actindex.index.memorisation`
        (``None`` for an index without a held-out loss)."""
        return memorisation(self.reader.table, self.manifest)

    # ---- the model --------------------------------------------------------------------------
    def model(self, name: str | None = None, device: str | None = None, dtype: str | None = None) -> LoadedModel:
        """The model the index was built with (loaded once and kept), checked against the manifest; inside
        :meth:`without_model` it raises :class:`ModelNeeded` instead."""
        if getattr(self._no_model, "on", False):
            raise ModelNeeded("this query needs a model pass")
        if self._model is None:
            from actindex.core.models import load_model

            self._model = load_model(name or self.manifest.model.name, device, dtype or "auto")
        self.check_model(self._model)
        return self._model

    @property
    def model_loaded(self) -> bool:
        """Whether the model is loaded (a query answered from the behaviour cache never loads it)."""
        return self._model is not None

    @contextmanager
    def without_model(self) -> Iterator[None]:
        """Work that must not touch the model, in this thread: asking for it raises :class:`ModelNeeded` (a
        server answers queries from the behaviour cache in parallel and takes its model lock only for the rest)."""
        self._no_model.on = True
        try:
            yield
        finally:
            self._no_model.on = False

    def companion_model(self, model: LoadedModel | str, option: str) -> LoadedModel:
        """Another model that works on the index's rows (``option`` names it in errors): loaded like the
        index's model when given as a path, and refused unless its tokenizer is the index's (the rows'
        tokens must mean the same to both)."""
        if isinstance(model, str):
            from actindex.core.models import load_model

            model = load_model(model, str(self.model().device), "auto")
        if model.tokenizer_id() != self.manifest.model.tokenizer:
            raise IndexFileError(f"{option} {model.name!r} has another tokenizer than the index {self.root}'s model; "
                                 "the same text would be other tokens to it")
        return model

    def use_model(self, lm: LoadedModel) -> QuerySession:
        """Use an already loaded model for queries (notebooks, tests); checked against the manifest."""
        self.check_model(lm)
        if lm is not self._model:
            self._context = None
        self._model = lm
        return self

    def check_model(self, lm: LoadedModel) -> None:
        """Refuse a model whose weights or tokenizer are not the ones the index was built with."""
        built = self.manifest.model
        if lm.fingerprint != built.fingerprint:
            raise IndexFileError(
                f"{self.root} was built with model {built.name!r} (weights {built.fingerprint[:12]}), "
                f"but the query model {lm.name!r} has weights {lm.fingerprint[:12]}; query with the same model"
            )
        if lm.tokenizer_id() != built.tokenizer:
            raise IndexFileError(
                f"{self.root} was built with another tokenizer than {lm.name!r}'s; query with the same tokenizer"
            )

    def behavior(self, spec: str | Behavior) -> Behavior:
        """A behaviour (built-in name, file, or :class:`Behavior`) completed with the index's model, or taken
        from the behaviour cache (then its vectors are in the query context too and no model is loaded)."""
        return self.prepare_behavior(spec)[1]

    def prepare_behavior(self, spec: str | Behavior) -> tuple[Behavior, Behavior, bool]:
        """``(as asked, completed, from the cache)``: the behaviour loaded once, at the API boundary."""
        from actindex.query.behaviors import complete_behavior, load_behavior

        raw = load_behavior(spec) if isinstance(spec, str) else spec
        if raw.complete:
            return raw, raw, False
        hit = self.behavior_cache.load(raw) if self.use_cache else None
        if hit is not None:
            ctx = self.query_context()
            ctx.cache.update(hit.vectors)
            ctx.stored_gradients.update(hit.gradients)
            hit.behavior.notes.append("formed from the index's behaviour cache (no model pass)")
            return raw, hit.behavior, True
        return raw, complete_behavior(raw, self.model()), False

    def remember(self, raw: Behavior, completed: Behavior, keys: set[str] | None = None) -> None:
        """Store what the last query formed for a behaviour in the behaviour cache (when it used the model): the
        vectors of the conversations it touched, or of ``keys`` alone."""
        ctx = self.query_context()
        if self.use_cache and ctx.model_seconds > 0:
            self.behavior_cache.save(raw, completed, ctx, keys)

    # ---- the query pipeline and its components ------------------------------------------------
    def query_context(self) -> QueryContext:
        """The model and vector settings that compute query-side vectors exactly as the build did (one per
        index and model: its cache keeps every vector formed)."""
        if self._context is None:
            from actindex.query.context import QueryContext

            m = self.manifest
            self._context = QueryContext(
                model=self.model, layers=self.reader.layers, families=tuple(self.reader.families),
                grad_modules=m.projection.modules, grad_k=m.projection.k, seed=m.projection.seed,
                max_length=m.max_length, batch_size=m.batch_size, curvature=self.curvature, progress=self.progress,
                reduction=self.reader.reduction,
            )
        return self._context

    def pipeline(self) -> QueryPipeline:
        """The query stages over this index, with its components injected."""
        return QueryPipeline(self.reader, self.query_context, self.curvature, kept=self._fused)

    def resolve_layer(self, layer: int | None) -> int:
        """``layer`` checked against the index, or the indexed layer nearest 60% of the depth."""
        return self.pipeline().resolve_layer(layer)

    def method_family(self, method: str, layer: int | None = None) -> str:
        """The stored family a query method searches at a layer, refused when the index lacks it."""
        return self.pipeline().family_of(method, layer)

    def query_vector(self, behavior: str | Behavior, method: str = "residual-change",
                     layer: int | None = None) -> tuple[np.ndarray, str, Behavior]:
        """``(psi, family, behaviour)``: the query vector of a behaviour for one method."""
        behavior = self.behavior(behavior)
        psi, family = self.pipeline().vector(behavior, (method, self.resolve_layer(layer)))
        return psi, family, behavior

    def query(self, behavior: str | Behavior | None, config: QueryConfig, *, vector: np.ndarray | None = None,
              family: str | None = None, example: Any = None, generate: str | list[str] | None = None,
              versus: Sequence[str | Behavior] = ()) -> QueryResult:
        """Rank the training rows for a behaviour (or a saved query ``vector`` of ``family``) as ``config`` says
        (:meth:`actindex.Index.query` documents the arguments), against the ``versus`` behaviours when given. When
        the index's model has memorised its rows it warns (:class:`~actindex.errors.MemorisationWarning`) and says
        so in ``result.warnings``."""
        from actindex.query.examples import asked_behavior

        behavior = asked_behavior(behavior, example, generate)
        if versus and behavior is None:
            raise ActindexError("versus asks what is specific to a behaviour: give the behaviour too")
        if versus and (vector is not None or config.rerank is not None):
            raise ActindexError("versus shapes the query vectors a behaviour forms: it takes no saved query vector and "
                                "no rerank (exact influence ranks by the behaviour's own gradient)")
        pipeline = self.pipeline()
        if config.rerank is not None:  # refused here, before any model pass
            self.curvature(config.rerank)
        started = time.perf_counter()
        raw = completed = None
        cached = False
        if behavior is not None and (vector is None or config.rerank is not None):
            raw, completed, cached = self.prepare_behavior(behavior)
        others = [self.prepare_behavior(other) for other in versus]
        prepared = time.perf_counter() - started
        name = behavior if isinstance(behavior, str) and vector is not None else None
        if vector is not None and behavior is None:
            name = "vector"
        result = pipeline.run(config, completed, vector=vector, family=family, name=name,
                              versus=[done for _, done, _ in others])
        if raw is not None:
            self.remember_all(raw, completed, others)
        result.cached = cached
        result.timings = {"behaviour": round(prepared, 4), **result.timings}
        result.seconds += prepared
        warned = warn_if_memorised(self.memorisation, self.root)
        if warned:
            result.warnings.append(warned)
        return result

    def remember_all(self, raw: Behavior, completed: Behavior, versus: list[tuple[Behavior, Behavior, bool]]) -> None:
        """:meth:`remember` a query's behaviour and each of its ``versus`` behaviours ``(as asked, completed, from
        the cache)`` that the query formed, each entry with its own conversations' vectors alone."""
        from actindex.query.context import conversation_key, query_rows

        own = [{conversation_key(c) for c in query_rows(done)} for _, done, _ in versus]
        keys = set(self.query_context().touched).difference(*own)
        self.remember(raw, completed, keys if versus else None)
        for (asked, done, cached), rows in zip(versus, own):
            if not cached:
                self.remember(asked, done, rows)

    def ranking(self, behavior: str | Behavior, config: QueryConfig) -> Ranked:
        """The rows a query ranks, as arrays (:class:`~actindex.query.pipeline.Ranked`: ``top.rows``,
        ``top.scores``...), without making hits: with ``k=0`` every searchable row, as ``filter`` and ``report``
        read them; no rerank."""
        if config.rerank is not None:
            raise ActindexError("ranking() gives the search's ranking; query(rerank=...) reranks its candidates")
        raw, completed, _ = self.prepare_behavior(behavior)
        ranked = self.pipeline().rank(config, completed)
        self.remember(raw, completed)
        return ranked

    # ---- curvature and exact influence -------------------------------------------------------
    def fit_curvature(self, config: CurvatureConfig, progress: bool = True,
                      say: Callable[[str], Any] | None = None) -> dict[str, Any]:
        """Fit the factors ``config`` asks for on a sample of the rows and store them in the index; returns the
        new manifest entries. ``say(text)`` is told the fit's cost before it starts."""
        from actindex.query.curvature.store import fit_curvature

        entries = fit_curvature(self.reader, self.model(), config, progress, say)
        self._curvature.clear()
        return entries

    def curvature(self, kind: str = "ekfac") -> Curvature:
        """The stored factors of ``kind`` (``ekfac`` or ``linfac``), loaded once."""
        from actindex.query.curvature.store import load_curvature

        if kind not in self._curvature:
            self._curvature[kind] = load_curvature(self.reader, kind)
        return self._curvature[kind]

    def influence(self, behavior: str | Behavior, kind: str = "ekfac", rows: list[int] | np.ndarray | None = None,
                  per_token: bool = False, clusters: int = 0, progress: bool = False) -> RowInfluence:
        """Exact influence of ``rows`` (default: every valid row) on a behaviour, a
        :class:`~actindex.query.rerank.RowInfluence` (``.rows``, ``.influence.total``, ``.per_module``...)."""
        from actindex.query.rerank import row_influence

        curvature = self.curvature(kind)
        return row_influence(self.reader, self.query_context(), curvature, self.behavior(behavior), rows, per_token,
                             clusters, progress)
