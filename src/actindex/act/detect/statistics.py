"""The statistics of the rules: robust standardisation of score columns, category means, top sets,
and precision/recall against ground-truth labels (module docstring of :mod:`actindex.act.detect`)."""

from __future__ import annotations

import heapq
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


def tail_pvalue(ratio: float, references: int) -> float:
    """``P(D >= ratio * X)`` for ``D`` exponential and ``X`` the lower median of ``references`` (``M``) other
    independent draws of the same exponential: with ``X`` the ``q = ceil(M / 2)``-th smallest,
    ``E[exp(-ratio X)] = prod_{j=M-q+1..M} j / (j + ratio)`` (Rényi: ``X`` is a sum of independent exponentials
    of means ``1 / j``), here through log-gamma functions."""
    if ratio <= 0:
        return 1.0
    if math.isinf(ratio):
        return 0.0
    m = references
    low = m - (m + 1) // 2 + 1
    return math.exp(math.lgamma(m + 1) - math.lgamma(low) - math.lgamma(m + 1 + ratio) + math.lgamma(low + ratio))


@dataclass(frozen=True)
class Gap:
    """One step of :func:`gap_cut`: its most significant gap, after rank ``rank``, with ``start`` rows already
    above the cut and ``candidates`` ranks tested.

    ``ratio = D_rank / median(D_{rank+1..R})`` over the ``references`` spacings below it, and ``pvalue`` the
    chance that a clean exponential tail gives a ratio that large (:func:`tail_pvalue`)."""

    rank: int
    start: int
    ratio: float
    references: int
    pvalue: float
    candidates: int
    alpha: float

    @property
    def cleared(self) -> bool:
        """Whether the gap is wider than a clean tail opens among the candidates: ``candidates * pvalue <= alpha``."""
        return self.candidates * self.pvalue <= self.alpha


@dataclass(frozen=True)
class GapCut:
    """Where a statistic falls by more than a clean tail would (:func:`gap_cut`): ``order`` lists the rows by
    decreasing statistic, ``ranked`` the statistic in that order, ``gaps`` the most significant gap of each
    step (every one cleared but the last, when a step found none) and ``k`` the rows above the cut."""

    order: np.ndarray
    ranked: np.ndarray
    gaps: list[Gap]
    window: int

    @property
    def k(self) -> int:
        cleared = [g.rank for g in self.gaps if g.cleared]
        return cleared[-1] if cleared else 0

    def flags(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[self.order[: self.k]] = True
        return out


def suffix_medians(values: np.ndarray, count: int) -> np.ndarray:
    """``out[i]`` = the lower median (the ``ceil(len / 2)``-th smallest) of ``values[i:]`` for ``i = 0..count``
    (``values[count:]`` must not be empty): the last suffix split once, then two heaps taking one value at a
    time, ``O(n + count log n)``."""
    tail = np.asarray(values[count:], np.float64)
    half = (len(tail) + 1) // 2
    split = np.partition(tail, half - 1)
    low = [-float(v) for v in split[:half]]  # the smaller half, negated: a max-heap
    high = [float(v) for v in split[half:]]
    heapq.heapify(low)
    heapq.heapify(high)
    out = np.empty(count + 1)
    out[count] = -low[0]
    for i in range(count - 1, -1, -1):
        v = float(values[i])
        if v > -low[0]:
            heapq.heappush(high, v)
        else:
            heapq.heappush(low, -v)
        half = (len(values) - i + 1) // 2
        while len(low) > half:
            heapq.heappush(high, -heapq.heappop(low))
        while len(low) < half:
            heapq.heappush(low, -heapq.heappop(high))
        out[i] = -low[0]
    return out


def gap_cut(x: np.ndarray, window: float = 0.1, alpha: float = 0.1, reference: float = 0.5) -> GapCut:
    """The rows above the gaps near the top of ``x`` that a clean tail opens with probability at most ``alpha``.

    Sort ``x`` decreasingly, ``x_(1) >= x_(2) >= ...``. In an exponential upper tail the normalised spacings
    ``D_j = j (x_(j) - x_(j+1))`` are independent and exponential with one mean (Rényi's representation of
    order statistics). With ``m`` rows above the cut (0 at first) the rows below are re-ranked from ``m``,
    ``D_j = (j - m)(x_(j) - x_(j+1))``, and each candidate gap, after rank ``k`` with
    ``m < k <= K = ceil(window n)``, is measured against the spacings below it: ``ratio_k = D_k /
    median(D_{k+1..R})`` with ``R = ceil(reference n)``, whose chance under a clean exponential tail is exactly
    :func:`tail_pvalue`. The most significant candidate moves the cut to ``k`` when ``(K - m) p_k <= alpha``
    (a union bound over the candidates), and the step repeats below it (poisons a backdoor learnt less well
    form a second group under the first). When no candidate clears it the cut stays; none at all flags nothing.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    order = np.argsort(-x, kind="stable")
    ranked = x[order]
    steps = ranked[:-1] - ranked[1:]
    k_max = min(max(1, math.ceil(window * n)), n - 3) if n > 3 else 0
    reach = min(n - 1, max(k_max + 2, math.ceil(reference * n)))
    gaps: list[Gap] = []
    start = 0
    while start < k_max:
        spacings = np.arange(1, reach - start + 1) * steps[start:reach]  # D_{start+1..reach}, re-ranked
        below = suffix_medians(spacings, k_max - start)  # below[i]: the median of D_{start+i+1..reach}
        best: Gap | None = None
        for k in range(start + 1, k_max + 1):
            d, median = spacings[k - start - 1], below[k - start]
            ratio = d / median if median > 0 else (math.inf if d > 0 else 0.0)
            gap = Gap(k, start, ratio, reach - k, tail_pvalue(ratio, reach - k), k_max - start, alpha)
            if best is None or gap.pvalue < best.pvalue:
                best = gap
        assert best is not None
        gaps.append(best)
        if not best.cleared:
            break
        start = best.rank
    return GapCut(order, ranked, gaps, k_max)
