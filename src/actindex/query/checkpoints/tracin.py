"""TracIn over checkpoints (Pruthi et al. 2020): the sum of the checkpoints' scores of a row."""

from __future__ import annotations

import numpy as np

from actindex.query.checkpoints.base import TOP, CheckpointFusion, CheckpointRanking, candidates


class TracInSum(CheckpointFusion):
    """``S(x) = sum_c s_c(x)``, each checkpoint's calibrated score (robust standard deviations over its own
    index), so that no checkpoint weighs more because its cosines run larger; computed exactly for every
    row some checkpoint ranked on the side. TracIn sums ``eta_c <grad L(z', theta_c), grad L(x, theta_c)>``
    over checkpoints; here each checkpoint's term is its calibrated score, with equal weights."""

    name = "tracin"
    help = "sum over checkpoints of each checkpoint's calibrated score s_c(x)"

    def score(self, ranking: CheckpointRanking, rows: np.ndarray) -> np.ndarray:
        """One checkpoint's term of the sum."""
        return ranking.scores(rows)

    def fuse(self, rankings: list[CheckpointRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        rows = candidates(rankings, side)
        scores = np.sum([self.score(r, rows) for r in rankings], axis=0) if len(rows) else np.zeros(0)
        order = np.argsort(-scores if side == TOP else scores, kind="stable")
        return rows[order], scores[order]
