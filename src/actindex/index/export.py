"""The index as one table for other tools: Parquet or an Arrow IPC file, streamed block by block.

One table row per index row, in row order, with the columns

    id            string   the row's id
    row           int64    its row number in the index (what ``search`` returns)
    record        string   the original training row, as JSON (every field, as the index stores it)
    line          int64    its line in the data file (1-based; 0 where an older index did not record it)
    source_row    int64    its row number in the data file (0-based; -1 where unknown)
    loss          float32  the response loss the build measured
    n_tokens      int32    tokens of the row, and of its response (``n_response``)
    truncated     bool     cut at the build's --max-length
    valid         bool     searchable (a finite vector; the FAISS indexes hold exactly these rows)
    <family>      fixed_size_list<float32>[dim] per vector family, named as the family (``residual_change/18``)

and the manifest as JSON in the schema metadata (``actindex.manifest``). pyarrow, pandas, polars and DuckDB read
it without actindex (``SELECT "residual_change/18" FROM 'idx.parquet'``). The rows are read from ``vectors.h5``
``block_rows`` at a time and written as one record batch (a Parquet row group) each, so memory stays bounded
by the block whatever the index's size; the file is written beside its target and renamed into place whole.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actindex.configs import check_choices, option
from actindex.errors import ActindexError
from actindex.index.precision import StoredRows

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader

#: the export formats and the file suffixes that name them when ``--format`` is left out
FORMATS = ("parquet", "arrow")
SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
#: per-row datasets of vectors.h5 exported as they are, with their Arrow types, in column order
META_COLUMNS = (("record", "string"), ("line", "int64"), ("source_row", "int64"), ("loss", "float32"),
                ("n_tokens", "int32"), ("n_response", "int32"), ("truncated", "bool"), ("valid", "bool"))
#: what an older index that lacks a per-row dataset holds in its place (:class:`~actindex.index.reader.RowTable`)
MISSING = {"line": 0, "source_row": -1}
METADATA_KEY = b"actindex.manifest"


@dataclass
class ExportConfig:
    """Settings of ``actindex export``: the index as one Parquet or Arrow file (see the module docstring)."""

    out: str = option("File to write.", "")
    format: str | None = option("File format (default: from the --out suffix, .arrow/.feather/.ipc for Arrow IPC, "
                                "else parquet).", None, choices=FORMATS)
    families: list[str] | None = option("Vector families to export (default: every family of the index).", None)
    block_rows: int = option("Rows read from vectors.h5 and written per record batch (bounds the memory).", 8192,
                             minimum=1)
    overwrite: bool = option("Replace OUT if it exists.", False)

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.out:
            raise ActindexError("export needs --out FILE")
        if self.format is None:
            self.format = SUFFIXES.get(Path(self.out).suffix.lower(), "parquet")


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    out: Path
    format: str
    rows: int
    families: list[str]
    batches: int
    bytes: int
    seconds: float
    columns: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else float("inf")
        return (f"wrote {self.out} ({self.format}, {self.rows} rows, {len(self.families)} vector families, "
                f"{self.bytes / (1 << 20):.1f} MiB) in {self.seconds:.1f} s ({rate:,.0f} rows/s)")


def export(index: Any, out: str | os.PathLike = "", config: ExportConfig | None = None,
           **kwargs: Any) -> ExportResult:
    """Write the index ``index`` (an open reader, an open :class:`actindex.Index`, which holds one as ``reader``, or
    its directory) to ``out`` as one table (see the module docstring). Other settings are :class:`ExportConfig`
    fields (``format``, ``families``, ``block_rows``, ``overwrite``). Loads no model."""
    from actindex.files import atomic_file
    from actindex.index.reader import IndexReader
    from actindex.outputs import check_output, index_inputs

    config = config or ExportConfig(out=str(out), **kwargs)
    index = getattr(index, "reader", index)
    reader = index if isinstance(index, IndexReader) else IndexReader.open(index)
    families = list(reader.families) if config.families is None else list(config.families)
    for family in families:
        reader.check_family(family)
    target = check_output(config.out, overwrite=config.overwrite,
                          inputs=index_inputs(reader))
    target.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet  # noqa: F401 - imported before the clock starts (it takes seconds on a busy machine)

    started = time.perf_counter()
    schema = table_schema(reader, families)
    batches = 0
    with atomic_file(target) as tmp, reader.h5() as h5, batch_writer(config.format, tmp, schema) as write:
        for start in range(0, reader.manifest.rows, config.block_rows):
            write(record_batch(h5, schema, families, start, min(start + config.block_rows, reader.manifest.rows)))
            batches += 1
    return ExportResult(out=target, format=config.format, rows=reader.manifest.rows, families=families,
                        batches=batches, bytes=target.stat().st_size, seconds=time.perf_counter() - started,
                        columns=schema.names)


def table_schema(reader: IndexReader, families: list[str]) -> Any:
    """The Arrow schema of an export: id, row, the per-row columns, then a fixed-size float32 list per family."""
    import pyarrow as pa

    columns = [pa.field("id", pa.string(), nullable=False), pa.field("row", pa.int64(), nullable=False)]
    columns += [pa.field(name, pa.type_for_alias(kind), nullable=False) for name, kind in META_COLUMNS]
    columns += [pa.field(family, pa.list_(pa.float32(), reader.families[family].dim), nullable=False)
                for family in families]
    return pa.schema(columns, metadata={METADATA_KEY: json.dumps(reader.manifest.to_dict()).encode()})


def record_batch(h5: Any, schema: Any, families: list[str], start: int, end: int) -> Any:
    """Rows ``[start, end)`` of an open ``vectors.h5`` as one record batch of ``schema``."""
    import numpy as np
    import pyarrow as pa

    def strings(values: np.ndarray) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    n = end - start
    arrays = [pa.array(strings(h5["ids"][start:end]), pa.string()), pa.array(np.arange(start, end, dtype=np.int64))]
    for name, kind in META_COLUMNS:
        if name == "record":
            arrays.append(pa.array(strings(h5["record"][start:end]), pa.string()))
            continue
        values = h5[name][start:end] if name in h5 else np.full(n, MISSING[name])
        arrays.append(pa.array(np.asarray(values, dtype=kind if kind != "bool" else np.bool_)))
    for family in families:
        block = np.ascontiguousarray(StoredRows.of(h5, family, schema.field(family).type.list_size)[start:end])
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1]))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@contextmanager
def batch_writer(fmt: str, path: Path, schema: Any) -> Iterator[Callable[[Any], None]]:
    """``write(batch)`` into a Parquet file (one row group per batch) or an Arrow IPC file, closed on exit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":  # no dictionary pages (vectors and records barely repeat: 5x faster, smaller files);
        # statistics on the scalar columns only (filters on row, valid, loss... skip row groups)
        scalars = [f.name for f in schema if not pa.types.is_fixed_size_list(f.type) and f.name != "record"]
        sink = pq.ParquetWriter(str(path), schema, compression="zstd", use_dictionary=False, write_statistics=scalars)
        write = lambda batch: sink.write_batch(batch, row_group_size=max(batch.num_rows, 1))  # noqa: E731
    else:
        sink = pa.ipc.new_file(str(path), schema)
        write = sink.write_batch
    try:
        yield write
    finally:
        sink.close()
