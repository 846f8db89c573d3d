"""What a query returns: ranked rows (:class:`Hit`) for one behaviour and method (:class:`QueryResult`).

A hit's ``score`` means "how strongly training on this row pushes the model towards the behaviour", on one
scale for every method, in the order of the ranking: the calibrated score ``(s - median) / (1.4826 MAD)`` of the
row's search score ``s`` (its cosine with the query vector; the projection for ``activation``) against the
index's typical rows, positive pushes towards, negative inhibits, in robust standard deviations; for a fused
method the weighted mean of its members' (:func:`~actindex.query.fusion.calibrated`). A fusion rule that orders
rows by another score (``rrf``, the reciprocal-rank sum) shows that score as ``score`` and keeps the calibrated
one as ``calibrated`` (otherwise ``calibrated == score``). ``cosine`` is the raw cosine with the query vector (a
fused method: the members' weighted mean). A reranked hit is ordered by its exact ``influence`` and keeps its
search's ``score``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
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
    calibrated: float | None = None  # the calibrated score (``score`` unless a rule orders by another score)
    cosine: float | None = None  # the raw cosine with the query vector (a fused method: its members' weighted mean)
    influence: float | None = None  # exact influence when reranked (``score`` keeps the search score)
    module_scores: dict[str, float] | None = None  # per-module terms of ``influence`` (sum to it)
    token_scores: list[tuple[str, float]] | None = None  # per-token terms of ``influence`` (sum to it), decoded
    token_response: list[bool] | None = None  # per token: a response token (in the loss), else prompt
    checkpoint_scores: dict[str, float] | None = None  # a checkpoint set's query: each checkpoint's score s_c(x)

    def to_dict(self, with_record: bool = False) -> dict[str, Any]:
        out = {"rank": self.rank, "row": self.row, "id": self.id, "score": self.score, "snippet": self.snippet}
        if self.calibrated is not None:
            out["calibrated"] = self.calibrated
        if self.cosine is not None:
            out["cosine"] = self.cosine
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

    def __len__(self) -> int:
        """The rows returned: the top rows and the bottom rows (``len(result.top)``, ``len(result.bottom)``)."""
        return len(self.top) + len(self.bottom)

    def __iter__(self) -> Iterator[Hit]:
        """Every returned hit, the top rows first, then the bottom rows (each side in its own order)."""
        return iter([*self.top, *self.bottom])

    def to_dicts(self, with_record: bool = False) -> list[dict[str, Any]]:
        """One dict per hit (:meth:`Hit.to_dict`) with its ``side``, ``top`` or ``bottom``."""
        rows = [dict(h.to_dict(with_record), side="top") for h in self.top]
        return rows + [dict(h.to_dict(with_record), side="bottom") for h in self.bottom]

    def to_dict(self, with_record: bool = True) -> dict[str, Any]:
        """The result as a dict: what ``query --format json`` prints and ``serve`` returns."""
        out = {"behavior": self.behavior, "method": self.method, "family": self.family, "seconds": self.seconds,
               "timings": self.timings, "cached": self.cached, "notes": self.notes, "warnings": self.warnings,
               "members": self.members, "top": [h.to_dict(with_record) for h in self.top],
               "bottom": [h.to_dict(with_record) for h in self.bottom]}
        if self.checkpoints:
            out["checkpoints"] = self.checkpoints
        if self.answers:
            out["answers"] = self.answers
        return out

    def to_json(self, with_record: bool = True, indent: int | None = None) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(with_record), indent=indent, ensure_ascii=False)

    def to_pandas(self) -> Any:
        """The hits as a pandas DataFrame: one row per hit (``side``, rank, row, id, score, calibrated, cosine,
        snippet...) with the record's fields as columns (prefixed ``record.``)."""
        import pandas as pd

        rows = []
        for d in self.to_dicts(with_record=True):
            record = d.pop("record") or {}
            rows.append({**d, **{f"record.{k}": v for k, v in record.items()}})
        return pd.DataFrame(rows)

    def to_arrow(self) -> Any:
        """The hits as a pyarrow Table, one row per hit; the record and any per-module or per-checkpoint scores
        as JSON text (records of one index need not share their fields)."""
        import pyarrow as pa

        rows = []
        for d in self.to_dicts(with_record=True):
            for key in ("record", "module_scores", "checkpoint_scores"):
                if key in d:
                    d[key] = json.dumps(d[key], ensure_ascii=False)
            rows.append(d)
        return pa.Table.from_pylist(rows)

    def _repr_html_(self) -> str:
        """The ranked rows as an HTML table, for notebooks."""
        head = "".join(f"<th>{name}</th>" for name in ("side", "rank", "id", "score", "cosine", "snippet"))

        def row(hit: Hit, side: str) -> str:
            cosine = "" if hit.cosine is None else f"{hit.cosine:.4f}"
            cells = (side, hit.rank, hit.id, f"{hit.score:.4g}", cosine, hit.snippet)
            return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

        body = "".join([*(row(h, "top") for h in self.top), *(row(h, "bottom") for h in self.bottom)])
        title = html.escape(f"{self.behavior}: {self.method} over {self.family}")
        return f"<p><b>{title}</b></p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def snippet_of(record: dict[str, Any], width: int = 160) -> str:
    """A one-line preview of a stored record (its JSON when it is not a valid row)."""
    from actindex.core.rows import normalise_record

    try:
        return normalise_record(Path("<index>"), 0, 0, record).snippet(width)
    except ActindexError:
        return json.dumps(record)[:width]
