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
class GapCut:
    """Where a sorted statistic falls by more than a clean tail would (:func:`gap_cut`).

    ``order`` lists the rows by decreasing statistic; ``spacings[j]`` is ``D_{j+1}``, ``scales[j]`` the
    scale its test compares it with, ``ratios = spacings / scales``; ``bound = ln(K / alpha)``; ``k`` rows are
    above the cut (0: no gap clears the bound)."""

    order: np.ndarray
    sorted: np.ndarray
    spacings: np.ndarray
    scales: np.ndarray
    bound: float
    k: int

    @property
    def ratios(self) -> np.ndarray:
        return np.divide(self.spacings, self.scales, out=np.full_like(self.spacings, np.inf), where=self.scales > 0)

    def flags(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[self.order[: self.k]] = True
        return out
