"""The output rule: what a command may write to, checked in one place before any work.

Every file or directory a command writes that the user names (``build``/``merge``/``correct`` ``--out``
directories; ``report``, ``export``, ``filter``, ``detect`` ``--out`` files and the filter's
``OUT.removed.jsonl``; ``query --save-query``) is checked by :func:`check_output` before the command loads a
model or reads a row:

* an existing path is replaced only with ``--overwrite``, and only a regular file (a file output) or a directory
  this command wrote before (a directory output: ``ours`` says how it recognises one, e.g. an index's
  manifest); never a device, FIFO, socket or link to one, never a directory for a file output, never an
  unrelated non-empty directory;
* never a path inside an index (the one being read or any other: an index directory is recognised by its
  manifest, ``vectors.h5`` or unfinished build, up the parent chain), and never an input of the same command
  (its training data, behaviour, queries or model files, compared by resolved path and by inode), even with
  ``--overwrite``;
* the parent must be a writable directory (a missing parent is created only by the commands that create it),
  and the name short enough for the temporary file written beside it.

Each refusal is one :class:`~actindex.errors.OutputError` line naming the option and the path (the CLI exits
with status 2). Stale temporary files a killed writer of the same target left beside it are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from actindex.errors import OutputError
from actindex.index.manifest import BUILD_DIR, MANIFEST, VECTORS

if TYPE_CHECKING:
    from actindex.api import Index
    from actindex.index.manifest import Manifest
    from actindex.index.reader import IndexReader

#: characters the temporary file beside a target adds to its name (``.NAME.xxxxxxxx.tmp``, see
#: :func:`actindex.files.fresh_temp`)
TEMP_EXTRA = len(".") + len(".xxxxxxxx.tmp")
#: a file name's limit in bytes where the filesystem does not say
NAME_MAX = 255

#: an input of a command: its path and what it is (``the training data file``)
Input = tuple[str | os.PathLike, str]


def is_index_dir(path: Path) -> bool:
    """Whether ``path`` is an actindex index directory: it holds ``vectors.h5``, an unfinished build, or a
    manifest that names an index format."""
    if (path / VECTORS).is_file() or (path / BUILD_DIR).is_dir():
        return True
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        with open(manifest, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False
    return b'"format_version"' in head or b'"families"' in head


def index_holding(path: Path) -> Path | None:
    """The index directory ``path`` lies inside (the nearest ancestor that :func:`is_index_dir`), or ``None``."""
    for parent in Path(os.path.abspath(path)).resolve().parents:
        if is_index_dir(parent):
            return parent
    return None


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool | None,
    inputs: Iterable[Input] = (),
    option: str = "--out",
    directory: bool = False,
    ours: Callable[[Path], bool] | None = None,
    make_parent: bool = True,
    overwrite_flag: str = "--overwrite",
    what: str = "",
) -> Path:
    """Check ``path`` against the output rule (see the module docstring) and return it; raise one
    :class:`OutputError` line otherwise.

    ``inputs``: the command's inputs as ``(path, what)``. ``directory``: the output is a directory, and ``ours``
    tells whether an existing non-empty one was written by this command (it may then be replaced with
    ``overwrite``; ``overwrite=None`` leaves an existing one of its own to the caller: a build resumes or
    appends). ``make_parent``: the command creates a missing parent directory (else a missing parent is refused).
    ``what``: what the output is, for messages (default ``a file`` or ``a directory``).
    """
    path = Path(path)
    where = f"{option} {path}"
    if not str(path) or not path.name:
        raise OutputError(f"{option}: expected a {'directory' if directory else 'file'} name, got {str(path)!r}")
    _check_name(path, where)
    _check_parent(path, where, make_parent)
    index = index_holding(path)
    if index is not None:
        raise OutputError(f"{where} is inside the index {index}; write it outside every index directory")
    _check_not_an_input(path, where, inputs, directory)
    if directory:
        _check_directory(path, where, overwrite, ours, overwrite_flag, what or "a directory")
    else:
        _check_file(path, where, overwrite, overwrite_flag)
    remove_stale_temporaries(path)
    return path


def check_outputs(paths: Sequence[tuple[Path, str]], what: str = "output") -> None:
    """Refuse two outputs of one run that name one file (``(path, what writes it)`` each): the second would
    replace the first."""
    seen: dict[str, str] = {}
    for path, writer in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise OutputError(f"{path}: both {seen[key]} and {writer} would write this {what}; give them one at a "
                              "time")
        seen[key] = writer


def remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary files (or staging directories) that a killed writer of ``target`` left beside it
    (``.NAME.xxxxxxxx.tmp``, :func:`actindex.files.fresh_temp`); links are removed, never followed."""
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return
    pattern = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.tmp")
    for entry in os.scandir(parent):
        if not pattern.fullmatch(entry.name):
            continue
        stale = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# ---- the checks ------------------------------------------------------------------------------


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if os.path.lexists(parent):
            return parent
    return Path(".")


def _check_name(path: Path, where: str) -> None:
    limit = _name_max(_nearest_existing(Path(os.path.abspath(path))))
    for part in Path(os.path.abspath(path)).parts[1:]:
        size = len(os.fsencode(part))
        extra = TEMP_EXTRA if part == path.name else 0
        if size + extra > limit:
            raise OutputError(f"{where}: the name {part[:40]}... is too long ({size} bytes; at most {limit - extra} "
                              "here); choose a shorter one")


def _check_parent(path: Path, where: str, make_parent: bool) -> None:
    absolute = Path(os.path.abspath(path))
    existing = _nearest_existing(absolute)
    if not existing.is_dir():
        raise OutputError(f"{where}: {existing} is not a directory; choose a path under a directory")
    if existing != absolute.parent and not make_parent:
        raise OutputError(f"{where}: the directory {absolute.parent} does not exist; create it first")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{where}: the directory {existing} is not writable")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def _check_not_an_input(path: Path, where: str, inputs: Iterable[Input], directory: bool) -> None:
    resolved = Path(os.path.abspath(path)).resolve()
    for source, what in inputs:
        source = Path(source)
        source_resolved = Path(os.path.abspath(source)).resolve()
        if _same(path, source):
            raise OutputError(f"{where} is {what} itself; write to another path")
        if source_resolved.is_dir() and resolved.is_relative_to(source_resolved):
            raise OutputError(f"{where} is inside {what} {source}; write it elsewhere")
        if directory and source_resolved.is_relative_to(resolved):
            raise OutputError(f"{where} holds {what} {source}; write to another directory")


def _kind(mode: int) -> str | None:
    """What a file that is neither a regular file nor a directory is, for a message."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def _check_file(path: Path, where: str, overwrite: bool | None, overwrite_flag: str) -> None:
    if not os.path.lexists(path):
        return
    try:
        mode = os.stat(path).st_mode  # through a link: what it points to decides
    except OSError:
        mode = os.lstat(path).st_mode  # a dangling link: replaced like a file
    if stat.S_ISDIR(mode):
        raise OutputError(f"{where} is a directory; name a file to write")
    kind = _kind(mode)
    if kind is not None:
        raise OutputError(f"{where} is {kind}, not a regular file; actindex replaces only regular files")
    if not overwrite:
        raise OutputError(f"{where} exists; pass {overwrite_flag} to replace it")


def _check_directory(path: Path, where: str, overwrite: bool | None, ours: Callable[[Path], bool] | None,
                     overwrite_flag: str, what: str) -> None:
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        kind = "a link" if path.is_symlink() else _kind(os.stat(path).st_mode) or "a file"
        raise OutputError(f"{where} is {kind}, not {what}; choose another path")
    if not any(path.iterdir()):
        return
    if ours is None or not ours(path):
        raise OutputError(f"{where} exists and is not empty, and actindex did not write it; choose another path "
                          "(actindex replaces only a directory it wrote)")
    if overwrite is False:
        raise OutputError(f"{where} exists and is not empty; pass {overwrite_flag} to replace it")


def data_inputs(manifest: Manifest) -> list[Input]:
    """The training data files an index was built from, as inputs of a command over it."""
    return [(entry.path, "the training data file") for entry in manifest.data]


def index_inputs(index: Index | IndexReader, behavior: object = None) -> list[Input]:
    """The inputs of a command that reads ``index`` (for ``behavior``): the index, its training data files, its
    model when that is a local directory, and the behaviour's file when it names one."""
    inputs: list[Input] = [(index.root, "the index"), *data_inputs(index.manifest)]
    if os.path.isdir(index.manifest.model.name):
        inputs.append((index.manifest.model.name, "the index's model"))
    if isinstance(behavior, (str, os.PathLike)) and os.path.lexists(behavior):
        inputs.append((behavior, "the behaviour file"))
    return inputs
