"""TracIn over checkpoints with raw cosines: the sum of the checkpoints' cosines of a row."""

from __future__ import annotations

import numpy as np

from actindex.query.checkpoints.base import CheckpointRanking
from actindex.query.checkpoints.tracin import TracInSum


class TracInCosine(TracInSum):
    """``S(x) = sum_c cos_c(x)``, each checkpoint's (members' mean) cosine, uncalibrated: a checkpoint whose
    cosines spread wider weighs more."""

    name = "tracin-cosine"
    help = "sum over checkpoints of each checkpoint's cosine cos_c(x) (uncalibrated)"

    def score(self, ranking: CheckpointRanking, rows: np.ndarray) -> np.ndarray:
        return ranking.cosines(rows)
