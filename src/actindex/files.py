"""Safe writes: fresh temporary files renamed into place, a full disk reported in one line.

Every file actindex writes (index files, filtered data, detection output) is first written to a
temporary file created fresh beside its target (``O_EXCL``, a random name: never an existing path,
never through a planted link) and renamed over the target when whole, so readers see the old file or
the new one and a crash leaves at most a temporary file that the next writer removes. A written file gets
the mode the umask gives a new file (``0o644`` under umask ``022``), as ``open()`` would.

Every rename and fsync of a write goes through :func:`replace` and :func:`fsync_file`/:func:`fsync_dir`: they are
the commit points of every mutation. Each passes :func:`boundary` first, where a test injects a crash (a
:data:`boundary_hook`, or ``ACTINDEX_CRASH_AT=N`` to ``kill -9`` the process at the N-th boundary) to check
that a mutation interrupted there leaves the old index or the new one.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from actindex.errors import IndexFileError

#: called as ``boundary_hook(event, path)`` before every rename and fsync of a write (tests inject crashes here)
boundary_hook: Callable[[str, Path], None] | None = None
#: boundaries passed by this process (``ACTINDEX_CRASH_AT=N`` kills it with SIGKILL at the N-th)
_passed = 0


def boundary(event: str, path: Path) -> None:
    """A commit point of a write (``event``: ``replace``, ``fsync`` or ``fsync-dir``, on ``path``): a test's
    crash lands here (see the module docstring)."""
    global _passed
    _passed += 1
    if boundary_hook is not None:
        boundary_hook(event, Path(path))
    crash_at = os.environ.get("ACTINDEX_CRASH_AT")
    if crash_at and crash_at.isdigit() and _passed == int(crash_at):
        os.kill(os.getpid(), signal.SIGKILL)


def replace(source: Path, target: Path) -> None:
    """``os.replace``, as a commit point (:func:`boundary`)."""
    boundary("replace", Path(target))
    os.replace(source, target)


def current_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` where it is shown (setting it to read it back would
    leave it 0 for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` (``0o666``) or ``mkdir()`` (``0o777``) gives a new file under the process's umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def fresh_temp(target: Path, directory: bool = False) -> Path:
    """A new empty temporary file (or directory) beside ``target``, ``.<name>.<random>.tmp``, created with
    ``O_EXCL`` under a name that did not exist: never an existing path, never through a link. Its mode is what
    the umask gives a new file (``mkstemp`` alone would give ``0o600``)."""
    target = Path(target)
    if directory:
        path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        os.chmod(path, umask_mode(directory=True))
        return path
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, umask_mode())
    finally:
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
        replace(tmp, target)
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
    """Flush a written file's bytes to the disk (a commit point, :func:`boundary`)."""
    path = Path(path)
    if path.is_dir():
        return
    boundary("fsync", path)
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename in it) to the disk (a commit point, :func:`boundary`)."""
    boundary("fsync-dir", Path(path))
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


def inside(root: Path, relative: str, source: str = "manifest", what: str = "index directory") -> Path:
    """``root / relative`` resolved (links followed), refusing a path that ends outside ``root``: an absolute
    path, ``..``, or a link out (a path read from an untrusted ``source`` file, a manifest or a checkpoint list)."""
    root = Path(root)
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise IndexFileError(f"{root}: {source} path {relative!r} points outside the {what}")
    return path


#: ``renameat2(2)``'s flag that swaps two paths in one step (Linux 3.15+)
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (``renameat2`` with ``RENAME_EXCHANGE``), a commit
    point (:func:`boundary`); ``False`` where the system cannot (then nothing moved)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    boundary("replace", Path(b))
    at_cwd = -100  # AT_FDCWD
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh empty directory beside ``target`` to fill; on success its files are fsynced and it replaces
    ``target`` (a link or a file there is removed, never followed; a directory there is swapped out in one
    atomic step where the system can, then deleted), on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = fresh_temp(target, directory=True)
    try:
        yield staging
        for path, _, names in os.walk(staging):
            for name in names:
                fsync_file(Path(path) / name)
        if target.is_symlink() or target.is_file():
            target.unlink()
        if target.is_dir() and exchange(staging, target):
            pass  # the old directory is now at ``staging``, removed below
        else:
            if target.exists():
                shutil.rmtree(target)
            replace(staging, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
