"""actindex: an activation-space training-data attribution index for LLMs.

One pass over the training set caches small per-example vectors (residual-change vectors,
mean activations, projected gradients) in HDF5 with FAISS indexes; any new behaviour becomes a
query vector answered by nearest-neighbour search.

    import actindex
    actindex.build(data="train.jsonl", out="idx")
    idx = actindex.Index.open("idx")
    result = idx.query(behavior="hallucination", k=20)

The pipeline, stage by stage (each a package): ``core`` (rows, encoding, models, capture, the vector
families), ``index`` (build, manifest, writer, reader, search, verify, shards), ``query`` (behaviours,
methods, fusion, curvature, rerank, the query pipeline, checkpoint sets), ``act`` (filter, correct, detect),
``report``, ``integrations`` (the training-loop callback) and ``cli``. Names below are imported on first use,
so ``import actindex`` loads no tensor library.
"""

from __future__ import annotations

from actindex.lazy import lazy_exports

__version__ = "0.2.0"

#: public name -> the module that defines it (imported lazily, PEP 562)
_EXPORTS = {
    "ActindexError": "actindex.errors", "DataError": "actindex.errors", "IndexFileError": "actindex.errors",
    "ModelError": "actindex.errors",
    "BuildConfig": "actindex.index.config", "build": "actindex.index.build", "merge": "actindex.index.shards",
    "Manifest": "actindex.index.manifest", "IndexReader": "actindex.index.reader", "verify": "actindex.index.verify",
    "Index": "actindex.api", "QueryResult": "actindex.query.result", "Hit": "actindex.query.result",
    "QueryConfig": "actindex.query.pipeline", "CurvatureConfig": "actindex.query.curvature",
    "load_model": "actindex.core.models",
    "FilterConfig": "actindex.act.filter", "filter_dataset": "actindex.act.filter",
    "CorrectConfig": "actindex.act.correct.config", "correct": "actindex.act.correct.stage",
    "DetectConfig": "actindex.act.detect", "detect": "actindex.act.detect",
    "ExportConfig": "actindex.index.export", "export": "actindex.index.export",
    "CheckpointSet": "actindex.query.checkpoints.checkpoint_set", "ActindexCallback": "actindex.integrations.trainer",
    "ActindexWarning": "actindex.errors", "MemorisationWarning": "actindex.errors", "CacheWarning": "actindex.errors",
    "CacheConfig": "actindex.query.cache",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
