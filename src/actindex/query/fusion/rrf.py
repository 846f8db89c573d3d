"""Reciprocal rank fusion (Cormack et al. 2009), the default ensemble's rule."""

from __future__ import annotations

import numpy as np

from actindex.query.fusion.base import FusionRule

#: the constant of reciprocal rank fusion (Cormack et al. 2009)
RRF_K = 60


def reciprocal_rank_fusion(rankings: list[np.ndarray], rows: int) -> np.ndarray:
    """``score[row] = sum_m 1 / (RRF_K + rank_m(row))`` over ranked lists of row numbers (best first, ranks
    from 0; a row outside a member's list adds nothing)."""
    score = np.zeros(rows)
    for ranking in rankings:
        score[ranking] += 1.0 / (RRF_K + np.arange(len(ranking)))
    return score


class ReciprocalRankFusion(FusionRule):
    """``score[row] = sum_m 1 / (60 + rank_m(row))``: orders rows by agreement between members, robust to
    their scales; says nothing about the size or sign of a row's effect."""

    name = "rrf"
    help = "reciprocal rank fusion: sum over members of 1 / (60 + rank)"

    def fuse(self, rankings: list[np.ndarray], rows: int) -> np.ndarray:
        return reciprocal_rank_fusion(rankings, rows)
