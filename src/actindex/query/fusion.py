"""What a fusion rule is: how the rankings of several (method, layer) members become one ranking.

Each member of a fused query (an ensemble) is a :class:`MemberRanking`: its query vector, the rows its
search ranked at the top and at the bottom, and its calibration, the median and scaled MAD of its
cosines over the index, so that its standardised score

    z_m(x) = (cos_m(x) - median_m) / (1.4826 MAD_m)

means the same for every member: how many robust standard deviations row ``x`` sits above (positive:
pushes towards the behaviour) or below (inhibits it) the typical row. A rule is a few lines
(:class:`FusionRule`), listed in :data:`FUSION_RULES`; :meth:`FusionRule.fuse` returns one side's rows,
best first, with the rule's own score: a hit's ``score`` is that score, so scores never rise down a
ranking. Every fused hit also carries its calibrated score, the weighted mean ``sum_m w_m z_m(x) / sum_m w_m``
(:func:`calibrated`, the same as ``score`` for ``zmean``), which keeps the sign and the scale a reader
expects (docs/design.md#fusion), and the members' weighted raw cosine (:func:`mean_cosines`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from actindex.registry import Registered

TOP, BOTTOM = "top", "bottom"
#: the MAD of a normal distribution is 0.6745 sigma: 1.4826 MAD estimates sigma
MAD_TO_SIGMA = 1.4826


@dataclass
class MemberRanking:
    """One member's part of a fused query: what it ranked, and how to standardise its cosines."""

    method: str
    layer: int | None
    family: str
    psi: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    cosines: Callable[[np.ndarray], np.ndarray]
    center: float = 0.0
    scale: float = 1.0
    weight: float = 1.0
    notes: dict[str, float] = field(default_factory=dict)

    def z(self, rows: np.ndarray) -> np.ndarray:
        """``z_m(x) = (cos_m(x) - median_m) / (1.4826 MAD_m)`` of the given rows."""
        return (self.cosines(rows) - self.center) / self.scale

    def ranked(self, side: str) -> np.ndarray:
        return self.top if side == TOP else self.bottom


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 MAD)`` of ``values``; the standard deviation stands in for a zero MAD (1 for a
    constant sample)."""
    values = np.asarray(values, dtype=np.float64)
    center = float(np.median(values))
    scale = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
    if not scale > 0:
        scale = float(values.std()) or 1.0
    return center, scale


def calibrated(members: list[MemberRanking], rows: np.ndarray) -> np.ndarray:
    """The calibrated fused score of ``rows``: ``sum_m w_m z_m(x) / sum_m w_m``."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return np.zeros(0)
    weights = np.array([m.weight for m in members], dtype=np.float64)
    zs = np.stack([m.z(rows) for m in members])
    return (weights[:, None] * zs).sum(0) / max(float(weights.sum()), 1e-12)


def mean_cosines(members: list[MemberRanking], rows: np.ndarray) -> np.ndarray:
    """The members' raw cosines of ``rows``, weighted: ``sum_m w_m cos_m(x) / sum_m w_m`` (one member: its cosine)."""
    rows = np.asarray(rows, dtype=np.int64)
    weights = np.array([m.weight for m in members], dtype=np.float64)
    values = np.stack([m.cosines(rows) for m in members]) if len(rows) else np.zeros((len(weights), 0))
    return (weights[:, None] * values).sum(0) / max(float(weights.sum()), 1e-12)


class FusionRule(Registered, noun="fusion rule", listed=True):
    """Combine members' rankings into one ranking of one side (``top`` or ``bottom``)."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: the rule's score is the calibrated score (:func:`calibrated`): a hit's ``calibrated`` is its ``score``
    calibrated_score: ClassVar[bool] = False

    def fuse(self, members: list[MemberRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of ``side``, best first (the top's most positive, the bottom's most negative),
        over the rows some member ranked on that side."""
        raise NotImplementedError


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


class CalibratedMean(FusionRule):
    """``score(x) = sum_m w_m z_m(x) / sum_m w_m`` with ``z_m`` the member's cosine standardised over the
    index (:class:`MemberRanking`): a score with a meaning and a sign, computed
    exactly for every row some member ranked on the side."""

    name = "zmean"
    help = "weighted mean of the members' standardised cosines (calibrated, signed)"
    calibrated_score = True

    def fuse(self, members: list[MemberRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        rows = np.unique(np.concatenate([m.ranked(side) for m in members])).astype(np.int64)
        scores = calibrated(members, rows)
        order = np.argsort(-scores if side == TOP else scores, kind="stable")
        return rows[order], scores[order]


#: the registry, in the order of the CLI's choices
FUSION_RULES = (ReciprocalRankFusion, CalibratedMean)
FusionRule.register(*FUSION_RULES)


def fusion_names() -> list[str]:
    """Every registered fusion rule, for the CLI's choices."""
    return list(FusionRule.registry)
