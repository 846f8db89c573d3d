"""Every mutation, interrupted at every commit point, leaves the old state or the new one.

A mutation is run once whole (its new state) and then again from the old state with a crash injected at the
N-th commit point of the file layer (every rename and fsync, :func:`actindex.files.boundary`), for N = 1, 2,
... until it completes. After each crash the target is read back: an index must open, pass ``verify`` and
answer a fixed search (and load its curvature) exactly as the old or the new index does; an output file must
be the old bytes or the new ones; a behaviour cache must answer a query as before and hold only healthy
entries. A build (or an append, a merge) may also be left unfinished: then rerunning the same command must
reach the new state. The crash is a :class:`BaseException` no ``except Exception`` can swallow; a few
points are also hit by a real ``kill -9`` of a separate process (``ACTINDEX_CRASH_AT``). A new mutation is
swept by adding a row to :data:`MUTATIONS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import chat_rows, tiny_llama, write_jsonl

import actindex
from actindex import files
from actindex.act.correct.save import save_corrected
from actindex.core.models import load_model, save_weights
from actindex.errors import IndexFileError
from actindex.index.verify import verify
from actindex.query.cache import BehaviorCache

PAIRS = [
    {"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
]
SRC = str(Path(__file__).resolve().parents[1] / "src")


class Crash(BaseException):
    """The process dies here (cleanup that catches ``Exception`` does not see it)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer) -> dict[str, Any]:
    """A tiny model, its data, a base index, an index with curvature, two shards, a behaviour."""
    root = tmp_path_factory.mktemp("crash")
    model_dir = root / "model"
    save_weights(tiny_llama(layers=2), tokenizer, model_dir)
    lm = load_model(str(model_dir))
    data = write_jsonl(root / "train.jsonl", chat_rows(8))
    more = write_jsonl(root / "more.jsonl", [dict(r, id=f"more-{i}") for i, r in enumerate(chat_rows(4, seed=5))])
    # one family: fewer files, fewer commit points, a shorter sweep
    common = {"layers": [1], "families": ["residual_change"], "model": lm, "progress": False}
    actindex.build(data=str(data), out=str(root / "base"), **common)
    shutil.copytree(root / "base", root / "fitted")
    actindex.Index.open(root / "fitted").fit_curvature(kind="ekfac", samples=4, progress=False)
    for i in range(2):
        actindex.build(data=str(data), out=str(root / f"s{i}"), shard=f"{i}/2", **common)
    behavior = write_jsonl(root / "b.jsonl", PAIRS)
    shutil.copytree(root / "base", root / "cached")  # the behaviour cached: filter and correct sweep their own writes
    actindex.Index.open(root / "cached").use_model(lm).query(str(behavior), k=4, method="residual-change", layer=1)
    return {"root": root, "lm": lm, "data": data, "more": more, "common": common, "behavior": behavior,
            "model_dir": model_dir}


# ---- what a target holds, as comparable values ---------------------------------------------------
def index_state(root: Path) -> Any:
    """A fixed search of every family, the rows, and each curvature kind's factors (summed), or ``None`` when
    the directory holds no complete index (absent, or an unfinished build)."""
    from actindex.query.curvature.store import load_curvature

    try:
        idx = actindex.Index.open(root, cache=False)
    except IndexFileError as err:
        assert "unfinished build" in str(err) or "not an actindex index" in str(err), str(err)
        return None
    with idx:
        assert verify(root) == [], verify(root)
        rng = np.random.default_rng(0)
        searches = []
        for family, info in sorted(idx.families.items()):
            scores, rows = idx.search(rng.standard_normal(info.dim).astype(np.float32), k=0, family=family)
            searches.append((family, tuple(rows.tolist()), tuple(np.round(scores, 4).tolist())))
        curvature = []
        for kind in sorted(idx.manifest.curvature):
            factors = load_curvature(idx.reader, kind)
            curvature.append((kind, round(sum(float(k.lam.sum()) for k in factors.modules.values()), 3)))
        return len(idx), tuple(searches), tuple(curvature)


def file_state(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def cache_state(world: dict[str, Any], root: Path) -> Any:
    """The answer of a fixed query (from the cache or not), after checking every cache entry is healthy."""
    idx = actindex.Index.open(root)
    with idx:
        assert all(e.problem is None for e in BehaviorCache(root, idx.manifest).entries())
        result = idx.query(str(world["behavior"]), k=4, method="residual-change", layer=1)
        return tuple((h.row, round(h.score, 4)) for h in result.top)


# ---- the mutations ------------------------------------------------------------------------------
@dataclass
class Mutation:
    """One mutation: ``prepare`` makes the old state in a workspace and returns the target, ``run`` mutates it,
    ``state`` reads the target back; ``resumable``: an unfinished state (``None``) is allowed when rerunning
    ``run`` reaches the new state."""

    name: str
    prepare: Callable[[dict[str, Any], Path], Path]
    run: Callable[[dict[str, Any], Path], object]
    state: Callable[[dict[str, Any], Path], Any]
    resumable: bool = False


def copy_of(name: str) -> Callable[[dict[str, Any], Path], Path]:
    def prepare(world: dict[str, Any], ws: Path) -> Path:
        shutil.copytree(world["root"] / name, ws / "idx")
        return ws / "idx"
    return prepare


def fresh(name: str, content: bytes | None = None) -> Callable[[dict[str, Any], Path], Path]:
    def prepare(world: dict[str, Any], ws: Path) -> Path:
        if content is not None:
            (ws / name).write_bytes(content)
        return ws / name
    return prepare


def filtered(world: dict[str, Any], ws: Path) -> Path:
    shutil.copytree(world["root"] / "cached", ws / "idx")
    (ws / "clean.jsonl").write_text("old output\n")
    return ws / "clean.jsonl"


def filter_state(out: Path) -> Any:
    """The filtered file, with its list of removed rows once it is the new one (before, that list may be new or
    absent: OUT is the commit)."""
    sidecar = out.with_name(out.name + ".removed.jsonl")
    return file_state(out), file_state(sidecar) if out.read_bytes() != b"old output\n" else None


def corrected(world: dict[str, Any], ws: Path) -> Path:
    (ws / "fixed").mkdir()
    (ws / "fixed" / "old").write_text("old model")
    return ws / "fixed"


def folder_state(out: Path) -> Any:
    """The files of an output folder, and its report's settings when it has one (it must parse)."""
    names = sorted(p.name for p in out.iterdir())
    report = out / "correction.json"
    return names, json.loads(report.read_text())["config"] if report.exists() else None


MUTATIONS = [
    Mutation("build", fresh("idx"),
             lambda w, t: actindex.build(data=str(w["data"]), out=str(t), **w["common"]),
             lambda w, t: index_state(t), resumable=True),
    Mutation("append", copy_of("base"),
             lambda w, t: actindex.build(data=str(w["more"]), out=str(t), append=True, **w["common"]),
             lambda w, t: index_state(t), resumable=True),
    Mutation("merge", fresh("idx"),
             lambda w, t: actindex.merge([w["root"] / "s0", w["root"] / "s1"], t),
             lambda w, t: index_state(t), resumable=True),
    Mutation("fit-curvature", copy_of("base"),
             lambda w, t: actindex.Index.open(t).fit_curvature(kind="ekfac", samples=4, progress=False),
             lambda w, t: index_state(t)),
    Mutation("refit-curvature", copy_of("fitted"),
             lambda w, t: actindex.Index.open(t).fit_curvature(kind="ekfac", samples=6, progress=False),
             lambda w, t: index_state(t)),
    Mutation("export", fresh("out.parquet", b"old output"),
             lambda w, t: actindex.export(w["root"] / "base", t, overwrite=True),
             lambda w, t: file_state(t)),
    Mutation("filter", filtered,
             lambda w, t: actindex.filter_dataset(str(t.parent / "idx"), behavior=str(w["behavior"]), remove_top=2,
                                                  out=t, overwrite=True, method="residual-change", layer=1),
             lambda w, t: filter_state(t)),
    # correct's writes, all in its save (a whole run trains for seconds before reaching them)
    Mutation("correct (save)", corrected,
             lambda w, t: save_corrected(w["lm"].model, w["lm"], t, merge=False, report={"config": {"steps": 1}}),
             lambda w, t: folder_state(t)),
    Mutation("cache write", copy_of("base"),
             lambda w, t: actindex.Index.open(t).query(str(w["behavior"]), k=4, method="residual-change", layer=1),
             cache_state),
]


def crashing_at(n: int) -> Callable[[str, Path], None]:
    passed = [0]

    def hook(event: str, path: Path) -> None:
        passed[0] += 1
        if passed[0] == n:
            raise Crash(f"crash at commit point {n} ({event} {path.name})")
    return hook


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_a_mutation_interrupted_anywhere_leaves_the_old_or_the_new_state(world, tmp_path, mutation, monkeypatch):
    def workspace(name: str) -> tuple[Path, Path]:
        ws = tmp_path / name
        ws.mkdir()
        return ws, mutation.prepare(world, ws)

    _, target = workspace("old")
    old = mutation.state(world, target)
    _, target = workspace("new")
    mutation.run(world, target)
    new = mutation.state(world, target)
    assert new != old or mutation.name == "cache write"
    for n in range(1, 200):
        ws, target = workspace(f"n{n}")
        monkeypatch.setattr(files, "boundary_hook", crashing_at(n))
        try:
            mutation.run(world, target)
            completed = True
        except Crash:
            completed = False
        finally:
            monkeypatch.setattr(files, "boundary_hook", None)
        after = mutation.state(world, target)
        if completed:
            assert after == new, f"{mutation.name}: no crash at {n}, yet not the new state"
            assert n > 1
            return
        if after is None and mutation.resumable:
            mutation.run(world, target)  # rerunning the same command finishes it
            after = mutation.state(world, target)
            assert after == new, f"{mutation.name} resumed after a crash at commit point {n}"
        assert after in (old, new), f"{mutation.name} crashed at commit point {n}: neither the old nor the new state"
        shutil.rmtree(ws)
    pytest.fail(f"{mutation.name} never completed")


# ---- a real kill -9 -----------------------------------------------------------------------------
FIT = """
import sys, actindex
actindex.Index.open(sys.argv[1]).fit_curvature(kind="ekfac", samples=6, progress=False)
"""


@pytest.mark.parametrize("point", [2, 5])
def test_fit_curvature_killed_by_sigkill_leaves_the_old_or_the_new_index(world, tmp_path, point):
    old = index_state(world["root"] / "fitted")
    target = tmp_path / "idx"
    shutil.copytree(world["root"] / "fitted", target)
    env = {**os.environ, "PYTHONPATH": SRC, "ACTINDEX_CRASH_AT": str(point)}
    proc = subprocess.run([sys.executable, "-c", FIT, str(target)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = index_state(target)
    assert after is not None
    # the next writer takes over the dead writer's lock and leftovers, and reaches the new state
    actindex.Index.open(target).fit_curvature(kind="ekfac", samples=6, progress=False)
    new = index_state(target)
    assert after in (old, new) and new != old
    listed = set(actindex.Index.open(target).manifest.files)
    assert {p.name for p in target.glob("curvature-*")} <= listed  # nothing left behind
    assert not list(target.glob(".*.tmp"))
