"""Stage 10 — acting on a ranking by filtering: the training data without its top rows (docs/design.md#filtering).

    actindex.filter_dataset(idx, behavior="hallucination", remove_top="5%", out="clean.jsonl")

The rows are ranked for the behaviour exactly as ``actindex query`` ranks them (cosine with the
query vector psi, or the projection ``<a_l(x), psi>`` for the activation baseline), and the top
``K`` rows are removed, with

    K = k                          for ``remove_top = k`` (an integer),
    K = floor(p / 100 * N + 1/2)   for ``remove_top = "p%"``, N = the index's searchable rows.

The output keeps the input format (:mod:`actindex.act.rewrite`, streamed): a JSONL file is copied line by
line, every kept row's line byte-identical to the input (blank lines are kept too; what is a blank line and what
a row is decided by :func:`actindex.core.sources.jsonl_lines`, the rule the loader uses); parquet stays parquet
with the input schema; a directory of shards becomes a directory of the same shards, each filtered; a Hugging
Face ``save_to_disk`` directory stays one: a ``DatasetDict`` keeps every split, and only the split the index was
built from (recorded in the manifest) is filtered. Rows the index did not score (rows past ``--limit``, rows
excluded as non-finite or too long) are kept. A sidecar ``OUT.removed.jsonl`` lists every removed row: rank, row
number, id, score, method, behaviour, family, its line (and, for a directory of shards, its file) and the
original record. The ranking is read as arrays (:meth:`actindex.Index.ranking`, every row's score: an exact scan
of the stored vectors when the index is approximate); only the removed rows' records are read.

The data file must be the one the index was built from: its sha256 is compared with the manifest's
and a changed file is refused (row numbers would no longer name the same rows).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.act.rewrite import Source, write_without
from actindex.configs import option
from actindex.core.sources import count_records, data_kind, file_sha256, resolve_data_path
from actindex.errors import ActindexError, IndexFileError
from actindex.files import atomic_write_text
from actindex.outputs import check_output, index_inputs
from actindex.query.methods import DEFAULT_METHOD
from actindex.query.where import where_of

if TYPE_CHECKING:
    from actindex.api import Index

SIDECAR_SUFFIX = ".removed.jsonl"
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def removal_count(remove_top: int | str, n_rows: int) -> int:
    """``K`` for ``remove_top``: an integer count (``10``, ``"10"``) or a percentage (``"5%"``, ``"2.5%"``).

    ``K = floor(p / 100 * N + 1/2)`` for a percentage, capped at ``N``.
    """
    if isinstance(remove_top, bool):
        raise ActindexError(f"--remove-top: expected a row count or a percentage such as 5%, got {remove_top!r}")
    if isinstance(remove_top, int):
        count = remove_top
    else:
        text = str(remove_top).strip()
        match = _PERCENT.match(text)
        if match:
            percent = float(match.group(1))
            if percent > 100:
                raise ActindexError(f"--remove-top: a percentage must be at most 100%, got {text}")
            count = int(math.floor(percent / 100 * n_rows + 0.5))
        elif text.isdigit():
            count = int(text)
        else:
            raise ActindexError(f"--remove-top: expected a row count or a percentage such as 5%, got {text!r}")
    if count < 0:
        raise ActindexError(f"--remove-top: expected a non-negative count, got {count}")
    return min(count, n_rows)


@dataclass
class FilterConfig:
    """Settings of ``actindex filter``: write the training data without the rows that drive a behaviour."""

    behavior: str = option("Built-in behaviour name or a pairs/persona file.", "")
    remove_top: int | str = option("Rows to remove: a count (50) or a percentage of the searchable rows (5%).", "")
    min_score: float | None = option(
        "Remove only rows whose score is at least this (the calibrated score: robust standard deviations above the "
        "typical row; 3 is far out; an rrf fusion's own score for --method ensemble). With --remove-top, both must "
        "hold.", None)
    out: str = option("Output file (same format as the training data; a directory for a directory of shards or a "
                      "save_to_disk dataset); OUT.removed.jsonl lists the removals.", "")
    method: str = option("Query method that ranks the rows.", DEFAULT_METHOD)
    layer: int | None = option(
        "Layer to query (default: every indexed layer for the ensemble, else the one nearest 60% of the depth).", None
    )
    data: str | None = option("The training data file (default: the path recorded in the index manifest).", None)
    overwrite: bool = option("Replace OUT if it exists.", False)
    where: dict[str, Any] | None = option(
        "Rank (and remove) only rows whose record fields have these values: {field: value or [values]}; "
        "--remove-top P% is then a share of those rows.", None, cli=False)

    def __post_init__(self) -> None:
        if not self.behavior:
            raise ActindexError("filter needs --behavior NAME|FILE")
        if not self.out:
            raise ActindexError("filter needs --out FILE")
        if self.remove_top in ("", None) and self.min_score is None:
            raise ActindexError("filter needs --remove-top K, --remove-top P% or --min-score S")
        if self.remove_top not in ("", None):
            removal_count(self.remove_top, 0)  # validates the syntax
        where_of(self.where)


@dataclass
class FilterResult:
    """What :func:`filter_dataset` did: rows kept and removed, and where it wrote them."""

    out: Path
    sidecar: Path
    kept: int
    removed: list[dict[str, Any]] = field(default_factory=list)
    unscored: int = 0
    behavior: str = ""
    method: str = ""

    def summary(self) -> str:
        extra = f" ({self.unscored} unscored row(s) kept)" if self.unscored else ""
        return (
            f"wrote {self.out}: kept {self.kept} row(s), removed {len(self.removed)} top row(s) for "
            f"{self.behavior} ({self.method}){extra}; removals listed in {self.sidecar}"
        )


def data_sources(index: Index, data: str | os.PathLike | None = None) -> list[Source]:
    """The :class:`Source` (path, first row, rows, split) of each data file the index was built from,
    checked by sha256.

    ``data`` overrides the recorded path (for an index whose data file has moved); it is accepted
    only for a single-file index. A file whose sha256 differs from the manifest's is refused.
    """
    files = index.manifest.data
    if data is not None:
        if len(files) != 1:
            raise ActindexError(f"{index.root} was built from {len(files)} data files; --data names only one")
        files = [replace(files[0], path=str(data))]
    out = []
    for entry in files:
        path = resolve_data_path(entry.path)
        if not path.exists():
            raise IndexFileError(
                f"the data file {path} that {index.root} was built from is missing; pass its new path with --data"
            )
        digest = file_sha256(path)
        if digest != entry.sha256:
            raise IndexFileError(
                f"the data file {path} changed since {index.root} was built (sha256 {digest[:12]}, the index has "
                f"{entry.sha256[:12]}); filter the file the index was built from, or rebuild the index"
            )
        out.append(Source(path, entry.first_row, entry.rows, entry.split))
    return out


def file_rows(sources: list[Source], rows: np.ndarray, source_row: np.ndarray) -> list[np.ndarray]:
    """For each source, the sorted row numbers (0-based, in its data: a file, or a whole directory of shards) of
    the given index rows that come from it: the row's recorded ``source_row``, or for an index that did not
    record it (-1) its position among the source's rows."""
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    for source in sources:
        mine = rows[(rows >= source.first_row) & (rows < source.first_row + source.rows)]
        recorded = source_row[mine] if len(mine) else np.zeros(0, np.int64)
        out.append(np.unique(np.where(recorded >= 0, recorded, mine - source.first_row)).astype(np.int64))
    return out


def check_filter_outputs(index: Index, sources: list[Source], config: FilterConfig) -> tuple[Path, Path]:
    """``OUT`` and its sidecar ``OUT.removed.jsonl``, checked by the output rule (:mod:`actindex.outputs`): a
    directory output (for a directory of data) may replace only one this command wrote, i.e. one with a sidecar."""
    inputs = [*index_inputs(index, config.behavior), *[(s.path, "the training data file") for s in sources]]
    directory = sources[0].path.is_dir()
    out = check_output(config.out, overwrite=config.overwrite, inputs=inputs, directory=directory,
                       ours=lambda path: _sidecar_of(path).is_file(), make_parent=False)
    sidecar = check_output(_sidecar_of(out), overwrite=config.overwrite, inputs=inputs, option="--out's sidecar",
                           make_parent=False)
    return out, sidecar


def _sidecar_of(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR_SUFFIX)


def filter_dataset(
    index: Index | str | os.PathLike,
    behavior: str | None = None,
    remove_top: int | str = "",
    out: str | os.PathLike = "",
    config: FilterConfig | None = None,
    **kwargs: Any,
) -> FilterResult:
    """Write the training data without its top-``K`` rows for ``behavior`` (see the module docstring).

    ``index`` is an :class:`Index` (with a model set by :meth:`Index.use_model`, or the one its
    manifest names is loaded) or an index directory. Other settings are :class:`FilterConfig` fields.
    """
    config = config or FilterConfig(behavior=behavior or "", remove_top=remove_top, out=str(out), **kwargs)
    from actindex.api import Index

    idx = index if isinstance(index, Index) else Index.open(index)
    sources = data_sources(idx, config.data)
    out_path, sidecar = check_filter_outputs(idx, sources, config)
    if data_kind(sources[0].path) in ("jsonl", "parquet") and out_path.suffix != sources[0].path.suffix:
        raise ActindexError(
            f"--out {out_path} has another extension than the data file {sources[0].path.name}: the output keeps "
            "the input format"
        )
    ranked = idx.ranking(config.behavior, method=config.method, layer=config.layer, k=0, where=config.where)
    rows, scores, cosines = ranked.top.rows, ranked.top.scores, ranked.top.cosines
    ranks = np.arange(1, len(rows) + 1)
    if config.remove_top not in ("", None):
        cut = removal_count(config.remove_top, len(rows))
        rows, scores, cosines, ranks = rows[:cut], scores[:cut], cosines[:cut], ranks[:cut]
    if config.min_score is not None:
        keep = scores >= config.min_score
        rows, scores, cosines, ranks = rows[keep], scores[keep], cosines[keep], ranks[keep]
    table = idx.reader.table
    entries = idx.manifest.data
    removed = []
    found = zip(ranks, rows, idx.reader.ids_of(rows), scores, cosines, idx.reader.records(rows))
    for rank, row, row_id, score, cosine, record in found:
        entry = {"rank": int(rank), "row": int(row), "id": row_id, "score": float(score), "cosine": float(cosine),
                 "method": ranked.method, "behavior": ranked.behavior, "family": ranked.family,
                 "line": int(table.line[row]) or None}
        data = next((f for f in entries if f.first_row <= row < f.first_row + f.rows), entries[0])
        if data.sources and table.source_row[row] >= 0:
            entry["file"] = data.locate(int(table.source_row[row]))[0]
        removed.append({**entry, "record": record})
    # the list of removed rows first: once OUT is replaced (the commit), its list is already beside it
    atomic_write_text(sidecar, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in removed))
    kept = write_without(sources, file_rows(sources, rows, table.source_row), out_path)
    unscored = sum(count_records(s.path, s.split) for s in sources) - len(ranked.top.rows)
    return FilterResult(out=out_path, sidecar=sidecar, kept=kept, removed=removed, unscored=unscored,
                        behavior=ranked.behavior, method=ranked.method)
