"""Reciprocal rank fusion (Cormack et al. 2009): rows ordered by their ranks in the members' lists."""

from __future__ import annotations

import numpy as np

from actindex.query.fusion.base import TOP, FusionRule, MemberRanking

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
    """``score(x) = sum_m 1 / (60 + rank_m(x))`` over the members' lists of the side: orders rows by the
    members' agreement, whatever their scales (the bottom side's score is negated, so it reads like a
    score of that side)."""

    name = "rrf"
    help = "reciprocal rank fusion: sum over members of 1 / (60 + rank)"

    def fuse(self, members: list[MemberRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        return rank_fused([m.ranked(side) for m in members], side)


def rank_fused(lists: list[np.ndarray], side: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of one side by :func:`reciprocal_rank_fusion` of ranked lists: the rows some list holds,
    best first, with their score (negated for the bottom side, so it reads like a score of that side)."""
    n = 1 + max((int(r.max()) for r in lists if len(r)), default=-1)
    score = reciprocal_rank_fusion(lists, n)
    rows = np.flatnonzero(score > 0)
    rows = rows[np.argsort(-score[rows], kind="stable")]
    return rows, score[rows] if side == TOP else -score[rows]
