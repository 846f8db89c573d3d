"""Stage 1b — readers: training rows from a JSONL file, a parquet file or a ``save_to_disk`` directory.

A ``save_to_disk`` directory holding a ``DatasetDict`` is read from one split: the one asked for
(``--split``), else ``train``, else its only split. Compressed files (gzip, bz2, xz, zstd, zip) and
CSV/TSV files are refused with a message saying so. A JSONL line that is empty or holds only
whitespace (as :meth:`str.isspace` defines it, so a no-break space or a control character such as
U+001F too) is blank: not a row. :func:`jsonl_lines` is the one place that rule lives, for every
reader and writer of a data file.

Every row is validated once (:func:`scan_rows`, :mod:`actindex.core.rows`) before any model is
loaded; the build then streams the rows part by part (:class:`RowFile`), never holding the file whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actindex.core.rows import Row, duplicate_problem, json_type, normalise_record
from actindex.errors import DataError

DEMO_ALIAS = "demo"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A data path, or ``demo`` for the demo corpus shipped inside the package."""
    if str(path) == DEMO_ALIAS and not Path(path).exists():
        from importlib import resources

        return Path(str(resources.files("actindex").joinpath("resources/demo/corpus.jsonl")))
    return Path(path)


#: leading bytes of the compressed formats the loaders refuse, and their names
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
          (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"))
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd",
                        ".zip": "zip"}
_TABLE_SUFFIXES = {".csv": "CSV", ".tsv": "TSV"}


def check_file_kind(path: Path) -> None:
    """Refuse a file the loaders cannot read, with a message that says why.

    Compressed files are recognised by their magic bytes or their extension, CSV/TSV by extension.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    kind = kind or _COMPRESSED_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        problem = f"is {kind}-compressed; compressed files are not supported: decompress it first"
        raise DataError(path, None, None, problem)
    table = _TABLE_SUFFIXES.get(path.suffix.lower())
    if table is not None:
        raise DataError(path, None, None, f"{table} is not supported: convert it to JSONL or parquet")
    if head.startswith(b"PAR1") and path.suffix.lower() != ".parquet":
        raise DataError(path, None, None, "is a parquet file: name it with the .parquet extension")


def iter_records(path: str | os.PathLike, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a JSONL file, parquet file or HF dataset directory.

    ``split`` names the split of a ``DatasetDict`` directory (:func:`resolve_split`); it is refused
    for a file.
    """
    path = resolve_data_path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        yield from _iter_hf_dataset(path, split)
        return
    if split is not None:
        raise DataError(path, None, None, f"--split {split!r} names a split of a save_to_disk DatasetDict; "
                        "this is a file: drop --split")
    check_file_kind(path)
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        yield from _iter_jsonl(path)


def is_blank_line(raw: bytes) -> bool:
    """Whether a raw JSONL line holds no row: empty or only whitespace by :meth:`str.isspace`.

    A no-break space (U+00A0) or a control character such as U+001F alone makes a blank line; bytes
    that are not UTF-8 do not (the loader reports them).
    """
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def jsonl_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Every raw line of a JSONL file as ``(line_number, bytes as read, holds_a_row)``.

    The one rule for "is this line a row" (:func:`is_blank_line`), shared by the loader and by the
    filter's line copier, so row ``i`` of an index is the ``i``-th line where ``holds_a_row`` is true.
    """
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            yield line_no, raw, not is_blank_line(raw)


def parse_jsonl_line(path: Path, line_no: int, raw: bytes) -> dict[str, Any]:
    """The JSON object on one raw JSONL line that holds a row, or a :class:`DataError` naming the line."""
    try:
        line = raw.decode("utf-8").rstrip()
    except UnicodeDecodeError as err:
        problem = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save it as UTF-8"
        raise DataError(path, line_no, None, problem) from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, line_no, None, f"malformed JSON ({_json_problem(line, err)})") from None
    except RecursionError:
        raise DataError(path, line_no, None, "malformed JSON (nested too deeply)") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise DataError(path, line_no, None, "malformed JSON (a number has too many digits)") from None
    if not isinstance(record, dict):
        raise DataError(path, line_no, None, f"expected a JSON object, got {json_type(record)}")
    if "\\u" in line:  # a lone surrogate escape such as \ud800 is not Unicode: HDF5 and tokenizers reject it
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                path, line_no, None, "a \\u escape encodes a lone surrogate, which is not valid Unicode"
            ) from None
    return record


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    seen_any = False
    for line_no, raw, is_row in jsonl_lines(path):
        if is_row:
            seen_any = True
            yield line_no, parse_jsonl_line(path, line_no, raw)
    if not seen_any:
        raise DataError(path, None, None, "file has no rows")


def _json_problem(line: str, err: json.JSONDecodeError) -> str:
    if err.pos == 0 and line.startswith("\ufeff"):
        return "the file starts with a byte order mark (BOM); save it as UTF-8 without BOM"
    if err.pos >= len(line):
        return f"{err.msg} at column {err.colno}, the end of the line: JSONL needs one whole JSON object per line"
    return f"{err.msg} at column {err.colno}"


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError...; surface as one line
        reason = (str(err).splitlines() or [type(err).__name__])[0].rsplit("': ", 1)[-1]
        raise DataError(path, None, None, f"not a readable parquet file ({reason})") from None
    if table.num_rows == 0:
        raise DataError(path, None, None, "file has no rows")
    yield from enumerate(table.to_pylist(), start=1)


def load_hf_dataset(path: Path) -> Any:
    """``datasets.load_from_disk(path)`` (a ``Dataset`` or a ``DatasetDict``), or a one-line :class:`DataError`."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(path, None, None, "reading a save_to_disk directory needs the 'datasets' package") from None
    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - surface as one line
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(path, None, None, f"not a Hugging Face save_to_disk directory ({reason})") from None


def choose_split(path: Path, names: Sequence[str], split: str | None) -> str:
    """The split of a ``DatasetDict`` to read: ``split`` if given, else ``train``, else the only split.

    Anything else (an unknown split, several splits and none named ``train``) is a :class:`DataError`
    listing the splits.
    """
    listed = ", ".join(names) if names else "none"
    if split is not None:
        if split not in names:
            raise DataError(path, None, None, f"has no split {split!r} (splits: {listed})")
        return split
    if "train" in names:
        return "train"
    if len(names) == 1:
        return names[0]
    if not names:
        raise DataError(path, None, None, "the DatasetDict has no splits")
    raise DataError(path, None, None, f"has splits {listed} and none is 'train': choose one with --split")


def open_hf_split(path: Path, split: str | None = None) -> tuple[Any, str | None]:
    """``(dataset, split)``: the rows of a ``save_to_disk`` directory and the split they are (:func:`choose_split`).

    ``split`` is ``None`` for a directory holding a single ``Dataset``; naming one there is refused.
    """
    import datasets

    ds = load_hf_dataset(path)
    if isinstance(ds, datasets.DatasetDict):
        chosen = choose_split(path, list(ds), split)
        return ds[chosen], chosen
    if split is not None:
        raise DataError(path, None, None, f"is a single dataset, not a DatasetDict, so it has no split {split!r}: "
                        "drop --split")
    return ds, None


def resolve_split(path: str | os.PathLike, split: str | None = None) -> str | None:
    """The split rows are read from (:func:`choose_split`): ``None`` for a file or a single ``Dataset``."""
    path = resolve_data_path(path)
    return open_hf_split(path, split)[1] if path.is_dir() else None


def _iter_hf_dataset(path: Path, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    ds, _ = open_hf_split(path, split)
    if len(ds) == 0:
        raise DataError(path, None, None, "dataset has no rows")
    for i, record in enumerate(ds, start=1):
        yield i, dict(record)



def _validated_rows(path: Path, limit: int | None, split: str | None = None) -> Iterator[Row]:
    """Every row of ``path`` (the first ``limit``), normalised, with unique ids checked."""
    seen: dict[str, tuple[int, bool]] = {}  # id -> (line, whether the id was generated)
    for line, record in iter_records(path, split):
        if limit is not None and len(seen) >= limit:
            return
        row = normalise_record(path, line, len(seen), record)
        generated = "id" not in record
        if row.id in seen:
            raise DataError(path, line, "id", duplicate_problem(row.id, seen[row.id], generated))
        seen[row.id] = (line, generated)
        yield row



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
    are the file's first ``count`` rows, or, with a ``selection`` (a seeded sample), the file rows it lists,
    in file order; ``total`` is the number of rows in the file.
    """

    path: Path
    count: int
    split: str | None = None  # the split of a DatasetDict directory the rows are read from
    total: int = 0
    selection: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Row]:
        return self.rows(0, self.count)

    def rows(self, start: int, end: int) -> Iterator[Row]:
        """Indexed rows ``[start, end)``, in file order; each row's ``index`` is its row number in the file
        (rows before and between them are read past, not normalised)."""
        end = min(end, self.count)
        wanted = range(start, end) if self.selection is None else self.selection[start:end]
        if not len(wanted):
            return
        position = 0
        for index, (line, record) in enumerate(iter_records(self.path, self.split)):
            if index == wanted[position]:
                yield normalise_record(self.path, line, index, record)
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


def count_records(path: Path, split: str | None = None) -> int:
    """Rows in a data file, counted without validating them (JSONL: its non-blank lines)."""
    if path.is_dir():
        return len(open_hf_split(path, split)[0])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _, _, is_row in jsonl_lines(path) if is_row)


def scan_rows(path: str | os.PathLike, limit: int | None = None, split: str | None = None,
              sample: int | None = None, seed: int = 0) -> RowFile:
    """Validate the rows of a training file (as :func:`load_rows`) keeping only their count: every row, or
    the first ``limit``; with ``sample``, every row is validated and ``sample`` of them are drawn without
    replacement (``numpy.random.default_rng(seed)``) and kept in file order.

    The returned :class:`RowFile` records the split actually read (``split``, or the one
    :func:`choose_split` picks), ``None`` for a file.
    """
    import numpy as np

    path = resolve_data_path(path)
    chosen = resolve_split(path, split) if path.is_dir() else split
    count = sum(1 for _ in _validated_rows(path, limit, chosen))
    if sample is not None and sample < count:
        drawn = np.sort(np.random.default_rng(seed).choice(count, size=sample, replace=False))
        return RowFile(path, len(drawn), chosen, total=count, selection=tuple(int(i) for i in drawn))
    total = count_records(path, chosen) if limit is not None else count
    return RowFile(path, count, chosen, total=total)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file under a directory (sorted by relative path)."""
    path = resolve_data_path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


