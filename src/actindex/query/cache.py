"""The behaviour cache inside an index: a behaviour costs one model pass per index, not one per process.

DESIGN 7: ``DIR/cache/<key>.npz`` holds, for one behaviour, what its queries formed with the model: the
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

import hashlib
import json
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
    """A cache hit: the completed behaviour, its conversations' vectors, its query gradient if stored."""

    behavior: Behavior
    vectors: dict[tuple[str, str], np.ndarray]
    gradients: dict[str, list[dict[str, Any]]]


def behavior_content(behavior: Behavior) -> dict[str, Any]:
    """What a behaviour asks, before completion: its name, pairs and persona spec."""
    persona = asdict(behavior.persona) if behavior.persona is not None else None
    pairs = [[p.prompt, p.treatment, p.control] for p in behavior.pairs if not p.control_generated]
    return {"name": behavior.name, "pairs": pairs, "persona": persona}


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
        """The cached behaviour, or ``None`` (not cached, or a file that does not check out)."""
        path = self.path(self.key(behavior))
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
                import torch

                gradient[family] = torch.from_numpy(values)
        gradients = {meta["gradient_key"]: [gradient]} if gradient else {}
        return Cached(completed, vectors, gradients)

    def save(self, behavior: Behavior, completed: Behavior, ctx: QueryContext) -> Path | None:
        """Store what ``ctx`` formed for the conversations of the last query (``ctx.touched``): every family's
        vectors for them, and the last behaviour gradient when it is small. Returns the file, or ``None``
        when the index folder cannot be written (a read-only index still answers queries)."""
        keys = sorted(ctx.touched)
        if not keys:
            return None
        families = sorted({family for family, key in ctx.cache if key in ctx.touched})
        arrays: dict[str, np.ndarray] = {}
        for family in families:
            if all((family, k) in ctx.cache for k in keys):
                arrays[f"v:{family}"] = np.stack([ctx.cache[(family, k)] for k in keys]).astype(np.float32)
        gradient_key = None
        for key, (gradient, *rest) in ctx.gradients.items():
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
