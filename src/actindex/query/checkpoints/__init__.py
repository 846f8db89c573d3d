"""Querying several checkpoints of one training run together (indexes of the same rows, one per checkpoint).

    fusion.py          CheckpointRanking (one checkpoint's answer) and the rules: tracin, S(x) = sum_c s_c(x) of
                       the checkpoints' calibrated scores; tracin-cosine, S(x) = sum_c cos_c(x) of their cosines;
                       rrf, S(x) = sum_c 1 / (60 + rank_c(x))
    config.py          CheckpointConfig (the query's options) and the rules' names, light
    checkpoint_set.py  CheckpointSet: open a set or several indexes, refuse other rows, query

Above the pipeline: each checkpoint's answer is a :class:`~actindex.query.pipeline.QueryPipeline` query of its
own index. Names are imported on first use.
"""

from __future__ import annotations

from actindex.lazy import lazy_exports

_EXPORTS = {
    "CheckpointRanking": "fusion", "CheckpointFusion": "fusion", "TracInSum": "fusion", "TracInCosine": "fusion",
    "CheckpointRRF": "fusion", "CheckpointSet": "checkpoint_set", "CheckpointConfig": "config",
    "checkpoint_fusion_names": "config", "check_same_rows": "checkpoint_set",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
