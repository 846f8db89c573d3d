"""Querying several checkpoints of one training run together (indexes of the same rows, one per checkpoint).

    base.py            CheckpointRanking (one checkpoint's answer) and CheckpointFusion (the rule family)
    tracin.py          tracin: S(x) = sum_c s_c(x), the checkpoints' calibrated scores
    cosine.py          tracin-cosine: S(x) = sum_c cos_c(x), their cosines
    rrf.py             rrf: S(x) = sum_c 1 / (60 + rank_c(x))
    config.py          CheckpointConfig (the query's options) and the rules' registry, light
    checkpoint_set.py  CheckpointSet: open a set or several indexes, refuse other rows, query

Above the pipeline: each checkpoint's answer is a :class:`~actindex.query.pipeline.QueryPipeline` query of its
own index. Names are imported on first use.
"""

from __future__ import annotations

from actindex.lazy import lazy_exports

_EXPORTS = {
    "CheckpointRanking": "base", "CheckpointFusion": "base", "TracInSum": "tracin", "TracInCosine": "cosine",
    "CheckpointRRF": "rrf", "CheckpointSet": "checkpoint_set", "CheckpointConfig": "config",
    "checkpoint_fusion_names": "config", "check_same_rows": "checkpoint_set",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
