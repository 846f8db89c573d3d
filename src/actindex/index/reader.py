"""Stage 6 — the index reader: one typed view of a complete index on disk, checked as it is opened.

:class:`IndexReader` is what every later stage reads an index through: its :class:`~.manifest.Manifest`,
the per-row table (ids, loss, token counts, which rows are searchable), the stored records and vectors,
and each family's FAISS index with a cosine search (a few verbs on one object, like a FAISS index). It
loads no model; :class:`actindex.Index` adds the model and the query verbs on top.

Opening checks what a query relies on, cheaply: the manifest is refused when edited (format 2), its
promises are checked against ``vectors.h5``'s shapes, files up to :data:`HASH_ON_OPEN_BYTES` are hashed
against it, each FAISS index must hold the valid rows and :data:`SPOT_CHECK_ROWS` sampled rows must decode
to their stored vectors, and a search that returns an impossible cosine is refused. Each failure is one
line pointing at ``actindex verify``.

Nothing here reads every row unless asked to: the per-row table holds the numeric columns only (8-30 bytes a
row; ids are read for the rows shown, :meth:`IndexReader.ids_of`), stored vectors and records of many rows are
gathered chunk by chunk (:func:`gather`) or, while the file is held open (:meth:`IndexReader.hold_open`, what an
:class:`actindex.Index` does), vectors are read straight from a memory map of its chunks (:class:`RowMap`), and a
ranking of every row (``k = 0``, or more rows than an
approximate index returns, :data:`APPROX_MAX_K`) scores every valid row exactly from ``vectors.h5``, a block at
a time. FAISS indexes are copied to the GPUs when a GPU build of FAISS sees one (:meth:`IndexReader.tune`,
``query --no-faiss-gpu`` to stay on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import threading
import zlib
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Self, TypeVar

import h5py
import numpy as np

from actindex.core.reduction import StorageProjection
from actindex.errors import ActindexError, IndexFileError
from actindex.files import bytes_sha256, inside
from actindex.index.hdf5 import foreign_problem
from actindex.index.manifest import MANIFEST, VECTORS, FamilyInfo, Manifest, read_manifest, structure_problem
from actindex.index.precision import StoredRows, decode, disk_shape, has_scales, scale_key
from actindex.index.search import (
    ADD_BLOCK,
    AUTO_FLAT_ROWS,
    STORE,
    exact_scores,
    gpu_count,
    normalise,
    read_faiss_index,
    rescore_candidates,
    rows_disagree,
    search,
    search_bottom,
    set_search_params,
    to_gpu,
    valid_blocks,
)

#: files up to this size are hashed against the manifest when first read (vectors.h5 and the FAISS files of
#: a 10k-row index: about 25 ms each); larger ones are spot-checked and left to ``actindex verify``
HASH_ON_OPEN_BYTES = 64 << 20
#: rows of each FAISS index compared with vectors.h5 when a query first reads it (``verify`` compares all)
SPOT_CHECK_ROWS = 16
#: the largest cosine a search may return: 1 for exact indexes, a little more for quantised codes
MAX_COSINE = 1.5

T = TypeVar("T")

#: rows (a seeded sample of the searchable ones) whose cosines calibrate a query vector's scores
CALIBRATION_ROWS = 8192
#: results a reader keeps (:meth:`IndexReader.remembered`: calibrations, behaviours' member choices)
REMEMBERED_KEPT = 4096
#: stored records whose text a reader keeps once read (:meth:`IndexReader.records`), the latest first to stay
RECORDS_KEPT = 4096
#: an approximate (non-``Flat``) index answers searches of up to this many rows; a deeper ranking (or every row,
#: ``k = 0``) is computed exactly from the stored vectors instead (an IVF search returns only the rows of the
#: lists it probes)
APPROX_MAX_K = 4096
#: row sets up to this size are read from HDF5 by point selection; larger ones chunk by chunk (:func:`gather`)
POINT_READ_ROWS = 64
#: stored records parsed at a time when one field of many rows is read (:meth:`IndexReader.record_values`)
RECORD_BLOCK = 65536


def gather(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for any row numbers (unsorted, repeated), in the order given: a few rows by point selection,
    many by reading each stored chunk that holds some of them once (HDF5 reads whole chunks anyway), so memory
    is one chunk plus the result, and a million rows take seconds, not the minutes of a point selection."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= POINT_READ_ROWS:
        unique, inverse = np.unique(rows, return_inverse=True)
        return ds[unique][inverse] if len(unique) else ds[0:0]
    step = ds.chunks[0] if ds.chunks else ADD_BLOCK
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((len(rows), *ds.shape[1:]), dtype=ds.dtype)
    bounds = np.searchsorted(ordered, np.arange(0, ds.shape[0] + step, step))
    for block in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[block], bounds[block + 1]
        a = block * step
        out[order[lo:hi]] = ds[a : min(a + step, ds.shape[0])][ordered[lo:hi] - a]
    return out


class RowMap:
    """Rows of an uncompressed chunked dataset read straight from a memory map of its file: with ``R`` rows per
    chunk, row ``r`` lies at byte ``offset[r // R] + (r mod R) * row_bytes``, so any rows are one fancy index
    (tens of times faster than HDF5's chunk-by-chunk reads of a few scattered rows, :func:`gather`). Only for
    datasets it can read exactly: chunked along rows alone, no filters, native byte order, every chunk written
    (:meth:`of` returns ``None`` otherwise)."""

    #: the widest word (bytes) a row is read in, when every chunk offset and the row size are multiples of it
    WORD = 64

    def __init__(self, buffer: mmap.mmap, ds: h5py.Dataset, offsets: np.ndarray):
        self.dtype, self.shape, self.chunk_rows = ds.dtype, ds.shape, ds.chunks[0]
        self.row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        self.offsets = offsets
        word = self.WORD  # rows gathered a word at a time: fewer, larger elements to index
        while word > 1 and (self.row_bytes % word or (offsets % word).any()):
            word //= 2
        self.word = word
        unit = np.dtype(f"u{word}") if word <= 8 else np.dtype((np.void, word))  # integers copy fastest
        self.words = np.frombuffer(buffer, dtype=unit, count=len(buffer) // word)

    @classmethod
    def of(cls, buffer: mmap.mmap, ds: h5py.Dataset) -> RowMap | None:
        if (ds.chunks is None or ds.chunks[1:] != ds.shape[1:] or ds.id.get_create_plist().get_nfilters()
                or not ds.dtype.isnative or ds.dtype.kind not in "fiub"):
            return None
        offsets = np.full(-(-ds.shape[0] // ds.chunks[0]), -1, dtype=np.int64)

        def found(info: Any) -> None:
            offsets[info.chunk_offset[0] // ds.chunks[0]] = info.byte_offset

        ds.id.chunk_iter(found)
        chunk_bytes = ds.chunks[0] * int(np.prod(ds.chunks[1:], dtype=np.int64)) * ds.dtype.itemsize
        if (offsets < 0).any() or offsets.max() + chunk_bytes > len(buffer):
            return None
        return cls(buffer, ds, offsets)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``ds[rows]`` for any row numbers, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row numbers outside 0..{self.shape[0] - 1}")
        start = self.offsets[rows // self.chunk_rows] + (rows % self.chunk_rows) * self.row_bytes
        raw = self.words[(start // self.word)[:, None] + np.arange(self.row_bytes // self.word)]
        return np.ascontiguousarray(raw).view(self.dtype).reshape(len(rows), *self.shape[1:])


class SharedCosines:
    """Cosines of query vectors with stored rows, the normalised rows of each family read once for every member
    that scores the same rows (a fused query scores one set of rows with every member; several members share a
    family): ``cos(psi, v_x) = <v_x / ||v_x||, psi / ||psi||>``, as :meth:`IndexReader.cosines`."""

    def __init__(self, reader: IndexReader):
        self.reader = reader
        self.last: dict[str, tuple[bytes, np.ndarray]] = {}  # family -> (the rows, their normalised vectors)

    def cosines(self, psi: np.ndarray, family: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        key = rows.tobytes()
        held = self.last.get(family)
        if held is None or held[0] != key:
            held = self.last[family] = (key, normalise(self.reader.vectors(family, rows)))
        return held[1] @ normalise(psi)[0]


@dataclass(frozen=True)
class RowTable:
    """The per-row numeric datasets every stage reads: loss, token counts, which rows are searchable, and where
    each row comes from (``source_row``: its row number in its data file, -1 where an older index did not
    record it; ``line``: its line, 0 where unknown). Ids are read apart (:meth:`IndexReader.ids_of`)."""

    loss: np.ndarray
    valid: np.ndarray
    n_tokens: np.ndarray
    n_response: np.ndarray
    source_row: np.ndarray
    line: np.ndarray

    @property
    def searchable(self) -> np.ndarray:
        """Row numbers of the valid rows (those the FAISS indexes hold)."""
        return np.flatnonzero(self.valid)


class IndexReader:
    """A complete index directory opened for reading (see the module docstring)."""

    def __init__(self, root: str | Path, manifest: Manifest):
        self.root = Path(root)
        self.manifest = manifest
        self._faiss: dict[str, Any] = {}
        self._calibration: dict[str, np.ndarray] = {}
        self._remembered: dict[Hashable, Any] = {}
        self._held: h5py.File | None = None
        self._mapped: mmap.mmap | None = None
        self._row_maps: dict[str, RowMap | None] = {}
        self._datasets: dict[str, h5py.Dataset] = {}
        self._ids: list[str] | None = None
        self._record_texts: dict[int, str] = {}
        self._keeping = threading.Lock()
        self.search_settings: dict[str, int | None] = {"nprobe": None, "ef_search": None}
        self.faiss_gpu = True  # copy FAISS indexes to the GPUs when a GPU build of FAISS sees one

    def tune(self, nprobe: int | None = None, ef_search: int | None = None, gpu: bool | None = None) -> None:
        """Search settings for every FAISS index read from now on and already read: IVF ``nprobe``, HNSW
        ``efSearch`` (``None`` keeps the stored value), and ``gpu`` (``False``: search on the CPU even when GPU
        FAISS is installed)."""
        self.search_settings = {"nprobe": nprobe, "ef_search": ef_search}
        self.faiss_gpu = self.faiss_gpu if gpu is None else gpu
        self._faiss.clear()  # read again when next searched, with these settings, on the device asked for

    @classmethod
    def open(cls, root: str | Path) -> IndexReader:
        """Open a complete index: its manifest (refused when edited, format 2), and the layout it promises
        checked against ``vectors.h5`` (rows, families, layers), so a damaged index fails here in one line."""
        reader = cls(root, read_manifest(root))
        problem = reader.file_problem(VECTORS) or layout_problem(reader.root, reader.manifest)
        if problem:
            raise IndexFileError(f"{problem}; run `actindex verify {reader.root}`")
        return reader

    def reload_manifest(self) -> None:
        """Read the manifest again (after a writer added to it, e.g. curvature), and ``vectors.h5`` with it when
        the reader holds it open."""
        self.manifest = read_manifest(self.root)
        if self._held is not None:
            self.close()
            self.hold_open()

    def file_problem(self, name: str) -> str | None:
        """A file the manifest checksums (format 2) whose bytes changed, when it is small enough to hash at
        once (:data:`HASH_ON_OPEN_BYTES`); larger files are spot-checked instead and left to ``verify``."""
        recorded = self.manifest.files.get(name)
        path = inside(self.root, name)
        if recorded is None or not path.is_file() or path.stat().st_size > HASH_ON_OPEN_BYTES:
            return None
        if bytes_sha256(path) != recorded:
            return f"{path}: checksum mismatch: the file was replaced or damaged since the index was written"
        return None

    # ---- what is in it ----------------------------------------------------------------------
    @property
    def families(self) -> dict[str, FamilyInfo]:
        return self.manifest.families

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.layers)

    def __len__(self) -> int:
        return self.manifest.rows

    @contextmanager
    def h5(self) -> Iterator[h5py.File]:
        """``vectors.h5`` opened for reading (the held handle after :meth:`hold_open`); a damaged file is one
        :class:`IndexFileError` line."""
        path = self.root / VECTORS
        try:
            if self._held is not None:
                yield self._held
                return
            path = inside(self.root, VECTORS)
            with h5py.File(path, "r") as f:
                yield f
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise IndexFileError(f"{path}: cannot be read ({reason}); run `actindex verify {self.root}`") from None

    @contextmanager
    def added_file(self, name: str) -> Iterator[h5py.File]:
        """An HDF5 file the manifest lists besides ``vectors.h5`` (curvature factors), opened for reading: inside
        the index, byte for byte what was written (format 2, :meth:`file_problem`), its values its own
        (:mod:`actindex.index.hdf5`); anything else is one :class:`IndexFileError` line."""
        path = inside(self.root, name)
        problem = self.file_problem(name) if path.is_file() else f"{path}: missing"
        if problem is not None:
            raise IndexFileError(f"{problem}; run `actindex verify {self.root}`")
        try:
            with h5py.File(path, "r") as f:
                problem = foreign_problem(path, f)
                if problem is not None:
                    raise IndexFileError(problem)
                yield f
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise IndexFileError(f"{path}: cannot be read ({reason}); run `actindex verify {self.root}`") from None

    def hold_open(self) -> None:
        """Keep ``vectors.h5`` open for reading from now on instead of opening it for every read (a server: many
        small reads from several threads, which h5py serialises). A writer replaces the file by a rename, so
        the held handle keeps reading the file as it was opened; :meth:`close` lets it go."""
        if self._held is None:
            with self.h5():  # checked as every read is
                pass
            self._held = h5py.File(inside(self.root, VECTORS), "r")
            # the very file the handle reads (a rename may since have put another at the path)
            self._mapped = mmap.mmap(self._held.id.get_vfd_handle(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):  # scattered rows: no read-ahead around each one
                self._mapped.madvise(mmap.MADV_RANDOM)
            self._row_maps, self._datasets = {}, {}

    def close(self) -> None:
        """Close the handle :meth:`hold_open` keeps (reads open the file again each time)."""
        held, self._held = self._held, None
        self._row_maps, self._mapped, self._datasets = {}, None, {}  # the map closes with its last array
        if held is not None:
            held.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def table(self) -> RowTable:
        """The per-row numeric table, read once."""
        with self.h5() as f:
            raw = {key: f[key][()] for key in ("loss", "valid", "n_tokens", "n_response")}
            n = len(raw["loss"])
            raw["source_row"] = f["source_row"][()] if "source_row" in f else np.full(n, -1, np.int64)
            raw["line"] = f["line"][()] if "line" in f else np.zeros(n, np.int64)
        return RowTable(**raw)

    def ids(self) -> list[str]:
        """Every row's id, read once (a list of ``len(self)`` strings: :meth:`ids_of` reads only those needed)."""
        if self._ids is None:
            with self.h5() as f:
                self._ids = [_text(i) for i in f["ids"][()]]
        return self._ids

    def ids_of(self, rows: list[int] | np.ndarray) -> list[str]:
        """The ids of the given rows."""
        if self._ids is not None:
            return [self._ids[int(r)] for r in rows]
        with self.h5() as f:
            return [_text(i) for i in gather(self.dataset(f, "ids"), np.asarray(rows, dtype=np.int64))]

    def records(self, rows: list[int] | np.ndarray) -> list[dict[str, Any]]:
        """The original training rows (all their fields) at the given row numbers, each a fresh object. The text of
        the latest :data:`RECORDS_KEPT` records read a few at a time is kept: a served index shows the same rows
        again and again (another ``k``, page or side of one behaviour), and a few scattered records cost tens of
        microseconds each through HDF5, under h5py's lock and the interpreter lock."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        kept = self._record_texts
        wanted = rows.tolist()
        texts = {row: kept.get(row) for row in wanted}  # what another thread drops meanwhile is still here
        missing = np.array(sorted(row for row, text in texts.items() if text is None), dtype=np.int64)
        if len(missing):
            with self.h5() as f:
                read = {int(r): _text(v) for r, v in zip(missing, gather(self.dataset(f, "record"), missing))}
            texts.update(read)
            if len(missing) <= RECORDS_KEPT // 4:  # a large read (a report, a filter) would only churn them
                with self._keeping:
                    kept.update(read)
                    for _ in range(len(kept) - RECORDS_KEPT):
                        kept.pop(next(iter(kept)))
        return [json.loads(texts[row]) for row in wanted]

    def record_values(self, rows: list[int] | np.ndarray, key: str) -> list[Any]:
        """The value of the field ``key`` of the stored records of ``rows`` (``None`` where a record lacks it or is
        not an object), read and parsed :data:`RECORD_BLOCK` records at a time: only the values are kept."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[Any] = []
        with self.h5() as f:
            for a in range(0, len(rows), RECORD_BLOCK):
                for value in gather(f["record"], rows[a : a + RECORD_BLOCK]):
                    record = json.loads(_text(value))
                    out.append(record.get(key) if isinstance(record, dict) else None)
        return out

    def row_sources(self, rows: list[int] | np.ndarray) -> dict[int, tuple[str, int]]:
        """``row -> (data file, line)`` for the given rows (line 0 where the index did not record it)."""
        table, files = self.table, self.manifest.data
        out = {}
        for row in rows:
            source = next((f for f in files if f.first_row <= row < f.first_row + f.rows), files[0])
            recorded = int(table.source_row[row])  # a directory of shards: the shard holding the row
            path = source.locate(recorded)[0] if source.sources and recorded >= 0 else source.path
            out[int(row)] = (path, int(table.line[row]))
        return out

    def vectors(self, family: str, rows: list[int] | np.ndarray | None = None) -> np.ndarray:
        """Stored vectors of a family as float32, all rows or the given ones (an int8 family's codes times their
        row's scale, :func:`~actindex.index.precision.decode`)."""
        self.check_family(family)
        keys = [f"vectors/{family}"] + ([scale_key(family)] if has_scales(self.families[family].dtype) else [])
        with self.h5() as f:
            read = []
            for key in keys:
                ds = self.dataset(f, key)
                if rows is None:
                    read.append(ds[()])
                    continue
                direct = self.row_map(key, ds)
                picked = np.asarray(rows, dtype=np.int64)
                read.append(gather(ds, picked) if direct is None else direct.read(picked))
        return decode(read[0], read[1] if len(read) > 1 else None, self.families[family].dim)

    def dataset(self, f: h5py.File, key: str) -> h5py.Dataset:
        """``f[key]``, looked up once while ``f`` is the held handle (a lookup costs more than a small read)."""
        if f is not self._held:
            return f[key]
        if key not in self._datasets:
            self._datasets[key] = f[key]
        return self._datasets[key]

    def row_map(self, key: str, ds: h5py.Dataset) -> RowMap | None:
        """The :class:`RowMap` of dataset ``key`` while ``vectors.h5`` is held open (``None`` otherwise, or when the
        dataset is not one it can read)."""
        if self._mapped is None:
            return None
        if key not in self._row_maps:
            self._row_maps[key] = RowMap.of(self._mapped, ds)
        return self._row_maps[key]

    def check_family(self, family: str) -> None:
        """Refuse, in one line, a family the index does not hold."""
        if family not in self.families:
            have = ", ".join(self.families)
            raise IndexFileError(f"{self.root} has no vector family {family!r} (it has: {have})")

    @cached_property
    def reduction(self) -> StorageProjection | None:
        """The storage projection of the per-layer families (``None``: stored as computed), read from ``vectors.h5``
        once and checked against the manifest's sha256 of its bytes."""
        info = self.manifest.reduction
        if info is None:
            return None
        with self.h5() as f:
            matrix = np.asarray(f[info.dataset][()], dtype=np.float32) if info.dataset in f else None
        if matrix is None or matrix.shape != (info.hidden, info.width) or (
                info.sha256 and hashlib.sha256(matrix.tobytes()).hexdigest() != info.sha256):
            raise IndexFileError(f"{self.root / VECTORS}: the storage projection {info.dataset!r} is missing or "
                                 f"damaged; run `actindex verify {self.root}`")
        return StorageProjection(matrix, info.seed)

    def faiss_index(self, family: str) -> Any:
        """The family's FAISS index, read once and checked against ``vectors.h5``: its bytes (small files),
        dimension and row count, and :data:`SPOT_CHECK_ROWS` sampled rows whose vectors must be the stored
        ones (a FAISS file copied in from another index, or damaged, is refused)."""
        self.check_family(family)
        if family not in self._faiss:
            self._faiss[family] = self._checked_faiss(family)
        return self._faiss[family]

    def _checked_faiss(self, family: str) -> Any:
        info = self.families[family]
        path = inside(self.root, info.faiss)
        problem = self.file_problem(info.faiss) if path.is_file() else None
        if problem:  # hashed before FAISS parses it: a damaged header can ask for absurd allocations
            raise IndexFileError(f"{problem}; run `actindex verify {self.root}`")
        try:
            index = read_faiss_index(path)
        except IndexFileError as err:
            raise IndexFileError(f"{err}; run `actindex verify {self.root}`") from None
        valid = self.table.searchable
        if index.d != info.dim:
            problem = f"has dimension {index.d}, the family {family!r} {info.dim}"
        elif index.ntotal != len(valid):
            problem = f"holds {index.ntotal} rows, but {len(valid)} rows of vectors.h5 are valid"
        else:
            rng = np.random.default_rng(zlib.crc32(family.encode()))
            sample = np.sort(rng.choice(valid, min(SPOT_CHECK_ROWS, len(valid)), replace=False))
            wrong = rows_disagree(index, sample, self.vectors(family, sample))
            if len(wrong):
                problem = f"disagrees with vectors.h5 at row {int(wrong[0])} (copied from another index or damaged)"
        if problem:
            raise IndexFileError(f"{path}: FAISS index {problem}; run `actindex verify {self.root}`")
        set_search_params(index, **self.search_settings)
        if self.faiss_gpu and gpu_count() > 0:  # pragma: no cover - needs a GPU build of FAISS and a GPU
            index = to_gpu(index)
        return index

    # ---- verbs ------------------------------------------------------------------------------
    def search(
        self, vector: np.ndarray, k: int = 10, family: str | None = None, bottom: bool = False,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-``k`` (or bottom-``k``) rows for a raw vector: ``(scores, rows)`` 1-D arrays.

        ``k = 0`` returns every valid row. ``family`` defaults to the only/first family. ``allowed`` (a boolean
        mask over the rows) searches only the rows it marks, inside the search (a FAISS ID selector; an
        approximate index searches at most :data:`~actindex.index.search.AUTO_FLAT_ROWS` marked rows exactly), so
        the rows returned are the best ``k`` of those. ``vector`` lives where the family's rows do (the stored
        space, where the index's own query vectors are formed); a residual-stream vector of the model's width
        searching a per-layer family stored narrower is mapped by the storage projection first
        (:attr:`reduction`). An index rotated at its model's own width (a model no wider than ``--width``)
        cannot tell the two spaces apart and takes the stored one: map a residual-stream vector with
        ``reduction.project`` first.
        """
        family = family or next(iter(self.families))
        self.check_family(family)
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        reduction = self.reduction
        if reduction is not None and "/" in family and vector.shape[1] == reduction.hidden != reduction.width:
            vector = reduction.project(vector)
        factory = self.families[family].faiss_factory
        few = allowed is not None and int(np.count_nonzero(allowed)) <= AUTO_FLAT_ROWS
        if factory == STORE or (factory != "Flat" and (k <= 0 or k > APPROX_MAX_K or few)):  # no copy, too deep
            dim = self.families[family].dim
            if vector.shape[1] != dim:
                raise ActindexError(f"vector has dimension {vector.shape[1]}, family {family} has {dim}")
            return self.exact_search(vector, k, family, bottom, allowed)
        index = self.faiss_index(family)
        if vector.shape[1] != index.d:
            raise ActindexError(f"vector has dimension {vector.shape[1]}, family {family} has {index.d}")
        exact = exact_scores(index)
        fetch = k if exact or k <= 0 else rescore_candidates(k, index.ntotal)  # ranked by exact cosines below
        scores, rows = (search_bottom if bottom else search)(index, vector, fetch, allowed)
        keep = rows[0] >= 0
        scores, rows = scores[0][keep], rows[0][keep]
        if len(scores) and not (np.isfinite(scores).all() and np.abs(scores).max() <= MAX_COSINE):
            worst = scores[~(np.isfinite(scores) & (np.abs(scores) <= MAX_COSINE))][0]
            raise IndexFileError(
                f"{self.root}: the FAISS index of {family!r} returned the impossible cosine {worst:.4g}: it is "
                f"damaged; run `actindex verify {self.root}`"
            )
        if not exact and len(rows):  # lossy codes (PQ, SQ): the candidates ranked by their exact cosines
            scores = self.cosines(vector, family, rows)
            order = np.argsort(scores if bottom else -scores, kind="stable")[: k if k > 0 else None]
            scores, rows = scores[order], rows[order]
        return scores, rows

    def exact_search(self, vector: np.ndarray, k: int, family: str, bottom: bool = False,
                     allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`search` returns, computed exactly: the cosine of every valid row (that ``allowed`` marks)
        with ``vector``, its stored vectors read and normalised a block at a time, then the top ``k`` (or bottom
        ``k``; every row for ``k <= 0``). Memory: one block and one score per valid row."""
        q = normalise(vector)[0]
        valid = self.table.valid if allowed is None else self.table.valid & allowed
        rows, scores = np.flatnonzero(valid), np.empty(int(valid.sum()), np.float32)
        at = 0
        with self.h5() as f:
            for _, block in valid_blocks(StoredRows.of(f, family, self.families[family].dim), valid, 0):
                scores[at : at + len(block)] = block @ q
                at += len(block)
        order = np.argsort(scores if bottom else -scores, kind="stable")
        order = order if k <= 0 else order[:k]
        return scores[order], rows[order]

    def measured_recall(self, family: str, k: int = 10, queries: int = 200) -> tuple[str, float]:
        """``(description, recall@k)`` of a family's FAISS index: its factory and query-time parameters, and
        :func:`~actindex.index.search.measured_recall` over its stored rows (exact ``Flat`` indexes are not
        measured: their recall is 1 by construction)."""
        from actindex.index.search import measured_recall, search_params

        kind = self.families[family].faiss_factory
        if kind in ("Flat", STORE):
            return f"{kind} (exact)", 1.0
        index = self.faiss_index(family)
        params = search_params(index)
        if params:
            kind += " (" + ", ".join(f"{key} {value}" for key, value in params.items()) + ")"
        with self.h5() as f:
            recall = measured_recall(index, StoredRows.of(f, family, self.families[family].dim), f["valid"][()], k,
                                     queries)
        return kind, recall

    def calibration_sample(self, family: str) -> np.ndarray:
        """The normalised vectors ``v_x / ||v_x||`` of a fixed seeded sample of at most
        :data:`CALIBRATION_ROWS` searchable rows (all of them in a smaller index): the index's typical rows,
        against which a score is calibrated and a behaviour's pairs are checked. Read once per family and kept."""
        if family not in self._calibration:
            valid = self.table.searchable
            rng = np.random.default_rng(zlib.crc32(family.encode()) + 1)
            rows = valid if len(valid) <= CALIBRATION_ROWS else np.sort(rng.choice(valid, CALIBRATION_ROWS, False))
            self._calibration[family] = normalise(self.vectors(family, rows))
        return self._calibration[family]

    def calibration_cosines(self, vector: np.ndarray, family: str) -> np.ndarray:
        """Cosines of ``vector`` with the calibration sample (:meth:`calibration_sample`): the distribution a
        score is calibrated against."""
        return self.calibration_sample(family) @ normalise(vector)[0]

    def typical(self, family: str) -> np.ndarray:
        """``mu = mean_x v_x / ||v_x||`` over the calibration sample: the index's typical row direction."""
        return self.remembered(("typical", family), lambda: self.calibration_sample(family).mean(axis=0))

    def calibration(self, vector: np.ndarray, family: str,
                    summary: Callable[[np.ndarray], tuple[float, float]]) -> tuple[float, float]:
        """``summary(calibration_cosines(vector, family))`` (a location and a scale), kept per family and vector:
        a query vector asked again (a cached behaviour) is calibrated once per process."""
        key = ("calibration", family, getattr(summary, "__qualname__", repr(summary)),
               np.asarray(vector, np.float32).tobytes())
        return self.remembered(key, lambda: summary(self.calibration_cosines(vector, family)))

    def remembered(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, kept under ``key`` for the reader's life (the :data:`REMEMBERED_KEPT` latest): work that
        depends only on the index's fixed rows and the key, asked again by every query of a cached behaviour."""
        if key in self._remembered:
            return self._remembered[key]
        found = self._remembered[key] = compute()
        if len(self._remembered) > REMEMBERED_KEPT:
            self._remembered.pop(next(iter(self._remembered)), None)
        return found

    def cosines(self, vector: np.ndarray, family: str, rows: np.ndarray) -> np.ndarray:
        """Cosine of ``vector`` with the stored vectors of ``rows`` (exact, from vectors.h5)."""
        return normalise(self.vectors(family, rows)) @ normalise(vector)[0]

    def shared_cosines(self) -> SharedCosines:
        """Cosines of several query vectors with the same rows, each family's rows read once
        (:class:`SharedCosines`)."""
        return SharedCosines(self)

    def projections(self, vector: np.ndarray, family: str, rows: np.ndarray | None = None) -> np.ndarray:
        """``<v_i, psi / ||psi||>`` of the raw stored vectors of ``rows`` (default: every searchable row)."""
        rows = self.table.searchable if rows is None else rows
        return self.vectors(family, rows) @ (vector / np.linalg.norm(vector))


def layout_problem(root: Path, manifest: Manifest) -> str | None:
    """The first way the manifest's promises disagree with ``vectors.h5`` (cheap: shapes only), or ``None``:
    ``rows`` rows in every per-row dataset, ``(rows, dim)`` per family, and layers that match the families
    (every per-layer family at a listed layer, every listed layer inside the model)."""
    problem = structure_problem(manifest.to_dict())
    if problem:
        return f"{root / MANIFEST}: {problem}"
    rows = manifest.rows
    try:
        with h5py.File(inside(root, VECTORS), "r") as f:
            foreign = foreign_problem(root / VECTORS, f)
            if foreign is not None:
                return foreign
            if "ids" not in f or f["ids"].shape != (rows,):
                have = f["ids"].shape[0] if "ids" in f else "no"
                return f"{root / VECTORS}: holds {have} rows, the manifest says {rows}"
            for name, info in manifest.families.items():
                key = f"vectors/{name}"
                expected = disk_shape(rows, info.dim, info.dtype)
                if key not in f or f[key].shape != expected:
                    shape = f[key].shape if key in f else "nothing"
                    return f"{root / VECTORS}: family {name!r} has shape {shape}, the manifest says {expected}"
                if has_scales(info.dtype) and (scale_key(name) not in f or f[scale_key(name)].shape != (rows,)):
                    return f"{root / VECTORS}: family {name!r} is stored in {info.dtype} without one scale per row"
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # h5py's errors for a damaged file
        return f"{root / VECTORS}: cannot be read as HDF5 ({(str(err).splitlines() or ['?'])[0]})"
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
