"""Calibrated fusion: rows ordered by the weighted mean of the members' standardised cosines."""

from __future__ import annotations

import numpy as np

from actindex.query.fusion.base import TOP, FusionRule, MemberRanking, calibrated


class CalibratedMean(FusionRule):
    """``score(x) = sum_m w_m z_m(x) / sum_m w_m`` with ``z_m`` the member's cosine standardised over the
    index (:class:`~actindex.query.fusion.base.MemberRanking`): a score with a meaning and a sign, computed
    exactly for every row some member ranked on the side."""

    name = "zmean"
    help = "weighted mean of the members' standardised cosines (calibrated, signed)"

    def fuse(self, members: list[MemberRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        rows = np.unique(np.concatenate([m.ranked(side) for m in members])).astype(np.int64)
        scores = calibrated(members, rows)
        order = np.argsort(-scores if side == TOP else scores, kind="stable")
        return rows[order], scores[order]
