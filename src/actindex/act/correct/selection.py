"""Choosing ``D+``, ``D-``, ``D0`` from the ranking's scores (docs/design.md#correction).

Scores ``s_i`` (one per row, NaN for a row left out) are scaled by their largest magnitude, ``I_i = s_i / max_j
|s_j|`` (:func:`scale_scores`). The rows with ``I > 0`` sorted by ``I`` descending, and those with ``I < 0``
sorted by ``I`` ascending, are the two sides' candidates; a selection rule (a few lines, :class:`Selection`,
listed in :data:`SELECTIONS`) says how many of each side's strongest rows to keep (:meth:`Selection.count`).
``D0`` is then the ``k0`` rows with the smallest ``|I|`` among the rest. :func:`select_rows` is the entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actindex.errors import ActindexError
from actindex.registry import Registered


@dataclass
class Split:
    """Row numbers of ``D+``, ``D-``, ``D0`` and the scaled scores ``I = s / max |s|`` (NaN: not ranked)."""

    pos: np.ndarray
    neg: np.ndarray
    zero: np.ndarray
    influence: np.ndarray
    rule: str

    def sizes(self) -> dict[str, int]:
        return {"D+": len(self.pos), "D-": len(self.neg), "D0": len(self.zero)}

    def sets(self) -> dict[str, np.ndarray]:
        """The row numbers of each set by its name in training: ``pos`` (D+), ``neg`` (D-), ``zero`` (D0)."""
        return {"pos": self.pos, "neg": self.neg, "zero": self.zero}

    def report(self, ids: list[str]) -> dict[str, object]:
        """The ``selection`` entry of ``correction.json``: the rule, the set sizes and the ids of D+ and D-."""
        return {"rule": self.rule, **self.sizes(), "D+ ids": [ids[i] for i in self.pos],
                "D- ids": [ids[i] for i in self.neg]}


class Selection(Registered, noun="selection", listed=True):
    """A rule for how many of one side's rows (``D+`` or ``D-``) are kept."""

    name: ClassVar[str]
    help: ClassVar[str]

    def count(self, magnitudes: np.ndarray, k: int) -> int:
        """How many rows of one side to keep, given their ``|I|`` sorted descending (possibly none)."""
        raise NotImplementedError


def scale_scores(scores: np.ndarray) -> np.ndarray:
    """``I_i = s_i / max_j |s_j|`` over the finite scores (NaN stays NaN)."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    top = float(np.abs(scores[finite]).max()) if finite.any() else 0.0
    if top == 0.0:
        raise ActindexError("every score is zero or missing: nothing to correct")
    return np.where(finite, scores / top, np.nan)


def select_rows(scores: np.ndarray, rule: str = "topk", k: int = 16, k0: int | None = None) -> Split:
    """Split rows into ``D+``, ``D-``, ``D0`` from raw scores (one per row, NaN for rows to leave out).

    ``topk``: the ``k`` largest positive ``I``, the ``k`` most negative, and the ``k0`` (default
    ``max(|D+|, |D-|)``) rows with the smallest ``|I|`` among the rest. ``pareto``: on each side
    the rows above the knee of the sorted ``|I|`` curve (:func:`knee_count`), at most ``k``.
    """
    selection = Selection.get(rule)
    if k < 1:
        raise ActindexError(f"--k must be at least 1, got {k}")
    influence = scale_scores(scores)
    finite = np.isfinite(influence)
    rows = np.arange(len(influence))
    pos_rows = rows[finite & (influence > 0)]
    neg_rows = rows[finite & (influence < 0)]
    pos_rows = pos_rows[np.argsort(-influence[pos_rows], kind="stable")]
    neg_rows = neg_rows[np.argsort(influence[neg_rows], kind="stable")]
    pos = pos_rows[: selection.count(influence[pos_rows], k)]
    neg = neg_rows[: selection.count(-influence[neg_rows], k)]
    if not len(pos):
        raise ActindexError("no row has a positive score: D+ is empty, so there is nothing to correct")
    taken = np.zeros(len(influence), bool)
    taken[pos] = taken[neg] = True
    rest = rows[finite & ~taken]
    n0 = k0 if k0 is not None else max(len(pos), len(neg))
    zero = rest[np.argsort(np.abs(influence[rest]), kind="stable")[:n0]]
    return Split(pos=pos, neg=neg, zero=zero, influence=influence, rule=rule)


class TopK(Selection):
    """``min(k, m)`` of a side's ``m`` rows: the ``k`` largest positive ``I``, the ``k`` most negative."""

    name = "topk"
    help = "the k most positive rows, the k most negative, the k0 nearest zero"

    def count(self, magnitudes: np.ndarray, k: int) -> int:
        return min(k, len(magnitudes))


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


#: the registry, in the order of ``--select``'s choices
SELECTIONS = (TopK, Pareto)
Selection.register(*SELECTIONS)


def selection_names() -> list[str]:
    """Every registered selection rule, for ``--select``'s choices."""
    return list(Selection.registry)
