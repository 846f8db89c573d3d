"""Stage 5 — the index writer: the index directory on disk, written part by part (docs/design.md#the-index-on-disk).

Layout of a complete index::

    DIR/manifest.json        written last and atomically; its presence means "complete"
    DIR/vectors.h5           per-row metadata datasets and one dataset per vector family
    DIR/faiss/<family>.faiss one FAISS index per searchable family (ids = row numbers)
    DIR/curvature-<kind>-<random>.h5   fitted curvature factors, when fitted (:func:`add_file`)

While a build runs, committed rows live in ``DIR/.build/parts/part-<start>-<end>.h5``; each
part is written to a temporary name and renamed, so after a ``kill -9`` at any moment the
directory holds only whole parts. A resumed build continues after the last whole part and the
final index has exactly the rows of an uninterrupted build. ``DIR/.lock`` refuses a second writer.

Appending (``build --append``) reuses the same machinery on a complete index of N rows: new rows
are committed as parts numbered from N; finalising first moves the manifest to
``.build/base-manifest.json`` (the index reads as unfinished from then on, and rerunning the
command resumes it), then rewrites ``vectors.h5`` as rows ``[0, N)`` of the current file followed
by the new parts, and extends each FAISS index with the new rows (kept trained, never rebuilt).

Integrity (format 2): the manifest records the sha256 of every dataset of ``vectors.h5``
(``checksums``), of every file a query reads, ``vectors.h5`` and each FAISS file, byte for byte
(``files``), and of its own content (``manifest_sha256``, over the canonical JSON of every other key),
so ``verify`` covers every byte a query reads and an edited manifest is refused. Format 1 indexes
(no file or manifest checksums) still open; ``verify`` checks their FAISS files by decoding every row.

Writes never go through an existing path: temporary files are created fresh (``O_EXCL``, a random
name, :func:`~actindex.files.fresh_temp`) and renamed over their target, and the lock is linked into place whole,
so a planted link is never followed and a lock is never empty. Before each part and before
finalising, the free disk space is checked (:func:`~actindex.files.ensure_space`), and a full disk while writing is
reported as one line, with the temporary file removed, instead of an HDF5 crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from actindex.errors import IndexFileError
from actindex.files import atomic_file, atomic_write_text, bytes_sha256, ensure_space, fsync_dir
from actindex.index.checkpoints import WEIGHTS_DIR
from actindex.index.lock import LOCK, own_dir, write_lock
from actindex.index.manifest import (
    BUILD_DIR,
    MANIFEST,
    VECTORS,
    FamilyInfo,
    Manifest,
    read_manifest,
    runtime_versions,
    write_manifest,
)
from actindex.index.precision import DISK_DTYPES, StoredRows, disk_shape, encode, has_scales, row_bytes, scale_key
from actindex.index.search import (
    STORE,
    extend_faiss_index,
    read_faiss_index,
    resolve_factory,
    write_faiss_index,
    write_faiss_index_from_rows,
)
from actindex.outputs import Input, check_output

FAISS_DIR = "faiss"
#: where a build under torchrun keeps its ranks' shards until they are merged
SHARDS_DIR = ".shards"
PART_RE = re.compile(r"^part-(\d{9})-(\d{9})\.h5$")

#: per-row metadata datasets stored beside the vectors, with their numpy dtypes
META_FIELDS: dict[str, Any] = {
    "ids": h5py.string_dtype(),
    "loss": np.float32,
    "n_tokens": np.int32,
    "n_response": np.int32,
    "truncated": np.bool_,
    "valid": np.bool_,
    "hash": h5py.string_dtype(),
    "record": h5py.string_dtype(),
    "source_row": np.int64,  # the row's number in its data file (0-based; rows, not lines)
    "line": np.int64,  # its line in a JSONL file (1-based), or its row number + 1 in parquet/save_to_disk data
}
#: per-row datasets an index of format 1 may lack (its rows are then the first rows of each file)
OPTIONAL_FIELDS = ("source_row", "line")


def family_file(family: str) -> str:
    """File name of a family's FAISS index: ``residual_change/18`` -> ``residual_change-18.faiss``."""
    return family.replace("/", "-") + ".faiss"


def update_checksum(digest: Any, values: np.ndarray) -> None:
    """Feed a block of dataset values to a sha256: raw bytes, or strings as UTF-8, NUL-separated.

    Feeding consecutive row blocks gives the same digest as feeding the whole dataset at once."""
    if values.dtype.kind in "OSU":
        for v in values:
            digest.update((v.decode() if isinstance(v, bytes) else str(v)).encode() + b"\0")
    else:
        digest.update(np.ascontiguousarray(values).tobytes())


def dataset_checksum(values: np.ndarray) -> str:
    """sha256 of a dataset's values (see :func:`update_checksum`)."""
    digest = hashlib.sha256()
    update_checksum(digest, values)
    return digest.hexdigest()


def check_out(root: Path, overwrite: bool = False, append: bool = False, inputs: list[Input] = (),
              checkpoint: bool = False) -> None:
    """Refuse, before any work, an ``--out`` the output rule refuses (:mod:`actindex.outputs`: a file, a
    directory inside an index, an unrelated non-empty directory, an input), or one that holds a complete index
    when neither ``overwrite`` nor ``append`` is asked for (an unfinished build there is resumed). ``checkpoint``:
    the index of a checkpoint set, whose directory also holds the checkpoint's weights
    (:mod:`actindex.index.checkpoints`)."""

    made = (MANIFEST, VECTORS, FAISS_DIR, BUILD_DIR, SHARDS_DIR, LOCK) + ((WEIGHTS_DIR,) if checkpoint else ())

    def ours(path: Path) -> bool:  # what a build (or a killed one) leaves in its directory
        return any(os.path.lexists(path / name) for name in made)

    check_output(root, overwrite=None, inputs=inputs, directory=True, ours=ours, what="an index directory")
    if (root / MANIFEST).exists() and not (overwrite or append):
        raise IndexFileError(f"{root} already holds a complete index; pass --overwrite to rebuild it")


def clear_index(root: Path) -> None:
    """Remove an index's files (complete or unfinished) from ``root``; other files stay."""
    for name in (MANIFEST, VECTORS, FAISS_DIR, BUILD_DIR):
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()  # a link is removed, never what it points to
        elif path.is_dir():
            shutil.rmtree(path)


def index_summary(root: Path, manifest: Manifest, seconds: float) -> dict[str, Any]:
    """Rows, tokens, truncated/excluded counts, time and bytes per row of a complete index."""
    with h5py.File(root / VECTORS, "r") as f:
        tokens = int(f["n_tokens"][()].sum())
        truncated = int(f["truncated"][()].sum())
        invalid = int((~f["valid"][()]).sum())
    vector_bytes = sum(manifest.rows * row_bytes(fam.dim, fam.dtype) for fam in manifest.families.values())
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    rows = max(manifest.rows, 1)
    return {
        "rows": manifest.rows,
        "tokens": tokens,
        "truncated": truncated,
        "excluded": invalid,
        "seconds": round(seconds, 2),
        "vector_bytes_per_row": vector_bytes // rows,
        "disk_bytes_per_row": on_disk // rows,
    }


@dataclass
class Part:
    """Rows ``[start, end)`` of the index, stored as the first ``end - start`` rows of the HDF5 file
    ``path`` (a build part, a shard's ``vectors.h5``, or the base of an append)."""

    start: int
    end: int
    path: Path


BASE_MANIFEST = "base-manifest.json"
BASE_FAISS = "base-faiss"


def append_base(root: str | os.PathLike) -> Manifest:
    """The manifest of the complete index an append extends (saved aside once finalising began)."""
    root = Path(root)
    saved = root / BUILD_DIR / BASE_MANIFEST
    if (root / MANIFEST).exists():
        return read_manifest(root)
    if saved.exists():
        return Manifest.from_dict(json.loads(saved.read_text()), saved)
    raise IndexFileError(f"{root}: --append needs a complete index there (no {MANIFEST}); build it first")


class IndexWriter:
    """Writes an index directory part by part and finalises it atomically.

    ``state`` describes the build (model fingerprint, data checksum, layers, families...): a
    resumed build must present the same state, otherwise it is refused.
    """

    def __init__(
        self, root: str | os.PathLike, state: dict[str, Any], overwrite: bool = False, base_rows: int | None = None
    ):
        """``base_rows`` = N appends to the complete index of N rows in ``root`` (parts start at N)."""
        self.root = Path(root)
        self.state = state
        self.build_dir = self.root / BUILD_DIR
        self.parts_dir = self.build_dir / "parts"
        self.base_rows = base_rows
        self.first_row = base_rows or 0
        if (self.root / MANIFEST).exists() and not overwrite and base_rows is None:
            raise IndexFileError(f"{self.root} already holds a complete index; pass --overwrite to rebuild it")
        if overwrite:
            self._clear()
        remove_stale_temps(self.root)
        state_file = self.build_dir / "state.json"
        if state_file.exists():
            try:
                previous = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                raise IndexFileError(
                    f"{self.root} holds an unfinished build whose state ({state_file}) is unreadable; "
                    "pass --overwrite to start over"
                ) from None
            if previous != json.loads(json.dumps(state)):
                changed = sorted(k for k in set(previous) | set(state) if previous.get(k) != state.get(k))
                raise IndexFileError(
                    f"{self.root} holds an unfinished build with different settings ({', '.join(changed)}); "
                    "rerun the same command to resume it, or pass --overwrite to start over"
                )
        else:
            own_dir(self.build_dir)
            own_dir(self.parts_dir)
            atomic_write_text(state_file, json.dumps(state, indent=2, sort_keys=True))
        own_dir(self.build_dir)
        own_dir(self.parts_dir)

    def _clear(self) -> None:
        clear_index(self.root)

    def parts(self) -> list[Part]:
        """Whole parts on disk, in row order."""
        found = []
        for path in self.parts_dir.iterdir():
            m = PART_RE.match(path.name)
            if m:
                found.append(Part(int(m.group(1)), int(m.group(2)), path))
        return sorted(found, key=lambda p: p.start)

    def rows_done(self) -> int:
        """End of the rows already committed (parts must be contiguous from ``first_row``)."""
        done = self.first_row
        for part in self.parts():
            if part.start != done:
                break
            done = part.end
        return done

    def write_part(self, start: int, meta: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> None:
        """Commit rows ``[start, start + n)``: write to a temporary file, fsync, rename."""
        n = len(meta["ids"])
        name = f"part-{start:09d}-{start + n:09d}.h5"
        ensure_space(self.parts_dir, part_bytes(meta, vectors), f"commit rows {start}-{start + n}")
        with atomic_file(self.parts_dir / name) as tmp, h5py.File(tmp, "w") as f:
            for key, dtype in META_FIELDS.items():
                f.create_dataset(key, data=np.asarray(meta[key], dtype=dtype))
            for family, arr in vectors.items():
                f.create_dataset(f"vectors/{family}", data=arr)

    def finalize(
        self,
        manifest: Manifest,
        families: dict[str, int],
        store_dtype: str,
        faiss_factory: str,
        faiss_train_rows: int | None = None,
        matrix: np.ndarray | None = None,
    ) -> Manifest:
        """Merge parts into ``vectors.h5``, build (or, appending, extend) the FAISS files, write the manifest
        (``matrix``: the storage projection ``manifest.reduction`` names)."""
        parts = [p for p in self.parts() if p.start >= self.first_row]
        if self.base_rows is None:
            manifest = write_index(self.root, parts, manifest, families, store_dtype, faiss_factory, faiss_train_rows,
                                   matrix=matrix)
        else:
            saved = self.build_dir / BASE_MANIFEST
            if (self.root / MANIFEST).exists():
                ensure_space(self.root, _tree_bytes(self.root), f"append to {self.root}")
                atomic_write_text(saved, (self.root / MANIFEST).read_text())
                (self.root / MANIFEST).unlink()  # from here on the index reads as unfinished
                fsync_dir(self.root)
            base = [Part(0, self.base_rows, self.root / VECTORS)] if self.base_rows else []
            manifest = write_index(
                self.root, base + parts, manifest, families, store_dtype, faiss_factory, faiss_train_rows,
                extend_from=self.base_rows, base_faiss=self.build_dir / BASE_FAISS, matrix=matrix,
            )
        shutil.rmtree(self.build_dir, ignore_errors=True)
        return manifest


def write_index(
    root: Path,
    parts: list[Part],
    manifest: Manifest,
    families: dict[str, int],
    store_dtype: str,
    faiss_factory: str,
    faiss_train_rows: int | None = None,
    extend_from: int | None = None,
    base_faiss: Path | None = None,
    matrix: np.ndarray | None = None,
) -> Manifest:
    """Write a complete index in ``root`` from ``parts`` (contiguous, from row 0); manifest last.

    ``vectors.h5`` is written to a temporary name and renamed. FAISS: a new index per family
    (``faiss_factory``, trained on at most ``faiss_train_rows`` sampled rows; streamed to disk block
    by block when flat-coded, :func:`~actindex.index.search.write_faiss_index_from_rows`); or, with
    ``extend_from`` = N, the existing ``faiss/`` files (first moved to ``base_faiss``) extended
    with the valid rows from N on. A family whose factory resolves to :data:`~actindex.index.search.STORE` gets no
    FAISS file: its stored vectors are the one copy a search reads. ``matrix``: the storage projection that
    ``manifest.reduction`` names, written to its dataset. ``manifest`` gets rows, families, checksums and
    timestamps.
    """
    total = parts[-1].end if parts else 0
    for before, after in zip([Part(0, 0, root)] + parts, parts):
        if after.start != before.end:
            raise IndexFileError(f"{root}: rows {before.end}-{after.start} are missing from the parts to merge")
    # vectors.h5 holds what the parts hold; each flat FAISS file about as much as its family's vectors
    stored = sum(p.path.stat().st_size for p in {p.path: p for p in parts}.values())
    ensure_space(root, 2 * stored, f"write the index in {root}")
    checksums: dict[str, str] = {}
    with atomic_file(root / VECTORS) as tmp, h5py.File(tmp, "w") as out:
        # streamed part by part, with their checksums: no dataset is ever held in memory whole
        for key, dtype in META_FIELDS.items():
            ds = out.create_dataset(key, shape=(total,), dtype=dtype)
            digest = hashlib.sha256()
            for part, a, b in _blocks(parts, copy_rows(ds)):
                block = np.asarray(_read(part, key, a - part.start, b - part.start), dtype=dtype)
                ds[a:b] = block
                update_checksum(digest, block)
            checksums[key] = digest.hexdigest()
        for fam, dim in families.items():
            key, shape, disk = f"vectors/{fam}", disk_shape(total, dim, store_dtype), DISK_DTYPES[store_dtype]
            ds = out.create_dataset(key, shape=shape, dtype=disk, chunks=vector_chunks(shape, disk))
            scales = out.create_dataset(scale_key(fam), shape=(total,), dtype=np.float32) if has_scales(
                store_dtype) else None
            digests = hashlib.sha256(), hashlib.sha256()
            # blocks sized by the float32 rows they decode to
            for part, a, b in _blocks(parts, max(1, COPY_BYTES // (4 * dim))):
                stored, scale = encode(_vectors(part, fam, dim, a - part.start, b - part.start), store_dtype)
                ds[a:b] = stored
                update_checksum(digests[0], stored)
                if scales is not None:
                    scales[a:b] = scale
                    update_checksum(digests[1], scale)
            checksums[key] = digests[0].hexdigest()
            if scales is not None:
                checksums[scale_key(fam)] = digests[1].hexdigest()
        if manifest.reduction is not None:
            assert matrix is not None, "an index with a storage projection stores its matrix"
            out.create_dataset(manifest.reduction.dataset, data=np.asarray(matrix, dtype=np.float32))

    own_dir(root / FAISS_DIR)
    faiss_files, factories = {}, {}
    with h5py.File(root / VECTORS, "r") as f:
        valid = f["valid"][()]
        for family in families:
            ds = StoredRows.of(f, family, families[family])
            factory = (resolve_factory(faiss_factory, int(valid.sum()), ds.shape[1]) if extend_from is None
                       else manifest.families[family].faiss_factory)
            if factory == STORE:  # the stored vectors are the only copy: searched exactly from vectors.h5
                faiss_files[family], factories[family] = "", STORE
                continue
            faiss_files[family] = f"{FAISS_DIR}/{family_file(family)}"
            target = root / faiss_files[family]
            if extend_from is None:
                # flat-coded factories are streamed to disk; IVF/HNSW are built in memory first
                write_faiss_index_from_rows(ds, valid, target, factory, faiss_train_rows)
                factories[family] = factory
            else:
                assert base_faiss is not None
                own_dir(base_faiss)
                kept = base_faiss / family_file(family)
                if not kept.exists():
                    os.replace(target, kept)  # the untouched base index survives a crash
                index = extend_faiss_index(read_faiss_index(kept, mmap=False), ds, valid, extend_from)
                factories[family] = manifest.families[family].faiss_factory
                write_faiss_index(index, target)
                del index  # one family's FAISS index in memory at a time
    manifest = replace(
        manifest,
        rows=int(total),
        valid_rows=int(valid.sum()),
        families={fam: FamilyInfo(dim, store_dtype, faiss_files[fam], factories[fam]) for fam, dim in families.items()},
        checksums=checksums,
        files={name: bytes_sha256(root / name) for name in [VECTORS, *faiss_files.values()] if name},
        versions=manifest.versions or runtime_versions(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    written = write_manifest(root, manifest)
    remove_unlisted(root, written)  # curvature fitted on the rows before an append is dropped with its files
    return written


def part_bytes(meta: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> int:
    """About what a part file of these arrays takes on disk (strings as their UTF-8 length)."""
    size = sum(arr.nbytes for arr in vectors.values())
    for values in meta.values():
        arr = np.asarray(values)
        size += sum(len(str(v).encode()) + 16 for v in arr) if arr.dtype.kind in "OSU" else arr.nbytes
    return size + (64 << 10)


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


#: temporary files a writer may leave behind when killed: this release's (``.<name>.<random>.tmp``) and
#: the previous one's (``<name>.tmp``); removed (links unlinked, never followed) when a writer starts
_STALE = re.compile(r"^(\..+\.[^.]+\.tmp|.+\.tmp)$")


def remove_stale_temps(root: Path) -> None:
    """Remove the temporary files a killed writer left in the index (call while holding its lock): a
    full disk's leftover would otherwise keep the disk full."""
    for folder in (root, root / FAISS_DIR, root / BUILD_DIR, root / BUILD_DIR / "parts"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _STALE.match(path.name) and (path.is_symlink() or path.is_file()):
                path.unlink(missing_ok=True)
            elif _STALE.match(path.name) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


#: about the bytes of one stored chunk of a vector family: a query reads a few rows at random (the hits' exact
#: cosines, a rescoring), and HDF5 reads whole chunks
CHUNK_BYTES = 64 << 10


def vector_chunks(shape: tuple[int, int], dtype: str) -> tuple[int, int]:
    """The HDF5 chunk of a ``(rows, dim)`` family: whole rows, a power of two of them (1 to 1024) holding about
    :data:`CHUNK_BYTES` (width 576 in float32: 16 rows; width 64: 256 rows)."""
    rows, dim = shape
    per_row = max(1, dim * np.dtype(dtype).itemsize)
    fit = 2 ** int(np.log2(max(1, CHUNK_BYTES // per_row)))
    return min(max(rows, 1), fit, 1024), dim


#: bytes of one dataset copied at a time by :func:`write_index` (strings: :data:`COPY_STRINGS` rows)
COPY_BYTES = 32 << 20
COPY_STRINGS = 16384


def copy_rows(ds: h5py.Dataset) -> int:
    """Rows of a dataset copied (and hashed) at a time: :data:`COPY_BYTES` worth, :data:`COPY_STRINGS` strings."""
    if ds.dtype.kind == "O":
        return COPY_STRINGS
    width = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    return max(1, COPY_BYTES // max(width, 1))


def _blocks(parts: list[Part], step: int) -> Iterator[tuple[Part, int, int]]:
    """``(part, a, b)``: index rows ``[a, b)`` of each part in turn, ``step`` at a time (a shard or the base of an
    append is one large part, copied in blocks)."""
    for part in parts:
        for a in range(part.start, part.end, step):
            yield part, a, min(a + step, part.end)


def _vectors(part: Part, family: str, dim: int, a: int, b: int) -> np.ndarray:
    """Rows ``[a, b)`` of a part's family as the float32 vectors they stand for (an integer base decoded with its
    scales: re-encoding ``s c`` gives ``c`` back)."""
    with h5py.File(part.path, "r") as f:
        rows = StoredRows.of(f, family, dim)
        n = part.end - part.start
        if len(rows) < n:
            raise IndexFileError(f"{part.path}: family {family!r} has {len(rows)} rows, expected {n}")
        return rows[a:b]


def _read(part: Part, key: str, a: int = 0, b: int | None = None) -> np.ndarray:
    """Rows ``[a, b)`` (default: all ``end - start``) of dataset ``key`` of a part, counted from the first row of its
    file (an optional field an older part lacks reads as -1: "the row's position in its file")."""
    n = part.end - part.start
    b = n if b is None else b
    with h5py.File(part.path, "r") as f:
        if key in OPTIONAL_FIELDS and key not in f:
            return np.full(b - a, -1, np.int64)
        ds = f[key]
        if ds.shape[0] < n:
            raise IndexFileError(f"{part.path}: {key!r} has {ds.shape[0]} rows, expected {n}")
        return ds[a:b]


def add_file(
    root: str | os.PathLike,
    prefix: str,
    datasets: dict[str, np.ndarray],
    record: Callable[[Manifest, str, dict[str, str]], None],
) -> Manifest:
    """Add an HDF5 file of ``datasets`` to a complete index and list it in the manifest, in one commit.

    The file is written under a fresh name, ``<prefix>-<random>.h5`` (never over a file the manifest lists),
    fsynced and hashed; then ``record(manifest, file name, {dataset: sha256})`` lists it and the manifest,
    with the file's sha256 in ``files``, is renamed into place: that one rename is the commit. A kill at any
    moment leaves the old index (and at most an unlisted file, removed by the next writer) or the new one.
    A file the manifest listed before and no longer does (a refit) is removed after the commit. Returns the
    manifest written.
    """
    root = Path(root)
    read_manifest(root)
    with write_lock(root):
        remove_stale_temps(root)
        remove_unlisted(root, read_manifest(root))
        ensure_space(root, sum(np.asarray(v).nbytes for v in datasets.values()), f"store {prefix} in {root}")
        name = f"{prefix}-{secrets.token_hex(6)}.h5"
        checksums: dict[str, str] = {}
        with atomic_file(root / name) as tmp:
            with h5py.File(tmp, "w") as f:
                for path, values in datasets.items():
                    f.create_dataset(path, data=values)
                    checksums[path] = dataset_checksum(np.asarray(values))
            digest = bytes_sha256(tmp)
        manifest = read_manifest(root)
        record(manifest, name, checksums)
        manifest.files[name] = digest
        written = write_manifest(root, manifest)
        remove_unlisted(root, written)
        return written


#: files an index holds besides its vectors and FAISS files, listed by the manifest (``<prefix>-<random>.h5``)
ADDED_FILE = re.compile(r"^curvature-[\w.-]+-[0-9a-f]{12}\.h5$")


def remove_unlisted(root: Path, manifest: Manifest) -> None:
    """Remove the added files (:data:`ADDED_FILE`) that ``manifest`` does not list: what a writer killed before
    its commit, or the file a commit replaced, left behind (call while holding the index's lock)."""
    listed = set(manifest.files) | {c.file for c in manifest.curvature.values()}
    for path in root.iterdir():
        if ADDED_FILE.match(path.name) and path.name not in listed and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
