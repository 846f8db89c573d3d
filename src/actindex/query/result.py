"""What a query returns: ranked rows (:class:`Hit`) for one behaviour and method (:class:`QueryResult`).

A hit's ``score`` always means "how strongly training on this row pushes the model towards the
behaviour": the cosine of the row's vector with the query vector for a single method (the projection
for ``activation``), and for a fused method (the ``ensemble``) the calibrated score, the weighted mean of
the members' standardised cosines (:func:`~actindex.query.fusion.calibrated`): positive pushes towards,
negative inhibits, in robust standard deviations from the typical row. ``fused`` keeps the fusion rule's
own score (the reciprocal-rank sum the rows are ordered by). A reranked hit adds its exact influence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actindex.errors import ActindexError


@dataclass
class Hit:
    """One ranked row."""

    rank: int
    row: int
    id: str
    score: float
    snippet: str
    record: dict[str, Any]
    fused: float | None = None  # the fusion rule's score for fused methods (the order); ``score`` is calibrated
    influence: float | None = None  # exact influence when reranked (``score`` keeps the search score)
    module_scores: dict[str, float] | None = None  # per-module terms of ``influence`` (sum to it)
    token_scores: list[tuple[str, float]] | None = None  # per-token terms of ``influence`` (sum to it), decoded
    token_response: list[bool] | None = None  # per token: a response token (in the loss), else prompt
    checkpoint_scores: dict[str, float] | None = None  # a checkpoint set's query: each checkpoint's score s_c(x)

    def to_dict(self, with_record: bool = False) -> dict[str, Any]:
        out = {"rank": self.rank, "row": self.row, "id": self.id, "score": self.score, "snippet": self.snippet}
        if self.fused is not None:
            out["fused"] = self.fused
        if self.influence is not None:
            out["influence"] = self.influence
        if self.module_scores is not None:
            out["module_scores"] = self.module_scores
        if self.checkpoint_scores is not None:
            out["checkpoint_scores"] = self.checkpoint_scores
        if self.token_scores is not None:
            out["tokens"] = [t for t, _ in self.token_scores]
            out["token_scores"] = [s for _, s in self.token_scores]
            if self.token_response is not None:
                out["token_response"] = self.token_response
        if with_record:
            out["record"] = self.record
        return out


@dataclass
class QueryResult:
    """Top (most positive) and bottom (most negative) rows for one behaviour and method.

    ``members`` describes a fused method's members (method, layer, family, weight, calibration);
    ``timings`` says where the time went, in seconds (``behaviour``, ``model pass``, ``search``,
    ``rerank``); ``cached`` whether the behaviour's vectors came from the index's behaviour cache;
    ``warnings`` what the user should know about the ranking (a model that has memorised its rows);
    ``answers`` the model's answers a query of its own outputs (``generate``) attributes, ``{prompt, answer}``.
    A query of several checkpoints' indexes (:mod:`actindex.query.checkpoints`) lists them in
    ``checkpoints``, and each hit carries its per-checkpoint scores.
    """

    behavior: str
    method: str
    family: str
    top: list[Hit]
    bottom: list[Hit] = field(default_factory=list)
    vector: np.ndarray | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    warnings: list[str] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, str]] = field(default_factory=list)

    def to_dicts(self, with_record: bool = False) -> list[dict[str, Any]]:
        rows = [dict(h.to_dict(with_record), side="top") for h in self.top]
        return rows + [dict(h.to_dict(with_record), side="bottom") for h in self.bottom]

    def to_json(self, with_record: bool = True) -> dict[str, Any]:
        """The result as ``query --format json`` prints it (and ``serve`` returns it)."""
        out = {"behavior": self.behavior, "method": self.method, "family": self.family, "seconds": self.seconds,
               "timings": self.timings, "cached": self.cached, "notes": self.notes, "warnings": self.warnings,
               "members": self.members, "top": [h.to_dict(with_record) for h in self.top],
               "bottom": [h.to_dict(with_record) for h in self.bottom]}
        if self.checkpoints:
            out["checkpoints"] = self.checkpoints
        if self.answers:
            out["answers"] = self.answers
        return out

    def to_dataframe(self) -> Any:
        """The hits as a pandas DataFrame: one row per hit (``side``, rank, row, id, scores, snippet) with the
        record's fields as columns (prefixed ``record.``)."""
        import pandas as pd

        rows = []
        for d in self.to_dicts(with_record=True):
            record = d.pop("record") or {}
            rows.append({**d, **{f"record.{k}": v for k, v in record.items()}})
        return pd.DataFrame(rows)

    def __len__(self) -> int:
        return len(self.top)

    def __iter__(self):
        return iter(self.top)


def snippet_of(record: dict[str, Any], width: int = 160) -> str:
    """A one-line preview of a stored record (its JSON when it is not a valid row)."""
    from actindex.core.rows import normalise_record

    try:
        return normalise_record(Path("<index>"), 0, 0, record).snippet(width)
    except ActindexError:
        return json.dumps(record)[:width]
