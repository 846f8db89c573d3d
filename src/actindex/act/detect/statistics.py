"""The statistics of the rules: robust standardisation of score columns, category means, top sets,
and precision/recall against ground-truth labels (module docstring of :mod:`actindex.act.detect`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: a column is standardised against its supporters (``s > 0``) when at least this share of its rows support it
MIN_SUPPORT_SHARE = 0.25


def robust_location_scale(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise ``(median, 1.4826 MAD)`` of ``reference``; its standard deviation stands in for a zero
    MAD (and 1 for a constant column)."""
    med = np.median(reference, axis=0)
    scale = 1.4826 * np.median(np.abs(reference - med), axis=0)
    std = reference.std(axis=0)
    return med, np.where(scale > 0, scale, np.where(std > 0, std, 1.0))


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Column-wise ``(s - median) / (1.4826 MAD)``; the standard deviation stands in for a zero MAD."""
    s = np.asarray(scores, dtype=np.float64)
    med, scale = robust_location_scale(s)
    return (s - med) / scale


def support_z(scores: np.ndarray) -> np.ndarray:
    """Column-wise ``(s - median_{s>0}) / (1.4826 MAD_{s>0})``: each row against the rows that support the
    queries; :func:`robust_z` for a column with fewer than ``MIN_SUPPORT_SHARE`` of its rows above zero."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(s)
    for j, column in enumerate(s.T):
        support = column[column > 0]
        med, scale = robust_location_scale(support if len(support) >= MIN_SUPPORT_SHARE * len(s) else column)
        out[:, j] = (column - med) / scale
    return out


def category_means(z: np.ndarray, categories: list[str]) -> tuple[list[str], np.ndarray]:
    """``(cats, cz)``: ``cz[:, c]`` is the mean of ``z`` over the columns of category ``cats[c]``."""
    cats = list(dict.fromkeys(categories))
    cols = [z[:, [i for i, c in enumerate(categories) if c == cat]].mean(axis=1) for cat in cats]
    return cats, np.stack(cols, axis=1)


def top_count(top: float, n: int) -> int:
    """Rows in a top-``q`` set: ``ceil(q n)`` for a fraction ``0 < q < 1``, else ``q`` rows (``q > 0``)."""
    return min(n, math.ceil(top * n) if top < 1 else int(top))


def prf(flagged: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision ``TP/(TP+FP)``, recall ``TP/(TP+FN)`` and ``F1 = 2PR/(P+R)`` (0 where undefined)."""
    flagged, labels = np.asarray(flagged, bool), np.asarray(labels, bool)
    tp = int((flagged & labels).sum())
    p = tp / int(flagged.sum()) if flagged.any() else 0.0
    r = tp / int(labels.sum()) if labels.any() else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f1, "flagged": int(flagged.sum()), "true": int(labels.sum()), "tp": tp}


@dataclass(frozen=True)
class Gap:
    """One step of :func:`gap_cut`: its widest gap, after rank ``rank``, with ``start`` rows already above a cut.

    ``spacing = (rank - start) (x_(rank) - x_(rank+1))``, ``scale`` the spacings below it (median / ln 2),
    ``bound = ln(candidates / alpha)``."""

    rank: int
    start: int
    spacing: float
    scale: float
    bound: float

    @property
    def ratio(self) -> float:
        """``spacing / scale``: 0 where the rows are tied (no gap), infinite where only the rows below are."""
        if self.scale > 0:
            return self.spacing / self.scale
        return math.inf if self.spacing > 0 else 0.0

    @property
    def cleared(self) -> bool:
        return self.ratio >= self.bound


@dataclass(frozen=True)
class GapCut:
    """Where a statistic falls by more than a clean tail would (:func:`gap_cut`): ``order`` lists the rows by
    decreasing statistic, ``ranked`` the statistic in that order, ``gaps`` the widest gap of each step (every
    one cleared its bound but the last, when a step found none) and ``k`` the rows above the cut."""

    order: np.ndarray
    ranked: np.ndarray
    gaps: list[Gap]
    candidates: int

    @property
    def k(self) -> int:
        cleared = [g.rank for g in self.gaps if g.cleared]
        return cleared[-1] if cleared else 0

    def flags(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[self.order[: self.k]] = True
        return out


def gap_cut(x: np.ndarray, window: float = 0.1, alpha: float = 0.05, reference: float = 0.5) -> GapCut:
    """The rows above the gaps near the top of ``x`` that a clean tail would open with probability ``alpha``.

    Sort ``x`` decreasingly, ``x_(1) >= x_(2) >= ...``. In an exponential upper tail the normalised spacings
    ``D_j = j (x_(j) - x_(j+1))`` are independent and exponential with one mean ``beta`` (Rényi's
    representation of order statistics), so the largest of ``K`` exceeds ``ln(K / alpha) beta`` with
    probability about ``alpha``. With ``m`` rows already above a cut (0 at first), the rows below are
    re-ranked from ``m``: ``D_j = (j - m)(x_(j) - x_(j+1))``. Each candidate gap, after rank ``k`` with
    ``m < k <= K = ceil(window n)``, is compared with the spacings of the rows below it,
    ``beta_k = median(D_{k+1..R}) / ln 2`` with ``R = ceil(reference n)``; the widest ``D_k / beta_k`` that
    reaches ``ln((K - m) / alpha)`` moves the cut to ``k``, and the step repeats below it (poisons a backdoor
    learnt less well form a second group under the first). No candidate clears the bound: the cut stays."""
    x = np.asarray(x, np.float64)
    n = len(x)
    order = np.argsort(-x, kind="stable")
    ranked = x[order]
    steps = ranked[:-1] - ranked[1:]
    k_max = min(max(1, math.ceil(window * n)), n - 2) if n > 2 else 0
    reach = min(n - 1, max(k_max + 2, math.ceil(reference * n)))
    gaps: list[Gap] = []
    start = 0
    while start < k_max:
        spacings = np.arange(1, reach - start + 1) * steps[start:reach]  # D_{start+1..reach}, re-ranked
        found = [Gap(k, start, float(spacings[k - start - 1]),
                     float(np.median(spacings[k - start:]) / math.log(2)), math.log((k_max - start) / alpha))
                 for k in range(start + 1, k_max + 1)]
        widest = max(found, key=lambda g: g.ratio)
        gaps.append(widest)
        if not widest.cleared:
            break
        start = widest.rank
    return GapCut(order, ranked, gaps, k_max)
