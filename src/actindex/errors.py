"""Errors that users see as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class ActindexError(Exception):
    """Base class: a problem the user can fix, reported as one line."""


class DataError(ActindexError):
    """A training or behaviour file is malformed.

    The message names the file, the 1-based line and the field: ``data.jsonl:3: field 'messages': ...``.
    """

    def __init__(self, path: object, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        parts = [self.path if line is None else f"{self.path}:{line}"]
        if field:
            parts.append(f"field '{field}'")
        parts.append(problem)
        super().__init__(": ".join(parts))


class IndexFileError(ActindexError):
    """An index directory is missing, incomplete, locked, corrupt or incompatible."""


class ModelError(ActindexError):
    """A model cannot be loaded or lacks something a command needs."""


class ActindexWarning(UserWarning):
    """Something the user should know about a result that is still returned (the CLI prints one
    ``warning:`` line on stderr)."""


class MemorisationWarning(ActindexWarning):
    """The index's model has memorised its rows: rankings by their gradients are unreliable
    (:mod:`actindex.index.memorisation`)."""


class OutputError(ActindexError):
    """An output path a command may not write (:mod:`actindex.outputs`): it exists without ``--overwrite``, is
    not a regular file, lies inside an index, is one of the command's inputs, or its directory is unusable."""


class CacheWarning(ActindexWarning):
    """A behaviour cache entry is damaged (or its folder is a link) and was ignored: the behaviour is formed
    again (:mod:`actindex.query.cache`)."""
