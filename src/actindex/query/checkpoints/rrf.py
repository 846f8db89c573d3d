"""Reciprocal rank fusion over checkpoints: rows ordered by their ranks in the checkpoints' answers."""

from __future__ import annotations

import numpy as np

from actindex.query.checkpoints.base import CheckpointFusion, CheckpointRanking
from actindex.query.fusion import rank_fused


class CheckpointRRF(CheckpointFusion):
    """``S(x) = sum_c 1 / (60 + rank_c(x))``, ``rank_c`` the row's rank (from 0) in checkpoint ``c``'s own answer
    of the side: agreement between checkpoints, whatever their scales (the bottom side's score is negated)."""

    name = "rrf"
    help = "reciprocal rank fusion of the checkpoints' answers: sum over checkpoints of 1 / (60 + rank)"

    def fuse(self, rankings: list[CheckpointRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        return rank_fused([r.ranked(side) for r in rankings], side)
