"""Stage 10 — acting on a ranking by filtering: the training data without its top rows (DESIGN section 6).

    actindex.filter_dataset(idx, behavior="hallucination", remove_top="5%", out="clean.jsonl")

The rows are ranked for the behaviour exactly as ``actindex query`` ranks them (cosine with the
query vector psi, or the projection ``<a_l(x), psi>`` for the activation baseline), and the top
``K`` rows are removed, with

    K = k                          for ``remove_top = k`` (an integer),
    K = floor(p / 100 * N + 1/2)   for ``remove_top = "p%"``, N = the index's searchable rows.

The output keeps the input format. A JSONL file is copied line by line: every kept row's line is
byte-identical to the input (blank lines are kept too; what is a blank line and what a row is decided
by :func:`actindex.core.readers.jsonl_lines`, the rule the loader uses); parquet stays parquet with the input
schema; a Hugging Face ``save_to_disk`` directory stays one: a ``DatasetDict`` keeps every split, and
only the split the index was built from (recorded in the manifest) is filtered. Rows the index did not score
(rows past ``--limit``, rows excluded as non-finite or too long) are kept. A sidecar
``OUT.removed.jsonl`` lists every removed row: rank, row number, id, score, method, behaviour,
family and the original record.

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

from actindex.configs import option
from actindex.core.readers import count_records, file_sha256, jsonl_lines, resolve_data_path
from actindex.errors import ActindexError, IndexFileError
from actindex.files import atomic_file, atomic_write_text, staged_directory
from actindex.query.methods import DEFAULT_METHOD

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
        "Remove only rows whose score is at least this (the default ensemble's calibrated score: robust standard "
        "deviations above the typical row; 3 is far out). With --remove-top, both must hold.", None)
    out: str = option("Output file (same format as the training data); OUT.removed.jsonl lists the removals.", "")
    method: str = option("Query method that ranks the rows.", DEFAULT_METHOD)
    layer: int | None = option(
        "Layer to query (default: every indexed layer for the ensemble, else the one nearest 60% of the depth).", None
    )
    data: str | None = option("The training data file (default: the path recorded in the index manifest).", None)
    overwrite: bool = option("Replace OUT if it exists.", False)

    def __post_init__(self) -> None:
        if not self.behavior:
            raise ActindexError("filter needs --behavior NAME|FILE")
        if not self.out:
            raise ActindexError("filter needs --out FILE")
        if self.remove_top in ("", None) and self.min_score is None:
            raise ActindexError("filter needs --remove-top K, --remove-top P% or --min-score S")
        if self.remove_top not in ("", None):
            removal_count(self.remove_top, 0)  # validates the syntax


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


@dataclass(frozen=True)
class Source:
    """One data file an index was built from: its rows are index rows ``first_row .. first_row + rows - 1``.

    ``split`` is the ``DatasetDict`` split the rows were read from (``None`` for a file, or for a
    manifest that predates the field: then the default rule of :func:`actindex.core.readers.choose_split`).
    """

    path: Path
    first_row: int
    rows: int
    split: str | None = None


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


def _format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    return "parquet" if path.suffix == ".parquet" else "jsonl"


def _jsonl_lines(path: Path, removed: set[int]) -> tuple[list[bytes], int]:
    """The raw lines of a JSONL file minus the records (0-based) in ``removed``, and how many records remain.

    Lines are told apart exactly as the loader tells them (:func:`actindex.core.readers.jsonl_lines`): a
    blank line is copied and is not a record. Records the index did not score are kept.
    """
    lines: list[bytes] = []
    record = kept = 0
    for _, raw, is_row in jsonl_lines(path):
        if not is_row:
            lines.append(raw)
            continue
        if record not in removed:
            lines.append(raw)
            kept += 1
        record += 1
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"  # the next file's first line must start on a line of its own
    return lines, kept


def _write_atomic(out: Path, write: Any, directory: bool = False) -> None:
    """Call ``write(path)`` on a fresh temporary path beside ``out`` (never an existing path or link), then
    rename it over ``out``: a file through :func:`~actindex.files.atomic_file`, a ``save_to_disk`` directory
    through a fresh staging directory."""
    if not directory:
        with atomic_file(out) as tmp:
            write(tmp)
        return
    with staged_directory(out) as staging:
        write(staging)


def file_rows(sources: list[Source], rows: list[int], source_row: np.ndarray) -> list[set[int]]:
    """For each source, the numbers (0-based, in its file) of the given index rows that come from it: the row's
    recorded ``source_row``, or for an index that did not record it (-1) its position among the source's rows."""
    out: list[set[int]] = [set() for _ in sources]
    for row in rows:
        i = next(j for j, s in enumerate(sources) if s.first_row <= row < s.first_row + s.rows)
        recorded = int(source_row[row])
        out[i].add(recorded if recorded >= 0 else row - sources[i].first_row)
    return out


def write_filtered(sources: list[Source], removed: list[set[int]], out: Path) -> int:
    """Write the rows of ``sources`` but those in ``removed`` (per source, numbers in its file, as
    :func:`file_rows` gives them); returns the rows kept.

    Every source must have the same format (JSONL, parquet or one HF directory). Of a ``DatasetDict``
    directory every split is written, and only the source's split is filtered.
    """
    formats = {_format(s.path) for s in sources}
    if len(formats) != 1:
        raise ActindexError(f"cannot write one filtered file from data files of different formats ({formats})")
    fmt = formats.pop()
    if fmt == "jsonl":
        chunks, kept = [], 0
        for source, gone in zip(sources, removed):
            lines, kept_here = _jsonl_lines(source.path, gone)
            chunks.extend(lines)
            kept += kept_here

        def write_jsonl(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                handle.writelines(chunks)

        _write_atomic(out, write_jsonl)
        return kept
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for source, gone in zip(sources, removed):
            table = pq.read_table(source.path)
            keep = [i for i in range(table.num_rows) if i not in gone]
            tables.append(table.take(pa.array(keep, pa.int64())))
        try:
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        except pa.ArrowInvalid as err:
            raise ActindexError(f"the parquet data files have different schemas: {err}") from None
        _write_atomic(out, lambda tmp: pq.write_table(table, tmp))
        return table.num_rows
    if len(sources) != 1:
        raise ActindexError("filtering an index built from several save_to_disk directories is not supported")
    import datasets

    from actindex.core.readers import choose_split, load_hf_dataset

    source = sources[0]
    ds = load_hf_dataset(source.path)
    split = choose_split(source.path, list(ds), source.split) if isinstance(ds, datasets.DatasetDict) else None
    part = ds if split is None else ds[split]
    keep = [i for i in range(len(part)) if i not in removed[0]]
    selected = part.select(keep)
    if split is None:
        _write_atomic(out, lambda tmp: selected.save_to_disk(str(tmp)), directory=True)
    else:
        whole = datasets.DatasetDict({name: selected if name == split else ds[name] for name in ds})
        _write_atomic(out, lambda tmp: whole.save_to_disk(str(tmp)), directory=True)
    return len(selected)


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
    out_path = Path(config.out)
    sources = data_sources(idx, config.data)
    if any(out_path.resolve() == s.path.resolve() for s in sources):
        raise ActindexError(f"--out {out_path} is the training data file itself; write to another path")
    if out_path.exists() and not config.overwrite:
        raise ActindexError(f"{out_path} exists; pass --overwrite to replace it")
    sidecar = out_path.with_name(out_path.name + SIDECAR_SUFFIX)
    if _format(sources[0].path) != "hf" and out_path.suffix != sources[0].path.suffix:
        raise ActindexError(
            f"--out {out_path} has another extension than the data file {sources[0].path.name}: the output keeps "
            "the input format"
        )
    result = idx.query(config.behavior, method=config.method, layer=config.layer, k=0)
    hits = result.top
    if config.remove_top not in ("", None):
        hits = hits[: removal_count(config.remove_top, len(result.top))]
    if config.min_score is not None:
        hits = [h for h in hits if h.score >= config.min_score]
    table = idx.table
    removed = [
        {"rank": h.rank, "row": h.row, "id": h.id, "score": h.score, "method": result.method,
         "behavior": result.behavior, "family": result.family, "line": int(table.line[h.row]) or None,
         "record": h.record}
        for h in hits
    ]
    kept = write_filtered(sources, file_rows(sources, [h.row for h in hits], table.source_row), out_path)
    atomic_write_text(sidecar, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in removed))
    unscored = sum(count_records(s.path, s.split) for s in sources) - len(result.top)
    return FilterResult(out=out_path, sidecar=sidecar, kept=kept, removed=removed, unscored=unscored,
                        behavior=result.behavior, method=result.method)
