"""What a query returns: ranked rows (:class:`Hit`) for one behaviour and method (:class:`QueryResult`)."""

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
    influence: float | None = None  # exact influence when reranked (``score`` keeps the search score)
    module_scores: dict[str, float] | None = None  # per-module terms of ``influence`` (sum to it)
    token_scores: list[tuple[str, float]] | None = None  # per-token terms of ``influence`` (sum to it)

    def to_dict(self, with_record: bool = False) -> dict[str, Any]:
        out = {"rank": self.rank, "row": self.row, "id": self.id, "score": self.score, "snippet": self.snippet}
        if self.influence is not None:
            out["influence"] = self.influence
        if self.module_scores is not None:
            out["module_scores"] = self.module_scores
        if self.token_scores is not None:
            out["tokens"] = [t for t, _ in self.token_scores]
            out["token_scores"] = [s for _, s in self.token_scores]
        if with_record:
            out["record"] = self.record
        return out


@dataclass
class QueryResult:
    """Top (most positive) and bottom (most negative) rows for one behaviour and method."""

    behavior: str
    method: str
    family: str
    top: list[Hit]
    bottom: list[Hit] = field(default_factory=list)
    vector: np.ndarray | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dicts(self, with_record: bool = False) -> list[dict[str, Any]]:
        rows = [dict(h.to_dict(with_record), side="top") for h in self.top]
        return rows + [dict(h.to_dict(with_record), side="bottom") for h in self.bottom]

    def to_dataframe(self):  # pragma: no cover - needs pandas
        import pandas as pd

        return pd.DataFrame(self.to_dicts())

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
