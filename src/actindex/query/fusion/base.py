"""What a fusion rule is: how the rankings of several (method, layer) members become one ranking.

Each member of a fused query (an ensemble) is a :class:`MemberRanking`: its query vector, the rows its
search ranked at the top and at the bottom, and its calibration, the median and scaled MAD of its
cosines over the index, so that its standardised score

    z_m(x) = (cos_m(x) - median_m) / (1.4826 MAD_m)

means the same for every member: how many robust standard deviations row ``x`` sits above (positive:
pushes towards the behaviour) or below (inhibits it) the typical row. A rule is one small registered
class (:class:`FusionRule`) in one file of this package; :meth:`FusionRule.fuse` returns one side's rows,
best first, with the rule's own score. Whatever the rule, a fused hit is shown with its calibrated
score, the weighted mean ``sum_m w_m z_m(x) / sum_m w_m`` (:func:`calibrated`), which keeps the sign and
the scale a reader expects (docs/design.md#calibrated-score).
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


class FusionRule(Registered, noun="fusion rule"):
    """Combine members' rankings into one ranking of one side (``top`` or ``bottom``)."""

    name: ClassVar[str]
    help: ClassVar[str]

    def fuse(self, members: list[MemberRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of ``side``, best first (the top's most positive, the bottom's most negative),
        over the rows some member ranked on that side."""
        raise NotImplementedError
