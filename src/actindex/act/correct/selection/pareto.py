"""``pareto``: each side's heavy tail, the rows above the knee of its sorted ``|I|`` curve."""

from __future__ import annotations

import numpy as np

from actindex.act.correct.selection.base import Selection


def knee_count(values: np.ndarray) -> int:
    """How many of the values (sorted descending here) lie above the knee of their curve.

    Kneedle rule: with ranks ``x_i = i / (m - 1)`` and values rescaled to ``y_i = (v_i - v_min) /
    (v_max - v_min)``, the knee is the point furthest below the chord from the largest to the
    smallest value, ``i* = argmax_i (1 - x_i - y_i)``; the rows before it (``i < i*``) form the
    heavy tail. At least one row is kept.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    m = len(v)
    if m <= 2 or v[0] == v[-1]:
        return m
    x = np.arange(m) / (m - 1)
    y = (v - v[-1]) / (v[0] - v[-1])
    return max(1, int(np.argmax(1.0 - x - y)))


class Pareto(Selection):
    """The rows above the knee of a side's sorted ``|I|`` (:func:`knee_count`), at most ``k``."""

    name = "pareto"
    help = "on each side the rows above the knee of the sorted |I| curve, at most k"

    def count(self, magnitudes: np.ndarray, k: int) -> int:
        return min(k, knee_count(magnitudes)) if len(magnitudes) else 0
