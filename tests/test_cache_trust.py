"""The behaviour cache trusts an entry on its content, never on its name or place.

Every damage of the cache (table :data:`DAMAGES`) meets every command that reads it (table :data:`READERS`):
a query (CLI, Python, live HTTP server) answers exactly what a query without the cache answers, with one
warning line; ``cache list`` and ``verify`` name the damaged entries; ``cache clear`` removes them and keeps
the healthy entry of another behaviour; a linked ``cache/`` folder is refused in one line. No case writes,
reads as an entry, or deletes a file outside the index, and none shows a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, live, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.models import load_model, save_weights
from actindex.errors import CacheWarning
from actindex.query.behaviors import load_behavior
from actindex.query.cache import BehaviorCache, CacheConfig
from actindex.serve.app import create_app
from actindex.serve.config import ServeConfig

PAIRS_A = [{"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"}]
PAIRS_B = [{"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer) -> dict[str, Any]:
    """An index whose cache holds behaviours ``a`` and ``b``, their answers without the cache, and the model."""
    root = tmp_path_factory.mktemp("trust")
    save_weights(tiny_llama(), tokenizer, root / "model")
    lm = load_model(str(root / "model"))
    data = write_jsonl(root / "train.jsonl", chat_rows(12))
    actindex.build(data=str(data), out=str(root / "idx"), layers=[1, 2], model=lm, progress=False)
    files = {name: write_jsonl(root / f"{name}.jsonl", pairs) for name, pairs in (("a", PAIRS_A), ("b", PAIRS_B))}
    fresh = actindex.Index.open(root / "idx", cache=False).use_model(lm)
    expected = {name: answer(fresh.query(str(path), k=5)) for name, path in files.items()}
    idx = actindex.Index.open(root / "idx").use_model(lm)
    for path in files.values():
        idx.query(str(path), k=5)
    cache = BehaviorCache(root / "idx", idx.manifest)
    keys = {name: cache.key(load_behavior(str(path))) for name, path in files.items()}
    assert sorted(p.stem for p in (root / "idx" / "cache").iterdir()) == sorted(keys.values())
    return {"root": root, "lm": lm, "files": files, "expected": expected, "keys": keys}


def answer(result: Any) -> list[tuple[int, float]]:
    hits = result["top"] if isinstance(result, dict) else [h.__dict__ for h in result.top]
    return [(h["row"], round(h["score"], 5)) for h in hits]


# ---- the damages ----------------------------------------------------------------------------------
def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def rewrite(path: Path, meta_change: Callable[[dict], Any] | None = None,
            vector_change: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """Rewrite an entry as a hostile writer would: consistent sha256, a changed meta or changed vectors."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    if vector_change is not None:
        name = next(k for k in arrays if k.startswith("v:"))
        arrays[name] = vector_change(arrays[name]).astype(np.float32)
    meta["sha256"] = digest(arrays)
    meta = meta_change(meta) if meta_change is not None else meta
    text = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    arrays["meta"] = np.frombuffer(text, dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def swap(a: Path, b: Path) -> None:
    tmp = a.with_suffix(".swap")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def link_entry(a: Path, outside: Path) -> None:
    shutil.copy(a, outside / "planted.npz")  # a whole, valid entry: only its place is wrong
    a.unlink()
    a.symlink_to(outside / "planted.npz")


def link_folder(cache: Path, outside: Path) -> None:
    for p in cache.iterdir():
        shutil.move(str(p), outside / p.name)
    cache.rmdir()
    cache.symlink_to(outside, target_is_directory=True)


def truncate(a: Path) -> None:
    a.write_bytes(a.read_bytes()[: a.stat().st_size // 2])


def drop(field: str) -> Callable[[dict], dict]:
    return lambda meta: {k: v for k, v in meta.items() if k != field}


def with_zero(v: np.ndarray) -> np.ndarray:
    v = v.copy()
    v[0] = 0
    return v


def with_nan(v: np.ndarray) -> np.ndarray:
    v = v.copy()
    v[0, 0] = np.nan
    return v


#: name -> (what it does to the cache, given (entry a, entry b, cache folder, a folder outside the index);
#: which behaviours' entries it damages)
DAMAGES: dict[str, tuple[Callable[[Path, Path, Path, Path], None], set[str]]] = {
    "none": (lambda a, b, c, o: None, set()),
    "swapped files": (lambda a, b, c, o: swap(a, b), {"a", "b"}),
    "symlink entry": (lambda a, b, c, o: link_entry(a, o), {"a"}),
    "symlinked cache dir": (lambda a, b, c, o: link_folder(c, o), {"a", "b"}),
    "meta not JSON": (lambda a, b, c, o: rewrite(a, lambda m: b"{not json"), {"a"}),
    "meta a list": (lambda a, b, c, o: rewrite(a, lambda m: [m]), {"a"}),
    "missing fields": (lambda a, b, c, o: rewrite(a, drop("families")), {"a"}),
    "wrong width": (lambda a, b, c, o: rewrite(a, vector_change=lambda v: np.hstack([v, v[:, :1]])), {"a"}),
    "NaN vectors": (lambda a, b, c, o: rewrite(a, vector_change=with_nan), {"a"}),
    "zero vectors": (lambda a, b, c, o: rewrite(a, vector_change=with_zero), {"a"}),
    "truncated file": (lambda a, b, c, o: truncate(a), {"a"}),
}


# ---- the readers ----------------------------------------------------------------------------------
def cli(*args: str) -> Any:
    return CliRunner().invoke(main, [*args])


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def query_cli(world, idx: Path, damaged: set[str], linked: bool) -> None:
    res = cli("query", "--index", str(idx), "--behavior", str(world["files"]["a"]), "--top-k", "5", "--format", "json",
              "--quiet")
    no_traceback(res)
    assert res.exit_code == 0, res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == (1 if "a" in damaged else 0), warned
    (body,) = json.loads(res.stdout)
    assert answer(body) == world["expected"]["a"] and body["cached"] == ("a" not in damaged)


def query_python(world, idx: Path, damaged: set[str], linked: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with actindex.Index.open(idx).use_model(world["lm"]) as index:
            result = index.query(str(world["files"]["a"]), k=5)
            again = index.query(str(world["files"]["a"]), k=5)  # once more: reported once only
    reported = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(reported) == (1 if "a" in damaged else 0), [str(w.message) for w in reported]
    assert answer(result) == answer(again) == world["expected"]["a"]
    assert result.cached == ("a" not in damaged)
    if not linked:  # the damaged entry was replaced by a healthy one
        assert all(e.problem is None for e in BehaviorCache(idx, result_manifest(idx)).entries()
                   if e.key == world["keys"]["a"])


def result_manifest(idx: Path) -> Any:
    return actindex.Index.open(idx).manifest


@contextmanager
def live_client(world, idx: Path):
    index = actindex.Index.open(idx).use_model(world["lm"])
    config = ServeConfig(port=0, workers=2)
    with live(create_app(index, config), config) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def query_http(world, idx: Path, damaged: set[str], linked: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        with live_client(world, idx) as client:
            response = client.post("/query", json={"pairs": PAIRS_A, "name": "a", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert answer(body) == world["expected"]["a"] and body["cached"] == ("a" not in damaged)


def cache_list(world, idx: Path, damaged: set[str], linked: bool) -> None:
    res = cli("cache", "list", str(idx))
    no_traceback(res)
    if linked:
        assert res.exit_code == 2 and "symbolic link" in res.output, res.output
        return
    assert res.exit_code == 0, res.output
    assert res.output.count("(damaged)") == len(damaged), res.output
    assert res.output.count(" b ") + res.output.count("\nb ") >= (0 if "b" in damaged else 1), res.output


def cache_clear(world, idx: Path, damaged: set[str], linked: bool) -> None:
    res = cli("cache", "clear", str(idx), "--behavior", "a")
    no_traceback(res)
    if linked:
        assert res.exit_code == 2 and "symbolic link" in res.output and len(res.output.strip().splitlines()) == 1
        return
    assert res.exit_code == 0, res.output
    left = {p.stem for p in (idx / "cache").iterdir()}
    healthy_b = "b" not in damaged
    assert left == ({world["keys"]["b"]} if healthy_b else set()), (left, res.output)


def verify_cli(world, idx: Path, damaged: set[str], linked: bool) -> None:
    res = cli("verify", str(idx))
    no_traceback(res)
    assert res.exit_code == 0, res.output
    if linked:
        assert "symbolic link" in res.output
    else:
        assert f"{2 - len(damaged)} healthy, {len(damaged)} damaged" in res.output, res.output


READERS = {"query CLI": query_cli, "Index.query": query_python, "serve /query": query_http,
           "cache list": cache_list, "cache clear": cache_clear, "verify": verify_cli}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", DAMAGES)
def test_every_cache_damage_meets_every_reader(world, tmp_path, damage, reader):
    idx, outside = tmp_path / "idx", tmp_path / "outside"
    shutil.copytree(world["root"] / "idx", idx)
    outside.mkdir()
    (outside / "keep.npz").write_bytes(b"a user's file")
    cache = idx / "cache"
    entry = {name: cache / f"{key}.npz" for name, key in world["keys"].items()}
    do, damaged = DAMAGES[damage]
    do(entry["a"], entry["b"], cache, outside)
    before = snapshot(outside)
    READERS[reader](world, idx, damaged, linked=damage == "symlinked cache dir")
    assert snapshot(outside) == before  # nothing outside the index written, replaced or deleted


def test_swapped_entries_never_answer_with_the_other_behaviour(world, tmp_path):
    """The regression itself: two swapped files made ``a`` answer with ``b``'s ranking under its own name."""
    idx = tmp_path / "idx"
    shutil.copytree(world["root"] / "idx", idx)
    swap(*(idx / "cache" / f"{world['keys'][n]}.npz" for n in ("a", "b")))
    assert world["expected"]["a"] != world["expected"]["b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        got = actindex.Index.open(idx).use_model(world["lm"]).query(str(world["files"]["a"]), k=5)
    assert answer(got) == world["expected"]["a"]


def test_the_cache_keeps_to_its_budget_least_recently_used_first(world, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(world["root"] / "idx", idx)
    a, b = (idx / "cache" / f"{world['keys'][n]}.npz" for n in ("a", "b"))
    manifest = actindex.Index.open(idx).manifest
    # a read marks its entry used: b read now, a last used long ago
    os.utime(a, ns=(1, a.stat().st_mtime_ns))
    assert BehaviorCache(idx, manifest).load(load_behavior(str(world["files"]["b"]))) is not None
    cache = BehaviorCache(idx, manifest)
    assert cache.evict(budget=a.stat().st_size + b.stat().st_size) == []  # within the budget: nothing goes
    assert cache.evict(budget=b.stat().st_size + 1) == [a.name] and b.is_file()
    # a budget of 0 caches nothing: the query is answered all the same
    index = actindex.Index.open(idx, cache_config=CacheConfig(cache_budget_mib=0)).use_model(world["lm"])
    third = write_jsonl(tmp_path / "c.jsonl", [dict(PAIRS_A[0], treatment="the symbol is au")])
    assert not index.query(str(third), k=5).cached
    assert not index.session.behavior_cache.path(index.session.behavior_cache.key(load_behavior(str(third)))).exists()
    res = cli("query", "--index", str(idx), "--cache-budget-mib", "-1", "--behavior", "x")
    assert res.exit_code == 2 and "--cache-budget-mib" in res.output


def test_strings_are_stored_once_as_compressed_utf8(world, tmp_path):
    """A large request: the entry holds its text as compressed UTF-8 once (not UTF-32, not twice)."""
    idx = tmp_path / "idx"
    shutil.copytree(world["root"] / "idx", idx)
    big = [{"prompt": " ".join(["silver"] * 200) + f" {i} ?", "treatment": "the symbol is na", "control": "ag"}
           for i in range(40)]
    path = write_jsonl(tmp_path / "big.jsonl", big)
    index = actindex.Index.open(idx).use_model(world["lm"])
    index.query(str(path), k=3)
    entry = idx / "cache" / f"{index.session.behavior_cache.key(load_behavior(str(path)))}.npz"
    text_bytes = sum(len(json.dumps(p)) for p in big)
    with np.load(entry) as data:
        stored_text = data["text"].nbytes + data["meta"].nbytes
        assert data["text"].dtype == np.uint8 and data["meta"].dtype == np.uint8
    assert stored_text < text_bytes  # the request's content with its completion: once, compressed
