"""What the report gathers per method: the full ranking of every valid row and its label metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.errors import ActindexError
from actindex.query.methods import QueryMethod
from actindex.query.result import Hit, QueryResult
from actindex.report.metrics import is_positive, label_metrics

if TYPE_CHECKING:
    from actindex.api import Index
    from actindex.query.behaviors import Behavior
    from actindex.query.pipeline import QueryConfig

__all__ = ["MethodRun", "label_arrays", "run_method"]


@dataclass
class MethodRun:
    """One method's full ranking (every valid row) and what the page needs from it."""

    method: str
    result: QueryResult  # ``top`` = every valid row, best first
    top: list[Hit]
    bottom: list[Hit]
    scores: np.ndarray
    labels: np.ndarray | None = None  # bool per ranked row (None: no labels)
    labelled: np.ndarray | None = None  # bool per ranked row: has a usable label
    metrics: dict[str, Any] | None = None
    projection: bool = False
    fused: bool = False
    notes: list[str] = field(default_factory=list)


def label_arrays(values: Sequence[Any], positive_label: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, positive)`` boolean arrays for the label values of ranked rows: whether a value is not null,
    and whether it is positive (:func:`~actindex.report.metrics.is_positive`)."""
    labelled = np.array([v is not None for v in values], dtype=bool)
    positive = np.array([v is not None and is_positive(v, positive_label) for v in values], dtype=bool)
    return labelled, positive


def run_method(
    index: Index,
    behavior: Behavior,
    config: QueryConfig,
    labels_field: str | None = None,
    positive_label: str | None = None,
) -> MethodRun:
    """Run the query exactly as ``actindex query`` runs it with ``config`` (its cards), then score every row
    with the same method and fusion (``k = 0``, no rerank; read as arrays, :meth:`actindex.Index.ranking`) for
    the histogram and the label metrics (the label of every row read from the stored records a block at a time).

    The metrics cover the labelled rows only; a run whose rows carry no ``labels_field`` at all is
    refused (a typo in the field name).
    """
    result = index.session.query(behavior, config)
    everything = index.session.ranking(behavior, replace(config, k=0, bottom_k=0, rerank=None, per_token=False,
                                                         clusters=0, recall=None))
    scores = np.asarray(everything.top.scores, dtype=np.float64)
    method = config.resolved_method()
    run = MethodRun(method=result.method, result=result, top=result.top, bottom=result.bottom, scores=scores,
                    projection=QueryMethod.get(method).projection_scores, fused=QueryMethod.get(method).fused)
    if labels_field:
        labelled, positive = label_arrays(index.reader.record_values(everything.top.rows, labels_field), positive_label)
        if not labelled.any():
            first = index.reader.records(everything.top.rows[:1])
            raise ActindexError(
                f"no row of {index.root} has a label field {labels_field!r} "
                f"(fields of the first row: {', '.join(first[0]) if first else 'none'})"
            )
        run.labelled, run.labels = labelled, positive
        run.metrics = label_metrics(scores[labelled], positive[labelled])
        missing = int((~labelled).sum())
        if missing:
            run.notes.append(f"{missing} row(s) have no {labels_field!r} value and are left out of the metrics")
        if run.metrics["auroc"] is None:
            kind = "positive" if run.metrics["n_positive"] else "negative"
            run.notes.append(f"every labelled row is {kind}: AUROC and AP are undefined")
    return run
