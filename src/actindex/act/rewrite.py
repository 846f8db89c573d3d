"""Writing training data back without some of its rows, in its own format, streamed (what ``filter`` writes).

Each data source (:class:`Source`: a file or directory the index was built from, with the index rows it gave)
is rewritten without the rows in a sorted array of its row numbers (0-based, counted over the whole source):

* JSONL: copied line by line; every kept line is byte-identical, blank lines are kept (what is blank is decided
  by :func:`actindex.core.sources.jsonl_lines`, the loader's rule), and a file's last line gets its newline;
* parquet: read one row group batch at a time (:func:`actindex.core.sources.parquet_batches`) and written with
  the input's schema through one ``ParquetWriter``, in row groups of about the input's size;
* a directory of shards: a directory of the same shard files, each rewritten as above without its own rows (a
  row's number in its shard is its number in the directory less the rows of the shards before it);
* a ``save_to_disk`` directory: written again with ``save_to_disk``; of a ``DatasetDict`` every split is kept and
  only the source's split is filtered.

Nothing holds a whole file: memory is one batch (or line) plus the removed rows' numbers. Output is written to a
fresh temporary path and renamed into place (:mod:`actindex.files`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actindex.core.sources import data_kind, jsonl_lines, parquet_batches, shard_files
from actindex.errors import ActindexError
from actindex.files import atomic_file, staged_directory

#: rows a rewritten parquet file gathers into one row group when its input's row groups are larger
MAX_ROW_GROUP = 1 << 16


@dataclass(frozen=True)
class Source:
    """One data source of an index: its rows are index rows ``first_row .. first_row + rows - 1``.

    ``split`` is the ``DatasetDict`` split the rows were read from (``None`` for a file, a directory of shards,
    or a manifest that predates the field: then the default rule of
    :func:`actindex.core.sources.choose_split`).
    """

    path: Path
    first_row: int
    rows: int
    split: str | None = None


def _kept(rows: int, first: int, removed: np.ndarray) -> np.ndarray:
    """Mask of the ``rows`` rows from row ``first`` on that are not in the sorted array ``removed``."""
    lo, hi = np.searchsorted(removed, [first, first + rows])
    keep = np.ones(rows, dtype=bool)
    keep[removed[lo:hi] - first] = False
    return keep


def _write_jsonl(handle: Any, path: Path, removed: np.ndarray, first: int = 0) -> tuple[int, int]:
    """Copy the lines of a JSONL file to ``handle`` but its rows whose number + ``first`` is in ``removed``;
    returns ``(rows read, rows kept)``."""
    row = kept = 0
    last = b"\n"
    at = int(np.searchsorted(removed, first))
    for _, raw, is_row in jsonl_lines(path):
        if is_row:
            gone = at < len(removed) and removed[at] == first + row
            at += int(gone)
            row += 1
            if gone:
                continue
            kept += 1
        handle.write(raw)
        last = raw
    if not last.endswith(b"\n"):
        handle.write(b"\n")  # the next file's first line must start on a line of its own
    return row, kept


def _write_parquet(writer: Any, path: Path, removed: np.ndarray, first: int = 0) -> tuple[int, int]:
    """Append the rows of a parquet file to a ``ParquetWriter`` but those whose number + ``first`` is in
    ``removed``; returns ``(rows read, rows kept)``."""
    import pyarrow as pa

    from actindex.core.sources import open_parquet

    meta = open_parquet(path).metadata
    group = min(MAX_ROW_GROUP, max((meta.row_group(g).num_rows for g in range(meta.num_row_groups)), default=1))
    pending: list[Any] = []
    read = kept = 0
    for start, batch in parquet_batches(path):
        chosen = batch.filter(pa.array(_kept(batch.num_rows, first + start, removed)))
        read, kept = read + batch.num_rows, kept + chosen.num_rows
        pending.append(chosen)
        if sum(b.num_rows for b in pending) >= group:
            _flush(writer, pending)
    _flush(writer, pending)
    return read, kept


def _flush(writer: Any, batches: list[Any]) -> None:
    import pyarrow as pa

    if batches and any(b.num_rows for b in batches):
        try:
            writer.write_table(pa.Table.from_batches(batches))
        except (pa.ArrowInvalid, ValueError) as err:
            raise ActindexError(f"the parquet data files have different schemas: {err}") from None
    batches.clear()


def _parquet_writer(tmp: Path, first: Path) -> Any:
    import pyarrow.parquet as pq

    from actindex.core.sources import open_parquet

    return pq.ParquetWriter(tmp, open_parquet(first).schema_arrow)


def _write_files(tmp: Path, kind: str, pieces: list[tuple[Path, np.ndarray, int]]) -> int:
    """Write the ``(file, removed rows, number of its first row)`` pieces, in order, to one JSONL or parquet
    file ``tmp``; returns the rows kept."""
    kept = 0
    if kind == "jsonl":
        with open(tmp, "wb") as handle:
            for path, removed, first in pieces:
                kept += _write_jsonl(handle, path, removed, first)[1]
        return kept
    writer = _parquet_writer(tmp, pieces[0][0])
    try:
        for path, removed, first in pieces:
            kept += _write_parquet(writer, path, removed, first)[1]
    finally:
        writer.close()
    return kept


def write_without(sources: list[Source], removed: list[np.ndarray], out: Path) -> int:
    """Write the rows of ``sources`` but those in ``removed`` (per source, sorted row numbers in it) to ``out``, in
    the sources' format (see the module docstring); returns the rows kept.

    Every source must be of the same kind; several JSONL or parquet files become one file, a directory of shards
    becomes a directory of the same shards (one source only), a ``save_to_disk`` directory another one.
    """
    kinds = {data_kind(s.path) for s in sources}
    if len(kinds) != 1:
        raise ActindexError(f"cannot write one filtered file from data files of different formats ({kinds})")
    kind = kinds.pop()
    if kind in ("jsonl", "parquet"):
        pieces = [(s.path, gone, 0) for s, gone in zip(sources, removed)]
        return _write_atomic(out, lambda tmp: _write_files(tmp, kind, pieces))
    if len(sources) != 1:
        what = "directories of shards" if kind == "shards" else "save_to_disk directories"
        raise ActindexError(f"filtering an index built from several {what} is not supported")
    if kind == "shards":
        return _write_atomic(out, lambda tmp: _write_shards(tmp, sources[0].path, removed[0]), directory=True)
    return _write_atomic(out, lambda tmp: _write_hf(tmp, sources[0], removed[0]), directory=True)


def _write_shards(staging: Path, path: Path, removed: np.ndarray) -> int:
    """Each shard of the directory ``path``, in reading order, to ``staging/<its name>`` without its removed rows."""
    kept, first = 0, 0
    for shard in shard_files(path):
        kind = "parquet" if shard.suffix.lower() == ".parquet" else "jsonl"
        target = staging / shard.name
        if kind == "jsonl":
            with open(target, "wb") as handle:
                read, kept_here = _write_jsonl(handle, shard, removed, first)
        else:
            writer = _parquet_writer(target, shard)
            try:
                read, kept_here = _write_parquet(writer, shard, removed, first)
            finally:
                writer.close()
        kept, first = kept + kept_here, first + read
    return kept


def _write_hf(staging: Path, source: Source, removed: np.ndarray) -> int:
    import datasets

    from actindex.core.sources import choose_split, load_hf_dataset

    ds = load_hf_dataset(source.path)
    split = choose_split(source.path, list(ds), source.split) if isinstance(ds, datasets.DatasetDict) else None
    part = ds if split is None else ds[split]
    selected = part.select(np.flatnonzero(_kept(len(part), 0, removed)))
    whole = selected if split is None else datasets.DatasetDict({n: selected if n == split else ds[n] for n in ds})
    whole.save_to_disk(str(staging))
    return len(selected)


def _write_atomic(out: Path, write: Callable[[Path], int], directory: bool = False) -> int:
    """``write(path)`` on a fresh temporary path beside ``out`` (never an existing path or link), then renamed over
    ``out``: a file through :func:`~actindex.files.atomic_file`, a directory through a fresh staging directory.
    Returns what ``write`` returns."""
    if not directory:
        with atomic_file(out) as tmp:
            return write(tmp)
    with staged_directory(out) as staging:
        return write(staging)

