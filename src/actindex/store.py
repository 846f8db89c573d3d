"""Stage 5 — store: the index directory on disk (DESIGN section 7).

Layout of a complete index::

    DIR/manifest.json        written last and atomically; its presence means "complete"
    DIR/vectors.h5           per-row metadata datasets and one dataset per vector family
    DIR/faiss/<family>.faiss one FAISS index per searchable family (ids = row numbers)

While a build runs, committed rows live in ``DIR/.build/parts/part-<start>-<end>.h5``; each
part is written to a temporary name and renamed, so after a ``kill -9`` at any moment the
directory holds only whole parts. A resumed build continues after the last whole part and the
final index has exactly the rows of an uninterrupted build. ``DIR/.lock`` refuses a second writer.

Appending (``build --append``) reuses the same machinery on a complete index of N rows: new rows
are committed as parts numbered from N; finalising first moves the manifest to
``.build/base-manifest.json`` (the index reads as unfinished from then on, and rerunning the
command resumes it), then rewrites ``vectors.h5`` as rows ``[0, N)`` of the current file followed
by the new parts, and extends each FAISS index with the new rows (kept trained, never rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import IndexFileError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.h5"
FAISS_DIR = "faiss"
BUILD_DIR = ".build"
LOCK = ".lock"
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
}


def family_file(family: str) -> str:
    """File name of a family's FAISS index: ``residual_change/18`` -> ``residual_change-18.faiss``."""
    return family.replace("/", "-") + ".faiss"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the whole new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def write_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for the duration; refuse if another live process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.exists() else ""
            pid, _, host = owner.partition("@")
            if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
                lock.unlink(missing_ok=True)  # stale: its writer died
                continue
            raise IndexFileError(
                f"{root}: another build (process {owner or 'unknown'}) is writing this index; "
                f"wait for it, or delete {lock} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def clear_index(root: Path) -> None:
    """Remove an index's files (complete or unfinished) from ``root``; other files stay."""
    for name in (MANIFEST, VECTORS, FAISS_DIR, BUILD_DIR):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def index_summary(root: Path, manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Rows, tokens, truncated/excluded counts, time and bytes per row of a complete index."""
    with h5py.File(root / VECTORS, "r") as f:
        tokens = int(f["n_tokens"][()].sum())
        truncated = int(f["truncated"][()].sum())
        invalid = int((~f["valid"][()]).sum())
    vector_bytes = sum(
        manifest["rows"] * fam["dim"] * np.dtype(fam["dtype"]).itemsize for fam in manifest["families"].values()
    )
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    rows = max(manifest["rows"], 1)
    return {
        "rows": manifest["rows"],
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


def append_base(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the complete index an append extends (saved aside once finalising began)."""
    root = Path(root)
    saved = root / BUILD_DIR / BASE_MANIFEST
    if (root / MANIFEST).exists():
        return read_manifest(root)
    if saved.exists():
        return json.loads(saved.read_text())
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
        state_file = self.build_dir / "state.json"
        if state_file.exists():
            previous = json.loads(state_file.read_text())
            if previous != json.loads(json.dumps(state)):
                changed = sorted(k for k in set(previous) | set(state) if previous.get(k) != state.get(k))
                raise IndexFileError(
                    f"{self.root} holds an unfinished build with different settings ({', '.join(changed)}); "
                    "rerun the same command to resume it, or pass --overwrite to start over"
                )
        else:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(state_file, json.dumps(state, indent=2, sort_keys=True))
        for stale in self.parts_dir.glob("*.tmp"):
            stale.unlink()

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
        tmp = self.parts_dir / (name + ".tmp")
        with h5py.File(tmp, "w") as f:
            for key, dtype in META_FIELDS.items():
                f.create_dataset(key, data=np.asarray(meta[key], dtype=dtype))
            for family, arr in vectors.items():
                f.create_dataset(f"vectors/{family}", data=arr)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.parts_dir / name)

    def finalize(
        self,
        manifest: dict[str, Any],
        families: dict[str, int],
        store_dtype: str,
        faiss_factory: str,
        faiss_train_rows: int | None = None,
    ) -> dict[str, Any]:
        """Merge parts into ``vectors.h5``, build (or, appending, extend) the FAISS files, write the manifest."""
        parts = [p for p in self.parts() if p.start >= self.first_row]
        if self.base_rows is None:
            manifest = write_index(self.root, parts, manifest, families, store_dtype, faiss_factory, faiss_train_rows)
        else:
            saved = self.build_dir / BASE_MANIFEST
            if (self.root / MANIFEST).exists():
                atomic_write_text(saved, (self.root / MANIFEST).read_text())
                (self.root / MANIFEST).unlink()  # from here on the index reads as unfinished
                _fsync_dir(self.root)
            base = [Part(0, self.base_rows, self.root / VECTORS)] if self.base_rows else []
            manifest = write_index(
                self.root, base + parts, manifest, families, store_dtype, faiss_factory, faiss_train_rows,
                extend_from=self.base_rows, base_faiss=self.build_dir / BASE_FAISS,
            )
        shutil.rmtree(self.build_dir, ignore_errors=True)
        return manifest


def write_index(
    root: Path,
    parts: list[Part],
    manifest: dict[str, Any],
    families: dict[str, int],
    store_dtype: str,
    faiss_factory: str,
    faiss_train_rows: int | None = None,
    extend_from: int | None = None,
    base_faiss: Path | None = None,
) -> dict[str, Any]:
    """Write a complete index in ``root`` from ``parts`` (contiguous, from row 0); manifest last.

    ``vectors.h5`` is written to a temporary name and renamed. FAISS: a new index per family
    (``faiss_factory``, trained on at most ``faiss_train_rows`` sampled rows; streamed to disk block
    by block when flat-coded, :func:`~actindex.search.write_faiss_index_from_rows`); or, with
    ``extend_from`` = N, the existing ``faiss/`` files (first moved to ``base_faiss``) extended
    with the valid rows from N on. ``manifest`` gets rows, families, checksums and timestamps.
    """
    from .search import (
        extend_faiss_index,
        read_faiss_index,
        resolve_factory,
        write_faiss_index,
        write_faiss_index_from_rows,
    )

    total = parts[-1].end if parts else 0
    for before, after in zip([Part(0, 0, root)] + parts, parts):
        if after.start != before.end:
            raise IndexFileError(f"{root}: rows {before.end}-{after.start} are missing from the parts to merge")
    tmp = root / (VECTORS + ".tmp")
    checksums: dict[str, str] = {}
    with h5py.File(tmp, "w") as out:
        # streamed part by part, with their checksums: no dataset is ever held in memory whole
        datasets = [(key, (total,), dtype, None) for key, dtype in META_FIELDS.items()]
        datasets += [(f"vectors/{fam}", (total, dim), store_dtype, (min(max(total, 1), 1024), dim))
                     for fam, dim in families.items()]
        for key, shape, dtype, chunks in datasets:
            ds = out.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks)
            digest = hashlib.sha256()
            for part in parts:
                block = np.asarray(_read(part, key), dtype=dtype)
                ds[part.start : part.end] = block
                update_checksum(digest, block)
            checksums[key] = digest.hexdigest()
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, root / VECTORS)

    faiss_dir = root / FAISS_DIR
    faiss_dir.mkdir(exist_ok=True)
    faiss_files, factories = {}, {}
    with h5py.File(root / VECTORS, "r") as f:
        valid = f["valid"][()]
        for family in families:
            faiss_files[family] = f"{FAISS_DIR}/{family_file(family)}"
            target = root / faiss_files[family]
            ds = f[f"vectors/{family}"]
            if extend_from is None:
                # flat-coded factories are streamed to disk; IVF/HNSW are built in memory first
                write_faiss_index_from_rows(ds, valid, target, faiss_factory, faiss_train_rows)
                factories[family] = resolve_factory(faiss_factory, int(valid.sum()))
            else:
                assert base_faiss is not None
                base_faiss.mkdir(parents=True, exist_ok=True)
                kept = base_faiss / family_file(family)
                if not kept.exists():
                    os.replace(target, kept)  # the untouched base index survives a crash
                index = extend_faiss_index(read_faiss_index(kept, mmap=False), ds, valid, extend_from)
                factories[family] = manifest["families"][family]["faiss_factory"]
                write_faiss_index(index, target)
                del index  # one family's FAISS index in memory at a time
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["rows"] = int(total)
    manifest["valid_rows"] = int(valid.sum())
    manifest["families"] = {
        fam: {"dim": dim, "dtype": store_dtype, "faiss": faiss_files[fam], "faiss_factory": factories[fam]}
        for fam, dim in families.items()
    }
    manifest["checksums"] = checksums
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def _read(part: Part, key: str) -> np.ndarray:
    """Dataset ``key`` of a part: the first ``end - start`` rows of its file."""
    with h5py.File(part.path, "r") as f:
        ds = f[key]
        if ds.shape[0] < part.end - part.start:
            raise IndexFileError(f"{part.path}: {key!r} has {ds.shape[0]} rows, expected {part.end - part.start}")
        return ds[: part.end - part.start]


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete index, or a clear error if there is none."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        if (root / BUILD_DIR).exists():
            raise IndexFileError(f"{root} is an unfinished build; rerun the build command to resume it")
        raise IndexFileError(f"{root} is not an actindex index (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise IndexFileError(f"{path}: corrupt manifest ({err.msg})") from None
    if not isinstance(manifest, dict):
        raise IndexFileError(f"{path}: corrupt manifest (expected a JSON object)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(
            f"{path}: index format {manifest.get('format_version')} is not supported (expected {FORMAT_VERSION})"
        )
    return manifest


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that escape ``root`` (untrusted manifests)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise IndexFileError(f"{root}: manifest path {relative!r} points outside the index directory")
    return path


def concat_meta(chunks: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    chunks = list(chunks)
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def append_group(
    root: str | os.PathLike,
    group: str,
    datasets: dict[str, np.ndarray],
    manifest_key: str,
    name: str,
    entry: dict[str, Any],
) -> dict[str, Any]:
    """Add (or replace) the HDF5 group ``group`` of a complete index, then list it in the manifest.

    ``datasets`` maps paths relative to ``group`` to arrays. ``vectors.h5`` is copied, the group is
    written into the copy, the copy is fsynced and renamed over the original, and only then is
    ``manifest[manifest_key][name] = entry + {"checksums": {path: sha256}}`` written atomically: a
    kill at any moment leaves either the old index or the new one, never a half-written group that
    the manifest lists. Existing datasets are untouched, so their checksums (and ``verify``) still hold.
    The copy costs one read and write of ``vectors.h5``.
    """
    root = Path(root)
    manifest = read_manifest(root)
    with write_lock(root):
        tmp = root / (VECTORS + ".tmp")
        shutil.copyfile(root / VECTORS, tmp)
        checksums: dict[str, str] = {}
        with h5py.File(tmp, "a") as f:
            if group in f:
                del f[group]
            for path, values in datasets.items():
                full = f"{group}/{path}"
                f.create_dataset(full, data=values)
                checksums[full] = dataset_checksum(np.asarray(values))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, root / VECTORS)
        _fsync_dir(root)
        entry = dict(entry, checksums=checksums)
        manifest = read_manifest(root)
        manifest.setdefault(manifest_key, {})[name] = entry
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return entry
