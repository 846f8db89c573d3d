"""Safe writes: fresh temporary files renamed into place, a full disk reported in one line.

Every file actindex writes (index files, filtered data, detection output) is first written to a
temporary file created fresh beside its target (``O_EXCL``, a random name: never an existing path,
never through a planted link) and renamed over the target when whole, so readers see the old file or
the new one and a crash leaves at most a temporary file that the next writer removes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from actindex.errors import IndexFileError


def fresh_temp(target: Path, directory: bool = False) -> Path:
    """A new empty temporary file (or directory) beside ``target``, ``.<name>.<random>.tmp``, created with
    ``O_EXCL`` under a name that did not exist: never an existing path, never through a link."""
    target = Path(target)
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def is_disk_full(err: BaseException) -> bool:
    """Whether an error says the disk (or the user's quota) is full; HDF5 reports it in its message only."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


def disk_full_error(target: Path) -> IndexFileError:
    return IndexFileError(
        f"{target}: the disk is full (no space left on device); free some space and rerun the same command "
        "(a build resumes from its last committed part)"
    )


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target`` to write; on success it is fsynced and renamed over
    ``target`` (readers see the old file or the whole new one), on any failure it is removed. A full
    disk becomes one :class:`IndexFileError` line."""
    target = Path(target)
    tmp = fresh_temp(target)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(target) from None
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the whole new file."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync_file(path: Path) -> None:
    if path.is_dir():
        return
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: what every write keeps free beyond its own estimate (HDF5 and FAISS overheads, the filesystem's)
SPACE_MARGIN = 16 << 20


def ensure_space(path: Path, needed: int, what: str) -> None:
    """Refuse, in one line, to start writing ``needed`` bytes under ``path`` when its disk has less free
    (plus :data:`SPACE_MARGIN`): a write that runs out of space half-way can crash inside HDF5."""
    free = shutil.disk_usage(path).free
    if free < needed + SPACE_MARGIN:
        raise IndexFileError(
            f"{path}: not enough disk space to {what} (needs about {_mib(needed + SPACE_MARGIN)}, "
            f"{_mib(free)} free); free some space and rerun the same command (a build resumes from its last "
            "committed part)"
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def bytes_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that escape ``root`` (untrusted manifests)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise IndexFileError(f"{root}: manifest path {relative!r} points outside the index directory")
    return path


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh empty directory beside ``target`` to fill; on success it replaces ``target`` (a link or a
    file there is removed, never followed; a directory there is deleted), on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = fresh_temp(target, directory=True)
    try:
        yield staging
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
