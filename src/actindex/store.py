"""Stage 5 — store: the index directory on disk (DESIGN section 7).

Layout of a complete index::

    DIR/manifest.json        written last and atomically; its presence means "complete"
    DIR/vectors.h5           per-row metadata datasets and one dataset per vector family
    DIR/faiss/<family>.faiss one FAISS index per searchable family (ids = row numbers)

While a build runs, committed rows live in ``DIR/.build/parts/part-<start>-<end>.h5``; each
part is written to a temporary name and renamed, so after a ``kill -9`` at any moment the
directory holds only whole parts. A resumed build continues after the last whole part and the
final index has exactly the rows of an uninterrupted build. ``DIR/.lock`` refuses a second writer.
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


def dataset_checksum(values: np.ndarray) -> str:
    """sha256 of a dataset's values (strings as UTF-8, NUL-separated)."""
    digest = hashlib.sha256()
    if values.dtype.kind in "OSU":
        for v in values:
            digest.update((v.decode() if isinstance(v, bytes) else str(v)).encode() + b"\0")
    else:
        digest.update(np.ascontiguousarray(values).tobytes())
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


@dataclass
class Part:
    start: int
    end: int
    path: Path


class IndexWriter:
    """Writes an index directory part by part and finalises it atomically.

    ``state`` describes the build (model fingerprint, data checksum, layers, families...): a
    resumed build must present the same state, otherwise it is refused.
    """

    def __init__(self, root: str | os.PathLike, state: dict[str, Any], overwrite: bool = False):
        self.root = Path(root)
        self.state = state
        self.build_dir = self.root / BUILD_DIR
        self.parts_dir = self.build_dir / "parts"
        if (self.root / MANIFEST).exists() and not overwrite:
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
        for name in (MANIFEST, VECTORS, FAISS_DIR, BUILD_DIR):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def parts(self) -> list[Part]:
        """Whole parts on disk, in row order."""
        found = []
        for path in self.parts_dir.iterdir():
            m = PART_RE.match(path.name)
            if m:
                found.append(Part(int(m.group(1)), int(m.group(2)), path))
        return sorted(found, key=lambda p: p.start)

    def rows_done(self) -> int:
        """Number of leading rows already committed (parts must be contiguous from row 0)."""
        done = 0
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
        self, manifest: dict[str, Any], families: dict[str, int], store_dtype: str, faiss_factory: str
    ) -> dict[str, Any]:
        """Merge parts into ``vectors.h5``, build the FAISS files, then write the manifest last."""
        from .search import build_faiss_index, write_faiss_index

        parts = self.parts()
        total = self.rows_done()
        tmp = self.root / (VECTORS + ".tmp")
        checksums: dict[str, str] = {}
        with h5py.File(tmp, "w") as out:
            for key, dtype in META_FIELDS.items():
                values = np.concatenate([_read(p.path, key) for p in parts]) if parts else np.zeros(0, dtype)
                out.create_dataset(key, data=np.asarray(values, dtype=dtype))
                checksums[key] = dataset_checksum(out[key][()])
            for family, dim in families.items():
                ds = out.create_dataset(
                    f"vectors/{family}", shape=(total, dim), dtype=store_dtype, chunks=(min(max(total, 1), 1024), dim)
                )
                for part in parts:
                    ds[part.start : part.end] = _read(part.path, f"vectors/{family}").astype(store_dtype)
                checksums[f"vectors/{family}"] = dataset_checksum(ds[()])
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / VECTORS)

        faiss_dir = self.root / FAISS_DIR
        faiss_dir.mkdir(exist_ok=True)
        with h5py.File(self.root / VECTORS, "r") as f:
            valid = f["valid"][()]
            rows = np.flatnonzero(valid)
            faiss_files = {}
            for family in families:
                vectors = f[f"vectors/{family}"][()].astype(np.float32)[rows]
                index = build_faiss_index(vectors, rows, faiss_factory)
                faiss_files[family] = f"{FAISS_DIR}/{family_file(family)}"
                write_faiss_index(index, self.root / faiss_files[family])
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["rows"] = int(total)
        manifest["valid_rows"] = int(valid.sum())
        manifest["families"] = {
            fam: {"dim": dim, "dtype": store_dtype, "faiss": faiss_files[fam], "faiss_factory": faiss_factory}
            for fam, dim in families.items()
        }
        manifest["checksums"] = checksums
        manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        shutil.rmtree(self.build_dir, ignore_errors=True)
        return manifest


def _read(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[key][()]


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
