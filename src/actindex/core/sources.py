"""Stage 1b — data sources: the files training rows are read from, and their records in order, streamed.

A data path (``--data``) is one of:

* a JSONL file: one JSON object per line; a line that is empty or holds only whitespace (as
  :meth:`str.isspace` defines it, so a no-break space or a control character such as U+001F too) is blank:
  not a row. :func:`jsonl_lines` is the one place that rule lives, for every reader and writer of a data file;
* a parquet file, read one batch of one row group at a time (``ParquetFile.iter_batches``), never whole;
* a Hugging Face ``save_to_disk`` directory (it holds ``dataset_info.json``, ``dataset_dict.json`` or
  ``state.json``): a ``Dataset``, or one split of a ``DatasetDict`` (:func:`choose_split`), read
  :data:`BATCH_ROWS` rows at a time;
* a directory of shards: every ``*.parquet`` or every ``*.jsonl`` file directly inside it (one format; names
  starting with ``.`` or ``_`` are left out), read in sorted name order as one dataset (:func:`shard_files`);
* ``demo``: the demo corpus shipped inside the package.

:func:`records` yields ``(row, file, line, record)`` from any row on: ``row`` is the record's number in the
whole dataset (0-based), ``file`` the file it is in (a shard of a directory, else the data path) and ``line``
where it sits there: its line (JSONL, 1-based) or its row number in that file + 1 (parquet, ``save_to_disk``).
Rows before the first one asked for are skipped without parsing them: JSONL lines are only told apart, parquet
row groups by their metadata, whole shard files by their row counts. Nothing holds a whole file: memory is one
batch (or one row group), whatever the file's size. Compressed files and CSV/TSV are refused, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actindex.core.rows import json_type
from actindex.errors import DataError

DEMO_ALIAS = "demo"
#: files whose presence makes a directory a Hugging Face ``save_to_disk`` dataset, not a directory of shards
HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
#: the shard formats a directory of shards may hold (one of them)
SHARD_SUFFIXES = (".parquet", ".jsonl")
#: rows turned into Python objects at a time (a parquet batch, a ``save_to_disk`` slice)
BATCH_ROWS = 1024

#: one record as :func:`records` yields it: (row in the dataset, its file, its line there, the record)
Record = tuple[int, Path, int, dict[str, Any]]


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


@contextmanager
def read_once(path: Path) -> Iterator[Path]:
    """A pipe or other special file (``<(cat rows.jsonl)``), which can be read only once, copied whole into a
    temporary regular file of the same name; a :class:`DataError` about the copy names ``path``."""
    with tempfile.TemporaryDirectory(prefix="actindex-") as tmp:
        copy = Path(tmp) / (path.name or "input")
        try:
            with open(path, "rb") as source, open(copy, "wb") as target:
                shutil.copyfileobj(source, target)
        except OSError as err:
            raise DataError(path, None, None, f"cannot read it ({err.strerror or type(err).__name__})") from None
        try:
            yield copy
        except DataError as err:
            if err.path != str(copy):
                raise
            raise DataError(path, err.line, err.field, err.problem) from None


def is_hf_directory(path: Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` directory (it holds one of :data:`HF_MARKERS`)."""
    return path.is_dir() and any((path / name).is_file() for name in HF_MARKERS)


def shard_files(path: Path) -> list[Path]:
    """The shard files of a directory of shards, in reading order (sorted by name), checked: every ``*.parquet``
    or every ``*.jsonl`` file directly inside ``path`` (names starting with ``.`` or ``_`` left out). A
    directory with none, or with both formats, is a :class:`DataError`."""
    files = sorted((p for p in path.iterdir()
                    if p.suffix.lower() in SHARD_SUFFIXES and not p.name.startswith((".", "_")) and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise DataError(path, None, None, "is a directory without *.parquet or *.jsonl shards and is not a "
                        f"save_to_disk dataset (no {', '.join(HF_MARKERS)})")
    if len({p.suffix.lower() for p in files}) > 1:
        raise DataError(path, None, None, "holds both .parquet and .jsonl files: a directory of shards holds one "
                        "format")
    for file in files:
        check_file_kind(file)
    return files


def data_kind(path: Path) -> str:
    """``jsonl``, ``parquet``, ``hf`` (a ``save_to_disk`` directory) or ``shards`` (a directory of shards)."""
    if path.is_dir():
        return "hf" if is_hf_directory(path) else "shards"
    return "parquet" if path.suffix.lower() == ".parquet" else "jsonl"


def records(path: str | os.PathLike, split: str | None = None, start: int = 0) -> Iterator[Record]:
    """``(row, file, line, record)`` of every record of a data path from row ``start`` on (see the module
    docstring). ``split`` names the split of a ``DatasetDict`` directory (:func:`choose_split`); it is
    refused for anything else."""
    path = resolve_data_path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if is_hf_directory(path):
        yield from _hf_records(path, split, start)
        return
    if split is not None:
        what = "a directory of shards" if path.is_dir() else "a file"
        raise DataError(path, None, None, f"--split {split!r} names a split of a save_to_disk DatasetDict; this is "
                        f"{what}: drop --split")
    if not path.is_dir():
        check_file_kind(path)
        found = False
        for row, line, record in _file_records(path, start):
            found = True
            yield row, path, line, record
        if not found and start == 0:
            raise DataError(path, None, None, "file has no rows")
        return
    offset = 0  # rows in the shards before this one
    for file in shard_files(path):
        if start > offset:  # skip a whole shard before the first row asked for, by its row count
            n = count_records(file)
            if start >= offset + n:
                offset += n
                continue
        n = first = max(start - offset, 0)
        for row, line, record in _file_records(file, first):
            yield offset + row, file, line, record
            n = row + 1
        offset += n
    if offset == 0:
        raise DataError(path, None, None, "the directory's shards hold no rows")


def iter_records(path: str | os.PathLike, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of every record of a data path (:func:`records` without the row and file)."""
    for _, _, line, record in records(path, split):
        yield line, record


def _file_records(path: Path, start: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(row in the file, line, record)`` of a JSONL or parquet file, from its row ``start`` on."""
    if path.suffix.lower() == ".parquet":
        yield from _parquet_records(path, start)
        return
    row = 0
    for line_no, raw, is_row in jsonl_lines(path):
        if is_row:
            if row >= start:
                yield row, line_no, parse_jsonl_line(path, line_no, raw)
            row += 1


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


def _json_problem(line: str, err: json.JSONDecodeError) -> str:
    if err.pos == 0 and line.startswith("\ufeff"):
        return "the file starts with a byte order mark (BOM); save it as UTF-8 without BOM"
    if err.pos >= len(line):
        return f"{err.msg} at column {err.colno}, the end of the line: JSONL needs one whole JSON object per line"
    return f"{err.msg} at column {err.colno}"


def _parquet_error(path: Path, err: BaseException) -> DataError:
    reason = (str(err).splitlines() or [type(err).__name__])[0].rsplit("': ", 1)[-1]
    return DataError(path, None, None, f"not a readable parquet file ({reason})")


def open_parquet(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile(path)`` (reads the footer only), or a one-line :class:`DataError`."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError...; surface as one line
        raise _parquet_error(path, err) from None


def parquet_batches(path: Path, start: int = 0, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, Any]]:
    """``(first row, pyarrow RecordBatch)`` of a parquet file from the row group holding row ``start`` on, at most
    ``batch_rows`` rows each (``ParquetFile.iter_batches``: one row group is read at a time, the file never whole).
    The first batch may begin before ``start``."""
    pf = open_parquet(path)
    groups, first, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return
    row = first or 0
    batches = pf.iter_batches(batch_size=batch_rows, row_groups=groups)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - a damaged page: one line
            raise _parquet_error(path, err) from None
        yield row, batch
        row += batch.num_rows


def _parquet_records(path: Path, start: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
    for first, batch in parquet_batches(path, start):
        for j, record in enumerate(batch.to_pylist()):
            if first + j >= start:
                yield first + j, first + j + 1, record


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
    """The split rows are read from (:func:`choose_split`): ``None`` for a file, a directory of shards or a
    single ``Dataset``."""
    path = resolve_data_path(path)
    return open_hf_split(path, split)[1] if is_hf_directory(path) else split


def _hf_records(path: Path, split: str | None, start: int) -> Iterator[Record]:
    """The records of a ``save_to_disk`` dataset, :data:`BATCH_ROWS` rows (one Arrow slice) at a time."""
    ds, _ = open_hf_split(path, split)
    if len(ds) == 0:
        raise DataError(path, None, None, "dataset has no rows")
    for begin in range(start, len(ds), BATCH_ROWS):
        batch = ds[begin : begin + BATCH_ROWS]  # columns of Python values, as iterating the rows gives them
        columns = list(batch)
        for j, values in enumerate(zip(*(batch[c] for c in columns))):
            yield begin + j, path, begin + j + 1, dict(zip(columns, values))


def count_records(path: Path, split: str | None = None) -> int:
    """Rows in a data path, counted without validating them (JSONL: its non-blank lines; parquet: its footer)."""
    path = resolve_data_path(path)
    if is_hf_directory(path):
        return len(open_hf_split(path, split)[0])
    if path.is_dir():
        return sum(count_records(file) for file in shard_files(path))
    if path.suffix.lower() == ".parquet":
        return open_parquet(path).metadata.num_rows
    return sum(1 for _, _, is_row in jsonl_lines(path) if is_row)


def source_counts(path: str | os.PathLike) -> list[tuple[str, int]] | None:
    """``[(file name, rows)]`` of each shard of a directory of shards, in reading order; ``None`` for anything
    else (one file, a ``save_to_disk`` directory)."""
    path = resolve_data_path(path)
    if not path.is_dir() or is_hf_directory(path):
        return None
    return [(file.name, count_records(file)) for file in shard_files(path)]


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
