"""The behaviour cache inside an index: a behaviour costs one model pass per index, not one per process.

docs/design.md#cache: ``DIR/cache/<key>.npz`` holds, for one behaviour, what its queries formed with the model: the
completed behaviour (generated controls and persona responses included), the vectors of every family
the pass gave for its conversations, and, when a rerank formed it and it is small, the behaviour's
full query gradient. A later process asking the same behaviour loads them and pays only the search:
no generation, no model pass, not even the model's import.

The key is the sha256 of the index's identity (model weights fingerprint, tokenizer, layers, families
and their dimensions, projection, max length) and of the behaviour's own content (its pairs, or its
persona spec, before completion): an edited pairs file, another model or other layers never hit an
old entry. Files are written through a fresh temporary file renamed into place, so a concurrent
reader sees the old entry or the whole new one; each file carries the sha256 of its arrays and a file
that does not match (damaged, or from another version) is ignored and replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.files import atomic_file
from actindex.query.behaviors import Behavior, Pair, PersonaSpec

if TYPE_CHECKING:
    from actindex.index.manifest import Manifest
    from actindex.query.context import QueryContext

CACHE_DIR = "cache"
CACHE_FORMAT = 1
#: query gradients (float64, one entry per tracked module) are cached only up to this size
MAX_GRADIENT_BYTES = 64 << 20
#: cache files a process keeps once read (:meth:`BehaviorCache.load`)
MEMO_ENTRIES = 64


@dataclass
class CacheEntry:
    """What ``actindex cache list`` shows of one cached behaviour."""

    key: str
    behavior: str
    source: str
    families: list[str]
    conversations: int
    gradient: bool
    bytes: int
    created_at: str


@dataclass
class Cached:
    """A cache hit: the completed behaviour, its conversations' vectors, its query gradient if stored (numpy
    arrays by module, float64: :attr:`QueryContext.stored_gradients`)."""

    behavior: Behavior
    vectors: dict[tuple[str, str], np.ndarray]
    gradients: dict[str, list[dict[str, np.ndarray]]]


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


def behavior_from_json(text: str) -> Behavior:
    values = json.loads(text)
    persona = values.pop("persona")
    if persona is not None:
        persona["instructions"] = [tuple(pair) for pair in persona["instructions"]]
        persona = PersonaSpec(**persona)
    pairs = [Pair(**p) for p in values.pop("pairs")]
    return Behavior(**values, pairs=pairs, persona=persona)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


class BehaviorCache:
    """The ``cache/`` folder of one index (see the module docstring)."""

    def __init__(self, root: str | Path, manifest: Manifest):
        self.folder = Path(root) / CACHE_DIR
        #: key -> (the file's (mtime, size, inode), its completed behaviour as JSON, its Cached): a file read once
        #: per process, read again when it changes
        self._read: dict[str, tuple[tuple[int, int, int], str, Cached]] = {}
        self._reading = threading.Lock()
        self.identity = {
            "format": CACHE_FORMAT, "model": manifest.model.fingerprint, "tokenizer": manifest.model.tokenizer,
            "layers": list(manifest.layers), "families": {name: f.dim for name, f in manifest.families.items()},
            "projection": asdict(manifest.projection), "max_length": manifest.max_length,
        }

    def key(self, behavior: Behavior) -> str:
        """sha256 of the index's identity and the behaviour's content (see the module docstring)."""
        payload = json.dumps([self.identity, behavior_content(behavior)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, behavior: Behavior) -> Cached | None:
        """The cached behaviour, or ``None`` (not cached, or a file that does not check out). A file already read
        by this process and unchanged since (same mtime, size and inode) is not read again; the behaviour
        returned is a fresh copy each time, the vectors are shared (read-only)."""
        key = self.key(behavior)
        path = self.path(key)
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        seen = self._read.get(key)
        if seen is not None and seen[0] == stamp:
            return Cached(behavior_from_json(seen[1]), seen[2].vectors, seen[2].gradients)
        found = self._read_file(path)
        if found is not None:
            with self._reading:
                if len(self._read) >= MEMO_ENTRIES:
                    self._read.pop(next(iter(self._read)))
                self._read[key] = (stamp, behavior_to_json(found.behavior), found)
            return Cached(copy.deepcopy(found.behavior), found.vectors, found.gradients)
        return None

    def _read_file(self, path: Path) -> Cached | None:
        """One cache file read and checked against its digest (``None`` when it does not check out)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception:  # noqa: BLE001 - a damaged file (zip, npy or OS errors) is a miss, not an error
            return None
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != CACHE_FORMAT or meta.get("sha256") != _digest(arrays):
            return None
        keys = json.loads(str(arrays.pop("keys")))
        completed = behavior_from_json(str(arrays.pop("behavior")))
        vectors: dict[tuple[str, str], np.ndarray] = {}
        gradient: dict[str, Any] = {}
        for name, values in arrays.items():
            kind, _, family = name.partition(":")
            if kind == "v":
                vectors.update({(family, k): v for k, v in zip(keys, values)})
            elif kind == "g":
                gradient[family] = values
        gradients = {meta["gradient_key"]: [gradient]} if gradient else {}
        return Cached(completed, vectors, gradients)

    def save(self, behavior: Behavior, completed: Behavior, ctx: QueryContext) -> Path | None:
        """Store what ``ctx`` formed for the conversations of the last query (``ctx.touched``): every family's
        vectors for them, and the last behaviour gradient when it is small. Returns the file, or ``None``
        when the index folder cannot be written (a read-only index still answers queries)."""
        keys = sorted(ctx.touched)
        if not keys:
            return None
        touched = set(keys)
        # snapshots: a server's other threads may add cached vectors meanwhile
        families = sorted({family for family, key in list(ctx.cache) if key in touched})
        arrays: dict[str, np.ndarray] = {}
        for family in families:
            if all((family, k) in ctx.cache for k in keys):
                arrays[f"v:{family}"] = np.stack([ctx.cache[(family, k)] for k in keys]).astype(np.float32)
        gradient_key = None
        for key, (gradient, *rest) in list(ctx.gradients.items()):
            size = sum(g.numel() * 8 for g in gradient.values())
            if not rest and size <= MAX_GRADIENT_BYTES:
                gradient_key = key
                arrays.update({f"g:{name}": g.double().cpu().numpy() for name, g in gradient.items()})
        arrays["keys"] = np.array(json.dumps(keys))
        arrays["behavior"] = np.array(behavior_to_json(completed))
        meta = {"format": CACHE_FORMAT, "behavior": completed.name, "source": completed.source,
                "families": [f for f in families if f"v:{f}" in arrays], "conversations": len(keys),
                "gradient_key": gradient_key, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "identity": self.identity}
        meta["sha256"] = _digest(arrays)
        arrays["meta"] = np.array(json.dumps(meta))
        try:
            self.folder.mkdir(exist_ok=True)
            path = self.path(self.key(behavior))
            with atomic_file(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        except OSError:
            return None
        return path

    def entries(self) -> list[CacheEntry]:
        """Every cached behaviour, newest first."""
        out = []
        for path in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
            try:
                with np.load(path, allow_pickle=False) as data:
                    meta = json.loads(str(data["meta"]))
            except Exception:  # noqa: BLE001 - a damaged file is listed as nothing
                continue
            out.append(CacheEntry(key=path.stem, behavior=meta["behavior"], source=meta.get("source", ""),
                                  families=meta["families"], conversations=meta["conversations"],
                                  gradient=meta.get("gradient_key") is not None, bytes=path.stat().st_size,
                                  created_at=meta["created_at"]))
        return sorted(out, key=lambda e: e.created_at, reverse=True)

    def clear(self, behavior: str | None = None) -> int:
        """Remove every cached behaviour (or those named ``behavior``); returns how many were removed."""
        removed = 0
        for entry in self.entries():
            if behavior is None or entry.behavior == behavior or entry.key.startswith(behavior):
                self.path(entry.key).unlink(missing_ok=True)
                removed += 1
        return removed
