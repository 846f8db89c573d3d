"""The behaviour cache inside an index: a behaviour costs one model pass per index, not one per process.

``DIR/cache/<key>.npz`` holds, for one behaviour, what its queries formed with the model: the completed
behaviour (generated controls and persona responses included), the vectors of every family the pass gave for
its conversations, and, when a rerank formed it and it is small, the behaviour's full query gradient. A later
process asking the same behaviour loads them and pays only the search: no generation, no model pass, not even
the model's import.

The key is the sha256 of the index's identity (model weights fingerprint, tokenizer, layers, families and
their dimensions, projection, max length) and of the behaviour's own content (its pairs, or its persona spec,
before completion): an edited pairs file, another model or other layers never hit an old entry.

An entry is trusted on its content, never on its name (:meth:`BehaviorCache.check`): it is used only when it
is a regular file in a real ``cache/`` folder (no link followed, for the entry or the folder), its sha256
matches its arrays, the key recomputed from the identity and behaviour it stores equals its file name (and
the identity is this index's), and its vectors have the index's widths, finite and non-zero. Anything else is
damaged: a miss (the query forms the behaviour again and replaces the entry), reported once per process as a
:class:`~actindex.errors.CacheWarning` line, listed by ``cache list`` and ``verify``, removed by
``cache clear``. Files are written through a fresh temporary file renamed into place, so a concurrent reader
sees the old entry or the whole new one. Text (the completed behaviour, the conversations) is stored once, as
compressed UTF-8. The folder keeps to a size budget (:class:`CacheConfig`): past it, the entries used least
recently are removed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.configs import check_choices, option
from actindex.errors import ActindexError, CacheWarning, IndexFileError
from actindex.files import atomic_file
from actindex.query.behaviors import Behavior, Pair, PersonaSpec

if TYPE_CHECKING:
    from actindex.index.manifest import Manifest
    from actindex.query.context import QueryContext

CACHE_DIR = "cache"
CACHE_FORMAT = 2
#: query gradients (float64, one entry per tracked module) are cached only up to this size
MAX_GRADIENT_BYTES = 64 << 20
#: cache files a process keeps once read (:meth:`BehaviorCache.load`)
MEMO_ENTRIES = 64
#: the name of an entry: its key and ``.npz``
ENTRY_RE = re.compile(r"^[0-9a-f]{64}\.npz$")
#: what every entry's ``meta`` holds, with its JSON type
META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int, "key": str, "identity": dict, "behavior": str, "source": str,
    "families": list, "conversations": int, "gradient_key": (str, type(None)), "created_at": str, "sha256": str,
}


@dataclass
class CacheConfig:
    """How large the behaviour cache of an index may grow."""

    cache_budget_mib: int = option("MiB the index's behaviour cache (DIR/cache) may hold: past it, the entries used "
                                   "least recently are removed (0: cache nothing).", 256, minimum=0)

    def __post_init__(self) -> None:
        if not isinstance(self.cache_budget_mib, int) or isinstance(self.cache_budget_mib, bool):
            raise ActindexError(f"--cache-budget-mib must be a whole number, got {self.cache_budget_mib!r}")
        check_choices(self)

    @property
    def budget_bytes(self) -> int:
        return self.cache_budget_mib << 20


@dataclass
class CacheEntry:
    """What ``actindex cache list`` shows of one cache file: a cached behaviour, or (``problem`` set) a damaged
    entry and why."""

    key: str
    behavior: str
    source: str
    families: list[str]
    conversations: int
    gradient: bool
    bytes: int
    created_at: str
    problem: str | None = None
    #: a query of the model's own answers (``generate``): each prompt and the answer the model gave, read from
    #: the completed behaviour the entry stores (its pairs whose treatment the model wrote)
    answers: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Cached:
    """A cache hit: the completed behaviour, its conversations' vectors, its query gradient if stored (numpy
    arrays by module, float64: :attr:`QueryContext.stored_gradients`)."""

    behavior: Behavior
    vectors: dict[tuple[str, str], np.ndarray]
    gradients: dict[str, list[dict[str, np.ndarray]]]


class Damaged(Exception):
    """Why a cache file cannot be used (a miss, reported once)."""


def behavior_content(behavior: Behavior) -> dict[str, Any]:
    """What a behaviour asks, before completion: its name, pairs (and their history) and persona spec, and
    whether it is a query by example (then a pair without a treatment asks for the model's answer)."""
    persona = asdict(behavior.persona) if behavior.persona is not None else None
    pairs = [[p.prompt, p.treatment, p.control, *([p.history] if p.history else [])]
             for p in behavior.pairs if not p.control_generated]
    content = {"name": behavior.name, "pairs": pairs, "persona": persona}
    return {**content, "example": True} if behavior.example else content


def behavior_to_json(behavior: Behavior) -> str:
    return json.dumps(asdict(behavior), sort_keys=True)


def behavior_from_dict(values: dict[str, Any]) -> Behavior:
    values = dict(values)
    persona = values.pop("persona")
    if persona is not None:
        persona["instructions"] = [tuple(pair) for pair in persona["instructions"]]
        persona = PersonaSpec(**persona)
    pairs = [Pair(**p) for p in values.pop("pairs")]
    return Behavior(**values, pairs=pairs, persona=persona)


def behavior_from_json(text: str) -> Behavior:
    return behavior_from_dict(json.loads(text))


def cache_key(identity: dict[str, Any], content: dict[str, Any]) -> str:
    """sha256 of an index's identity and a behaviour's content (canonical JSON)."""
    return hashlib.sha256(json.dumps([identity, content], sort_keys=True).encode()).hexdigest()


def pack_strings(value: Any) -> dict[str, Any]:
    """``value`` (JSON data) with each distinct string stored once: ``{"strings": [...], "tree": ...}`` where, in
    the tree, a string is ``{"s": i}`` (its place in ``strings``), a dict is ``{"d": {...}}`` and a list stays a
    list. A behaviour's texts recur in its completion and its conversations; they are kept once."""
    table: dict[str, int] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return {"s": table.setdefault(x, len(table))}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {"d": {k: walk(v) for k, v in x.items()}}
        return x

    tree = walk(value)
    return {"strings": list(table), "tree": tree}


def unpack_strings(packed: dict[str, Any]) -> Any:
    """The JSON data :func:`pack_strings` packed."""
    strings = packed["strings"]

    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return strings[x["s"]] if "s" in x else {k: walk(v) for k, v in x["d"].items()}
        return x

    return walk(packed["tree"])


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def _utf8(text: str, compress: bool = False) -> np.ndarray:
    data = text.encode()
    return np.frombuffer(zlib.compress(data, 6) if compress else data, dtype=np.uint8)


def _text(values: np.ndarray, compressed: bool = False) -> str:
    if values.dtype != np.uint8 or values.ndim != 1:
        raise Damaged("text stored in another form than UTF-8 bytes")
    data = values.tobytes()
    return (zlib.decompress(data) if compressed else data).decode()


class BehaviorCache:
    """The ``cache/`` folder of one index (see the module docstring)."""

    def __init__(self, root: str | Path, manifest: Manifest, config: CacheConfig | None = None):
        self.root = Path(root)
        self.folder = self.root / CACHE_DIR
        self.config = config or CacheConfig()
        self.dims = {name: f.dim for name, f in manifest.families.items()}
        #: key -> (the file's (mtime, size, inode), its completed behaviour as JSON, its Cached): a file read once
        #: per process, read again when it changes
        self._read: dict[str, tuple[tuple[int, int, int], str, Cached]] = {}
        self._reading = threading.Lock()
        #: (file name, stamp) of the damaged entries already reported by this process
        self._reported: set[tuple[str, tuple[int, int, int]]] = set()
        self.identity = {
            "format": CACHE_FORMAT, "model": manifest.model.fingerprint, "tokenizer": manifest.model.tokenizer,
            "layers": list(manifest.layers), "families": self.dims,
            "projection": asdict(manifest.projection), "max_length": manifest.max_length,
        }

    def key(self, behavior: Behavior) -> str:
        """sha256 of the index's identity and the behaviour's content (see the module docstring)."""
        return cache_key(self.identity, behavior_content(behavior))

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    # ---- the folder, never through a link ----------------------------------------------------
    def folder_problem(self) -> str | None:
        """Why ``cache/`` cannot be used (a link, or not a folder), or ``None`` (also when there is none)."""
        try:
            st = os.lstat(self.folder)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return f"{self.folder} is a symbolic link; the behaviour cache is read and written only in a real folder"
        if not stat.S_ISDIR(st.st_mode):
            return f"{self.folder} is not a folder; the behaviour cache is not used"
        return None

    @contextmanager
    def _opened(self, name: str) -> Iterator[tuple[Any, os.stat_result]]:
        """The cache file ``name`` opened for reading, never through a link (the folder opened with
        ``O_NOFOLLOW``, the file too), with its ``fstat``; :class:`Damaged` when it is not a regular file."""
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        folder = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow)
        try:
            try:
                fd = os.open(name, os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
            except OSError as err:
                if os.path.islink(self.folder / name):
                    raise Damaged("a symbolic link, not a cache file") from None
                raise Damaged(f"cannot be opened ({err.strerror})") from None
        finally:
            os.close(folder)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Damaged("not a regular file")
            yield handle, st

    def _files(self) -> list[tuple[str, os.stat_result]]:
        """Every file in ``cache/`` named like an entry, with its ``lstat`` (``[]`` for a linked folder)."""
        if self.folder_problem() is not None or not self.folder.is_dir():
            return []
        out = []
        for name in sorted(os.listdir(self.folder)):
            if ENTRY_RE.match(name):
                try:
                    out.append((name, os.lstat(self.folder / name)))
                except FileNotFoundError:
                    continue
        return out

    # ---- reading: every entry checked ---------------------------------------------------------
    def check(self, name: str) -> tuple[Cached, dict[str, Any], os.stat_result]:
        """The entry ``name`` read and checked (see the module docstring): ``(hit, meta, stat)``, or
        :class:`Damaged` saying why it cannot be used."""
        try:
            with self._opened(name) as (handle, st), np.load(handle, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Damaged:
            raise
        except Exception as err:  # noqa: BLE001 - zip, npy or OS errors: a damaged file
            raise Damaged(f"unreadable ({type(err).__name__})") from None
        try:
            return (*self._parse(name, arrays), st)
        except Damaged:
            raise
        except Exception as err:  # noqa: BLE001 - any other inconsistency of a hostile file
            raise Damaged(f"inconsistent ({type(err).__name__}: {str(err)[:80]})") from None

    def _parse(self, name: str, arrays: dict[str, np.ndarray]) -> tuple[Cached, dict[str, Any]]:
        if "meta" not in arrays or "text" not in arrays:
            raise Damaged("not a cache entry of this release (no meta or text)")
        try:
            meta = json.loads(_text(arrays.pop("meta")))
        except (ValueError, UnicodeDecodeError):
            raise Damaged("its meta is not JSON") from None
        if not isinstance(meta, dict):
            raise Damaged("its meta is not a JSON object")
        for field_name, kind in META_FIELDS.items():
            if not isinstance(meta.get(field_name), kind) or isinstance(meta.get(field_name), bool):
                raise Damaged(f"its meta has no valid {field_name!r}")
        if meta["format"] != CACHE_FORMAT:
            raise Damaged(f"format {meta['format']} (this release writes {CACHE_FORMAT})")
        if meta["sha256"] != _digest(arrays):
            raise Damaged("its arrays do not match their sha256")
        text = unpack_strings(json.loads(_text(arrays.pop("text"), compressed=True)))
        content = text["content"]
        if cache_key(meta["identity"], content) != name[: -len(".npz")] or meta["key"] != name[:-4]:
            raise Damaged("its content belongs under another key (a renamed or swapped file)")
        if meta["identity"] != json.loads(json.dumps(self.identity)):
            raise Damaged("formed for another index (model, layers or families)")
        keys = [json.dumps(c, sort_keys=True) for c in text["conversations"]]  # conversation_key of each
        completed = behavior_from_dict(text["behavior"])
        listed = isinstance(keys, list) and all(isinstance(k, str) for k in keys)
        if not listed or len(keys) != meta["conversations"]:
            raise Damaged("its conversation list does not match its meta")
        if completed.name != meta["behavior"] or completed.name != content.get("name"):
            raise Damaged("its behaviour is not the one its key names")
        vectors: dict[tuple[str, str], np.ndarray] = {}
        gradient: dict[str, np.ndarray] = {}
        for array_name, values in arrays.items():
            kind, _, family = array_name.partition(":")
            if kind == "v":
                expected = (len(keys), self.dims.get(family))
                if values.dtype != np.float32 or values.shape != expected:
                    raise Damaged(f"family {family!r} has shape {values.shape} {values.dtype}, expected "
                                  f"{expected} float32")
                if not np.isfinite(values).all():
                    raise Damaged(f"family {family!r} holds NaN or inf")
                if (np.abs(values).max(axis=1, initial=0.0) == 0).any():
                    raise Damaged(f"family {family!r} holds a zero vector")
                values.setflags(write=False)
                vectors.update({(family, k): v for k, v in zip(keys, values)})
            elif kind == "g":
                if values.dtype != np.float64 or not np.isfinite(values).all():
                    raise Damaged(f"gradient {family!r} is not finite float64")
                gradient[family] = values
            else:
                raise Damaged(f"unexpected array {array_name!r}")
        if sorted(meta["families"]) != sorted({f for f, _ in vectors}):
            raise Damaged("its families do not match its meta")
        if bool(gradient) != (meta["gradient_key"] is not None):
            raise Damaged("its gradient does not match its meta")
        gradients = {meta["gradient_key"]: [gradient]} if gradient else {}
        return Cached(completed, vectors, gradients), meta

    def report(self, name: str, st: os.stat_result | None, problem: str) -> None:
        """Warn once per process (per file version) that a cache entry is damaged and was ignored."""
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else (0, 0, 0)
        if (name, stamp) in self._reported:
            return
        self._reported.add((name, stamp))
        warnings.warn(f"{self.folder / name}: damaged behaviour cache entry ignored ({problem}); the behaviour is "
                      f"formed again (`actindex cache clear {self.root}` removes damaged entries)", CacheWarning,
                      stacklevel=4)

    def load(self, behavior: Behavior) -> Cached | None:
        """The cached behaviour, or ``None`` (not cached, or an entry that does not check out, reported once). A
        file already read by this process and unchanged since (same mtime, size and inode) is not read again;
        the behaviour returned is a fresh copy each time, the vectors are shared (read-only)."""
        problem = self.folder_problem()
        if problem is not None:
            self.report(CACHE_DIR, None, problem)
            return None
        key = self.key(behavior)
        name = f"{key}.npz"
        try:
            st = os.lstat(self.folder / name)
        except OSError:
            return None
        try:
            found, st = self._checked(key, st)
        except Damaged as err:
            self.report(name, st, str(err))
            return None
        self._touch(name, st)
        return found

    def status(self, behavior: Behavior) -> tuple[bool, str | None]:
        """Whether a query of ``behavior`` is answered from the cache: ``(True, None)`` for an entry that checks
        out (:meth:`check`), ``(False, why)`` for a damaged entry or an unusable folder, ``(False, None)`` when
        there is none. Reads what :meth:`load` reads; marks nothing used and warns of nothing."""
        problem = self.folder_problem()
        if problem is not None:
            return False, problem
        key = self.key(behavior)
        try:
            st = os.lstat(self.folder / f"{key}.npz")
        except OSError:
            return False, None
        try:
            self._checked(key, st)
        except Damaged as err:
            return False, str(err)
        return True, None

    def _checked(self, key: str, st: os.stat_result) -> tuple[Cached, os.stat_result]:
        """The entry of ``key`` (its ``lstat``: ``st``) checked, with the stat of the file read, or
        :class:`Damaged`; from this process's memory when it was read and is unchanged since (same mtime, size and
        inode)."""
        seen = self._read.get(key)
        if seen is not None and seen[0] == (st.st_mtime_ns, st.st_size, st.st_ino) and stat.S_ISREG(st.st_mode):
            return Cached(behavior_from_json(seen[1]), seen[2].vectors, seen[2].gradients), st
        found, _, st = self.check(f"{key}.npz")
        with self._reading:
            if len(self._read) >= MEMO_ENTRIES:
                self._read.pop(next(iter(self._read)))
            self._read[key] = ((st.st_mtime_ns, st.st_size, st.st_ino), behavior_to_json(found.behavior), found)
        return Cached(copy.deepcopy(found.behavior), found.vectors, found.gradients), st

    def _touch(self, name: str, st: os.stat_result) -> None:
        """Mark an entry used now (its access time, the least-recently-used order; its mtime is kept)."""
        try:
            os.utime(self.folder / name, ns=(time.time_ns(), st.st_mtime_ns), follow_symlinks=False)
        except OSError:
            pass  # a read-only index still answers

    # ---- writing ------------------------------------------------------------------------------
    def save(self, behavior: Behavior, completed: Behavior, ctx: QueryContext,
             conversations: set[str] | None = None) -> Path | None:
        """Store what ``ctx`` formed for the conversations of the last query (``ctx.touched``, or the keys
        ``conversations`` names): every family's vectors for them, and the last behaviour gradient when it is small;
        then keep the folder within its budget. Returns the file, or ``None`` when nothing is stored (the index
        folder cannot be written, a linked ``cache/`` folder, an entry larger than the budget: the query is answered
        all the same)."""
        keys = sorted(ctx.touched if conversations is None else conversations)
        if not keys:
            return None
        touched = set(keys)
        # snapshots: a server's other threads may add cached vectors meanwhile
        families = sorted({family for family, key in list(ctx.cache) if key in touched})
        arrays: dict[str, np.ndarray] = {}
        for family in families:
            if family in self.dims and all((family, k) in ctx.cache for k in keys):
                arrays[f"v:{family}"] = np.stack([ctx.cache[(family, k)] for k in keys]).astype(np.float32)
        gradient_key = None
        for key, (gradient, *rest) in list(ctx.gradients.items()):
            size = sum(g.numel() * 8 for g in gradient.values())
            if not rest and size <= MAX_GRADIENT_BYTES:
                gradient_key = key
                arrays.update({f"g:{name}": g.double().cpu().numpy() for name, g in gradient.items()})
        content = behavior_content(behavior)
        text = {"content": content, "behavior": asdict(completed), "conversations": [json.loads(k) for k in keys]}
        arrays["text"] = _utf8(json.dumps(pack_strings(text)), compress=True)
        meta = {"format": CACHE_FORMAT, "key": cache_key(self.identity, content), "identity": self.identity,
                "behavior": completed.name, "source": completed.source,
                "families": [f for f in families if f"v:{f}" in arrays], "conversations": len(keys),
                "gradient_key": gradient_key, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        meta["sha256"] = _digest(arrays)
        arrays["meta"] = _utf8(json.dumps(meta))
        if sum(a.nbytes for a in arrays.values()) > self.config.budget_bytes:
            return None
        try:
            self.folder.mkdir(exist_ok=True)
            if self.folder_problem() is not None:
                self.report(CACHE_DIR, None, self.folder_problem() or "")
                return None
            path = self.path(meta["key"])
            with atomic_file(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
            self.evict(keep=path.name)
        except OSError:
            return None
        return path

    def evict(self, keep: str | None = None, budget: int | None = None) -> list[str]:
        """Remove the least recently used entries (links first) until the folder holds at most ``budget`` bytes
        (default: the configured budget); ``keep`` (the entry just written) stays. Returns the names removed."""
        budget = self.config.budget_bytes if budget is None else budget
        files = self._files()
        total = sum(st.st_size for _, st in files)
        removed = []
        for name, st in sorted(files, key=lambda f: (stat.S_ISREG(f[1].st_mode), f[1].st_atime_ns)):
            if total <= budget:
                break
            if name == keep:
                continue
            (self.folder / name).unlink(missing_ok=True)
            total -= st.st_size
            removed.append(name)
        return removed

    # ---- listing and clearing -----------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        """Every cache file, checked: the cached behaviours newest first, then the damaged entries."""
        healthy, damaged = [], []
        for name, st in self._files():
            try:
                found, meta, _ = self.check(name)
            except Damaged as err:
                damaged.append(CacheEntry(key=name[:-4], behavior="?", source="", families=[], conversations=0,
                                          gradient=False, bytes=st.st_size, created_at="", problem=str(err)))
                continue
            healthy.append(CacheEntry(key=name[:-4], behavior=found.behavior.name, source=meta["source"],
                                      families=list(meta["families"]), conversations=meta["conversations"],
                                      gradient=bool(found.gradients), bytes=st.st_size,
                                      created_at=meta["created_at"], answers=found.behavior.answers()))
        return sorted(healthy, key=lambda e: e.created_at, reverse=True) + damaged

    def state(self) -> str | None:
        """One line on the cache: its healthy and damaged entries and their size, or why it is not used; ``None``
        when the index has no cache folder."""
        problem = self.folder_problem()
        if problem is not None:
            return f"behaviour cache: {problem}"
        if not self.folder.is_dir():
            return None
        found = self.entries()
        bad = [e for e in found if e.problem is not None]
        size = sum(e.bytes for e in found) / (1 << 20)
        line = f"behaviour cache: {len(found) - len(bad)} healthy, {len(bad)} damaged ({size:.1f} MiB)"
        return line + (f"; `actindex cache clear {self.root}` removes the damaged" if bad else "")

    def clear(self, behavior: str | None = None) -> int:
        """Remove every cache entry, or those of ``behavior`` (its name, or a key prefix) and every damaged entry
        (:meth:`clear_counts`); returns how many cached behaviours were removed."""
        return self.clear_counts(behavior)[0]

    def clear_counts(self, behavior: str | None = None) -> tuple[int, int]:
        """Remove every cache entry, or those of ``behavior`` (its name, or a key prefix) and every damaged
        entry; returns ``(behaviours removed, damaged entries removed)``. A linked ``cache/`` folder is refused,
        never cleared through; a linked entry is removed itself, never what it points to."""
        problem = self.folder_problem()
        if problem is not None:
            raise IndexFileError(f"{problem}; not cleared")
        removed = damaged = 0
        for entry in self.entries():
            if entry.problem is not None:
                damaged += 1
            elif behavior is None or entry.behavior == behavior or entry.key.startswith(behavior):
                removed += 1
            else:
                continue
            (self.folder / f"{entry.key}.npz").unlink(missing_ok=True)
        return removed, damaged
