"""``topk``: the ``k`` strongest rows of each side."""

from __future__ import annotations

import numpy as np

from actindex.act.correct.selection.base import Selection


class TopK(Selection):
    """``min(k, m)`` of a side's ``m`` rows: the ``k`` largest positive ``I``, the ``k`` most negative."""

    name = "topk"
    help = "the k most positive rows, the k most negative, the k0 nearest zero"

    def count(self, magnitudes: np.ndarray, k: int) -> int:
        return min(k, len(magnitudes))
