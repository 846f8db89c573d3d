"""The server's memory of its answers: an identical query of a behaviour answered from the behaviour cache is
answered again from memory, until that cache entry changes.

A query answered from the index's behaviour cache (no model pass) is a function of the request, the index
(read-only while served) and the cache entry's file: the memory keys an answer by the request (its JSON,
keys sorted) and remembers the entry's ``(mtime, size, inode)``. An entry rewritten (a rerank adding its query
gradient, another process) or removed (``actindex cache clear``) makes the next identical request compute
again. Answers that needed the model are not kept (the next identical request finds the behaviour cached).
A remembered answer is the original JSON object with ``seconds`` and ``timings`` of the request that reads
it (``{"memory": s}``), ``cached`` true and a note saying so.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from actindex.query.behaviors import Behavior, load_behavior
from actindex.query.cache import BehaviorCache

#: answers the server keeps by default (the oldest is forgotten first; ``actindex serve --answers N``)
ANSWERS_KEPT = 256
NOTE = "answered from the server's memory of the same request (the behaviour cache entry is unchanged)"


Stamp = tuple[int, int, int]


def file_stamp(path: Path) -> Stamp | None:
    """``(mtime, size, inode)`` of a file, ``None`` when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class AnswerMemo:
    """Answers keyed by request, each valid while its behaviour cache entry is unchanged."""

    def __init__(self, cache: BehaviorCache, kept: int = ANSWERS_KEPT):
        self.cache, self.kept = cache, kept
        self.answers: dict[str, tuple[Path, Stamp, dict[str, Any]]] = {}
        self.builtins: dict[str, Path] = {}  # a built-in behaviour's cache file, by name
        self.lock = threading.Lock()

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        """The memory's key of a request: its JSON, keys sorted."""
        return json.dumps(request, sort_keys=True)

    def entry(self, behavior: str | Behavior) -> tuple[Path, Stamp | None]:
        """The behaviour's cache file and its stamp now (``None``: not cached); read before the query runs. A
        built-in's file is found once: its key depends only on its pairs and the index, fixed while served."""
        if isinstance(behavior, str):
            if behavior not in self.builtins:
                self.builtins[behavior] = self.cache.path(self.cache.key(load_behavior(behavior)))
            path = self.builtins[behavior]
        else:
            path = self.cache.path(self.cache.key(behavior))
        return path, file_stamp(path)

    def recall(self, key: str, started: float) -> dict[str, Any] | None:
        """The remembered answer to ``key`` while its cache entry is unchanged, as a request that started at
        ``started`` (:func:`time.perf_counter`) returns it; ``None`` otherwise. Costs one ``stat``."""
        found = self.answers.get(key)
        if found is None:
            return None
        path, stamp, answer = found
        if file_stamp(path) != stamp:
            return None
        seconds = time.perf_counter() - started
        return {**answer, "seconds": seconds, "timings": {"memory": round(seconds, 4)}, "cached": True,
                "notes": [*answer["notes"], NOTE]}

    def keep(self, key: str, path: Path, stamp: Stamp | None, answer: dict[str, Any]) -> None:
        """Remember an answer given from the behaviour cache (``answer["cached"]``) whose entry had ``stamp``
        before the query ran."""
        if stamp is None or not answer.get("cached") or self.kept <= 0:
            return
        with self.lock:
            self.answers.pop(key, None)
            if len(self.answers) >= self.kept:
                self.answers.pop(next(iter(self.answers)))
            self.answers[key] = (path, stamp, answer)
