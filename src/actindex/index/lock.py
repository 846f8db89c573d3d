"""The write lock of an index directory, and the rule that nothing is written through a link.

``DIR/.lock`` holds ``<pid>@<host>`` of the process writing the index. It is created whole (written to a
fresh file, then hard-linked into place), so it never exists empty; a lock that is a link is refused and
never read; a lock whose process is gone (same host), or that names no process, is stale and taken over.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from actindex.errors import IndexFileError
from actindex.files import disk_full_error, fresh_temp, is_disk_full

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: what a lock holds: ``<pid>@<host>``
LOCK_OWNER = re.compile(r"^(\d{1,10})@([A-Za-z0-9._-]{1,255})$")


def _place_lock(lock: Path, owner: str) -> bool:
    """Create ``lock`` holding ``owner`` whole, or return False if something is already at that path (a
    link too: it is never followed). The owner is written to a fresh file first, then hard-linked into
    place, so a lock never exists empty (a full disk fails before the lock appears)."""
    tmp = fresh_temp(lock)
    try:
        tmp.write_text(owner)
        try:
            os.link(tmp, lock)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: O_EXCL does not follow links either
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(owner)
        return True
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(lock) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> str | None:
    """The ``pid@host`` a lock file holds, or ``None`` when it holds anything else (it is never printed:
    only a lock actindex wrote is read back). A link or a non-file in its place is refused."""
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise IndexFileError(
            f"{lock} is a link or a directory, not a lock actindex wrote; remove it if no build is running"
        )
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(300)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if LOCK_OWNER.match(text) else None


@contextmanager
def write_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for the duration; refuse if another live process holds it.

    A lock whose process is gone (same host), or that holds no owner at all (left by a crash of an
    older release), is stale and taken over."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise IndexFileError(f"{root} is a file, not an index directory; choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        if _place_lock(lock, me):
            break
        owner = _lock_owner(lock)
        if owner is None:
            lock.unlink(missing_ok=True)  # no owner: never written whole by this release
            continue
        pid, _, host = owner.partition("@")
        if host == socket.gethostname() and not _pid_alive(int(pid)):
            lock.unlink(missing_ok=True)  # stale: its writer died
            continue
        raise IndexFileError(
            f"{root}: another build (process {owner}) is writing this index; "
            f"wait for it, or delete {lock} if that process is gone"
        )
    else:
        raise IndexFileError(f"{root}: could not take the lock {lock}; is another build starting?")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def own_dir(path: Path) -> Path:
    """``path`` as a real directory inside the index (created if missing); a link or a file in its place
    is refused, so nothing is ever written through it to somewhere else."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise IndexFileError(f"{path} is a link or a file where actindex keeps a directory; remove it")
    path.mkdir(parents=True, exist_ok=True)
    return path
