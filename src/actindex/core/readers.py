"""Stage 1c — readers: validated training rows from a data source (:mod:`actindex.core.sources`), streamed.

Every row is validated once (:func:`scan_rows`, :mod:`actindex.core.rows`) before any model is loaded,
keeping only a count and an 8-byte digest of each id (ids must be unique: a second pass over the data,
made only when two digests agree, names the first duplicate); the build then streams the rows part by
part (:class:`RowFile`), never holding the file whole.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actindex.core.rows import Row, duplicate_problem, normalise_record
from actindex.core.sources import (
    count_records,
    file_sha256,
    iter_records,
    jsonl_lines,
    records,
    resolve_data_path,
    resolve_split,
)
from actindex.errors import DataError

# re-exported: the loaders' file rules live in actindex.core.sources
__all__ = ["RowFile", "count_records", "file_sha256", "iter_records", "jsonl_lines", "load_rows", "resolve_data_path",
           "scan_rows"]


def id_digest(row_id: str) -> int:
    """An 8-byte digest of a row id (blake2b), as a signed 64-bit integer: what the scan keeps per row."""
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


def _validated_rows(path: Path, limit: int | None, split: str | None = None) -> Iterator[Row]:
    """Every row of ``path`` (the first ``limit``), normalised; once they have all been yielded, ids are checked
    unique (:func:`_first_duplicate` names the first duplicate in file order)."""
    digests = array("q")
    for index, file, line, record in records(path, split):
        if limit is not None and index >= limit:
            break
        row = normalise_record(file, line, index, record)
        digests.append(id_digest(row.id))
        yield row
    ordered = np.sort(np.frombuffer(digests, dtype=np.int64)) if digests else np.zeros(0, np.int64)
    clashes = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(clashes):
        _first_duplicate(path, limit, split, {int(d) for d in clashes})


def _first_duplicate(path: Path, limit: int | None, split: str | None, clashes: set[int]) -> None:
    """Raise for the first row, in file order, whose id an earlier row has (only rows whose id digest is among
    ``clashes`` are compared; two ids with one digest are told apart)."""
    seen: dict[str, tuple[Path, int, bool]] = {}  # id -> (file, line, whether the id was generated)
    for index, file, line, record in records(path, split):
        if limit is not None and index >= limit:
            return
        row = normalise_record(file, line, index, record)
        if id_digest(row.id) not in clashes:
            continue
        generated = "id" not in record
        if row.id in seen:
            first_file, first_line, first_generated = seen[row.id]
            where = first_line if first_file == file else f"{first_line} of {first_file.name}"
            raise DataError(file, line, "id", duplicate_problem(row.id, (where, first_generated), generated))
        seen[row.id] = (file, line, generated)


def load_rows(path: str | os.PathLike, limit: int | None = None, split: str | None = None) -> list[Row]:
    """Read and validate every row of a training file (the first ``limit`` rows if given).

    Ids must be unique; rows without an ``id`` field get ``row-<index>``. ``split`` names the split
    of a ``DatasetDict`` directory (:func:`choose_split`).
    """
    return list(_validated_rows(resolve_data_path(path), limit, split))


@dataclass(frozen=True)
class RowFile:
    """A validated training file, of which ``len(self)`` rows are indexed, read in parts and never held whole.

    :func:`scan_rows` checks every row once (so a bad row fails before any work starts); the build then
    streams the rows it needs with :meth:`parts`, so memory does not grow with the file. The indexed rows
    are the file's first ``count`` rows, or, with a ``selection`` (a seeded sample: sorted row numbers), the
    file rows it lists, in file order; ``total`` is the number of rows in the file.
    """

    path: Path
    count: int
    split: str | None = None  # the split of a DatasetDict directory the rows are read from
    total: int = 0
    selection: np.ndarray | None = None
    first_id: int = 0  # rows without an id get row-<first_id + row number>: an append's follow the index's rows

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Row]:
        return self.rows(0, self.count)

    def rows(self, start: int, end: int) -> Iterator[Row]:
        """Indexed rows ``[start, end)``, in file order; each row's ``index`` is its row number in the file.
        Reading starts at the first of them (:func:`~actindex.core.sources.records` skips what is before it
        without parsing); rows between them are read past, not normalised."""
        end = min(end, self.count)
        wanted = range(start, end) if self.selection is None else self.selection[start:end]
        if not len(wanted):
            return
        position = 0
        for index, file, line, record in records(self.path, self.split, start=int(wanted[0])):
            if index == wanted[position]:
                yield normalise_record(file, line, index, record, self.first_id)
                position += 1
                if position == len(wanted):
                    return

    def parts(self, start: int, end: int, size: int) -> Iterator[tuple[int, list[Row]]]:
        """``(position, rows)`` for consecutive parts of at most ``size`` indexed rows covering ``[start, end)``;
        ``position`` is the part's first row among the indexed rows."""
        part: list[Row] = []
        position = start
        for row in self.rows(start, end):
            part.append(row)
            if len(part) == size:
                yield position, part
                position += len(part)
                part = []
        if part:
            yield position, part


def scan_rows(path: str | os.PathLike, limit: int | None = None, split: str | None = None,
              sample: int | None = None, seed: int = 0) -> RowFile:
    """Validate the rows of a training file (as :func:`load_rows`) keeping only their count: every row, or
    the first ``limit``; with ``sample``, every row is validated and ``sample`` of them are drawn without
    replacement (``numpy.random.default_rng(seed)``) and kept in file order.

    The returned :class:`RowFile` records the split actually read (``split``, or the one
    :func:`~actindex.core.sources.choose_split` picks), ``None`` for a file or a directory of shards.
    """
    path = resolve_data_path(path)
    chosen = resolve_split(path, split) if path.is_dir() else split
    count = sum(1 for _ in _validated_rows(path, limit, chosen))
    if sample is not None and sample < count:
        drawn = np.sort(np.random.default_rng(seed).choice(count, size=sample, replace=False))
        return RowFile(path, len(drawn), chosen, total=count, selection=drawn.astype(np.int64))
    total = count_records(path, chosen) if limit is not None else count
    return RowFile(path, count, chosen, total=total)
