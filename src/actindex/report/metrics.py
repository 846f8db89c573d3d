"""The report's numbers: which labels count as positive, and how well a ranking finds them.

* positive label: anything other than ``"clean"`` (:data:`CLEAN`), or, with ``positive_label``, a value
  equal to it;
* ``label_metrics``: AUROC, average precision and precision@n of the scores against those labels;
* ``is_heavy_tailed``: excess kurtosis ``E[z^4] - 3`` above a threshold (the histogram then counts on a
  log axis).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CLEAN", "HEAVY_TAIL_KURTOSIS", "is_heavy_tailed", "is_positive", "label_metrics"]

CLEAN = "clean"
"""The label value that means "negative" under the default positive-label rule."""

HEAVY_TAIL_KURTOSIS = 3.0
"""Excess kurtosis above which a score distribution is drawn with a log-scale count axis."""


def is_positive(value: Any, positive_label: str | None = None) -> bool:
    """Whether a label value counts as positive.

    Default rule: anything other than ``"clean"`` is positive. With ``positive_label`` a value is
    positive iff it equals it (compared as text, so ``--positive-label true`` matches JSON ``true``).
    """
    if positive_label is None:
        return value != CLEAN
    return positive_label in (str(value), json.dumps(value))


def label_metrics(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """AUROC, average precision and precision@n of a ranking against binary labels.

    ``n`` is the number of positives; precision@n is the fraction of positives among the ``n``
    highest-scoring rows (ties keep the given order). AUROC and AP are ``None`` when the labels
    have one class only. Returns ``{n, n_positive, auroc, ap, precision_at_n}``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-D of the same length")
    n_pos = int(labels.sum())
    out: dict[str, Any] = {"n": int(len(labels)), "n_positive": n_pos, "auroc": None, "ap": None}
    order = np.argsort(-scores, kind="stable")
    out["precision_at_n"] = float(labels[order[:n_pos]].mean()) if n_pos else None
    if 0 < n_pos < len(labels):
        out["auroc"] = float(roc_auc_score(labels, scores))
        out["ap"] = float(average_precision_score(labels, scores))
    return out


def is_heavy_tailed(scores: Sequence[float] | np.ndarray, threshold: float = HEAVY_TAIL_KURTOSIS) -> bool:
    """Whether the excess kurtosis ``mean(z^4) - 3`` of ``scores`` (``z`` standardised) exceeds
    ``threshold`` (3 = a Laplace distribution).

    The histogram uses a log-scale count axis for such distributions so the tails stay visible.
    """
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < 4:
        return False
    std = x.std()
    if not np.isfinite(std) or std == 0:
        return False
    z = (x - x.mean()) / std
    return float((z**4).mean() - 3.0) > threshold
