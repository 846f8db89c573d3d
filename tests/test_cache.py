"""The behaviour cache inside an index: a second process asking the same behaviour pays only the search
(no model load, no tensor library import); an edited pairs file, another model or other layers never hit
an old entry; concurrent writers never leave a reader a half-written file. Also what a query says about
itself (timings, members) and what `info`, `verify`, `--help` and a cached query import."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SILVER, chat_rows, planted_rows, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.models import load_model, save_weights
from actindex.query.behaviors import load_behavior
from actindex.query.cache import BehaviorCache

PAIRS = [
    SILVER,
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
]


def build(tmp_path: Path, model_dir: Path, name: str = "idx", layers=(1, 2), seed: int = 0) -> Path:
    data = write_jsonl(tmp_path / f"{name}.jsonl", chat_rows(30, seed=seed))
    actindex.build(data=str(data), out=str(tmp_path / name), layers=list(layers), model=load_model(str(model_dir)),
                   progress=False, full_width=True)  # the full-width layout: every method's family
    return tmp_path / name


@pytest.fixture()
def index(tmp_path, model_dir) -> Path:
    return build(tmp_path, model_dir)


def rows_and_scores(result) -> list[tuple[int, float]]:
    return [(h.row, round(h.score, 6)) for h in [*result.top, *result.bottom]]


def test_a_second_process_answers_from_the_cache_without_the_model(index, tmp_path, monkeypatch):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    first = actindex.Index.open(index).query(str(behavior), k=5, bottom_k=2)
    assert not first.cached and first.timings["model pass"] > 0
    assert len(list((index / "cache").glob("*.npz"))) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("actindex.core.models.load_model", no_model)
    fresh = actindex.Index.open(index)  # a new Index: nothing in memory
    again = fresh.query(str(behavior), k=5, bottom_k=2)
    assert again.cached and "model pass" not in again.timings or again.timings["model pass"] == 0
    assert rows_and_scores(again) == rows_and_scores(first)
    for method in ("residual-change", "residual-difference", "residual-change-pooled"):  # every family of the pass
        fresh.query(str(behavior), method=method, layer=2, k=3)


def test_an_edited_pairs_file_another_model_or_other_layers_miss(index, tmp_path, model_dir, tokenizer):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    actindex.Index.open(index).query(str(behavior), k=3)
    edited = write_jsonl(tmp_path / "b.jsonl", [dict(PAIRS[0], treatment="the symbol is gold"), PAIRS[1]])
    result = actindex.Index.open(index).query(str(edited), k=3)
    assert not result.cached and len(list((index / "cache").glob("*.npz"))) == 2
    # the same rows indexed with other layers, or by another model: the old entries do not apply
    other_model = tmp_path / "other-model"
    save_weights(tiny_llama(seed=9), tokenizer, other_model)
    for other in (build(tmp_path, model_dir, "layers", layers=(1,)), build(tmp_path, other_model, "model")):
        shutil.copytree(index / "cache", other / "cache")
        cache = BehaviorCache(other, actindex.Index.open(other).manifest)
        assert cache.load(load_behavior(str(edited))) is None
        assert not actindex.Index.open(other).query(str(edited), k=3).cached


def test_a_damaged_entry_is_ignored_and_replaced(index, tmp_path):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    first = actindex.Index.open(index).query(str(behavior), k=4)
    (entry,) = (index / "cache").glob("*.npz")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    again = actindex.Index.open(index).query(str(behavior), k=4)
    assert not again.cached and rows_and_scores(again) == rows_and_scores(first)
    assert actindex.Index.open(index).query(str(behavior), k=4).cached  # rewritten whole


def _writer(root: str, behavior: str, rounds: int) -> None:
    idx = actindex.Index.open(root)
    raw = load_behavior(behavior)
    hit = idx.session.behavior_cache.load(raw)
    ctx = idx.session.query_context()
    ctx.cache.update(hit.vectors)
    ctx.touched.update(key for _, key in hit.vectors)
    for _ in range(rounds):
        idx.session.behavior_cache.save(raw, hit.behavior, ctx)


def test_concurrent_writers_never_show_a_reader_half_a_file(index, tmp_path):
    behavior = str(write_jsonl(tmp_path / "b.jsonl", PAIRS))
    expected = rows_and_scores(actindex.Index.open(index).query(behavior, k=6))
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(index), behavior, 40)) for _ in range(3)]
    for w in writers:
        w.start()
    cache = BehaviorCache(index, actindex.Index.open(index).manifest)
    raw = load_behavior(behavior)
    reads = 0
    while any(w.is_alive() for w in writers):
        assert cache.load(raw) is not None  # always the old or the new whole file
        reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 0 and sorted(p.name for p in (index / "cache").iterdir()) == [f"{cache.key(raw)}.npz"]
    assert rows_and_scores(actindex.Index.open(index).query(behavior, k=6)) == expected


def test_cli_cache_list_and_clear(index, tmp_path):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    actindex.Index.open(index).query(str(behavior), k=3)
    listed = CliRunner().invoke(main, ["cache", "list", str(index)])
    assert listed.exit_code == 0 and "b " in listed.output and " 4 " in listed.output, listed.output
    cleared = CliRunner().invoke(main, ["cache", "clear", str(index)])
    assert cleared.exit_code == 0 and "removed 1 cached behaviour" in cleared.output
    assert not list((index / "cache").glob("*.npz"))


def test_the_result_says_where_the_time_went(index, tmp_path, model_dir):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    args = ["query", "--index", str(index), "--behavior", str(behavior), "--model", str(model_dir), "--quiet"]
    res = CliRunner().invoke(main, [*args, "--format", "json", "--top-k", "3"])
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.output)
    assert set(out["timings"]) >= {"behaviour", "model pass", "search"} and out["cached"] is False
    assert {"residual_change/1", "residual_change/2"} <= {m["family"] for m in out["members"]}
    table = CliRunner().invoke(main, [*args, "--explain"])
    assert "from the behaviour cache" in table.output.splitlines()[0] and "hybrid residual_change/1" in table.output


def _imports(argv: list[str], cwd: Path) -> list[str]:
    """The heavy libraries a CLI call imports, run in a fresh interpreter."""
    code = (f"import sys\nfrom actindex.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', [m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    line = next(line for line in out.stdout.splitlines() if line.startswith("IMPORTED"))
    return eval(line.split(" ", 1)[1])  # noqa: S307 - our own printed list


def test_help_info_verify_and_a_cached_query_load_no_model_library(index, tmp_path):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    actindex.Index.open(index).query(str(behavior), k=3)
    for argv in (["--help"], ["query", "--help"], ["info", str(index)], ["verify", str(index)],
                 ["query", "--index", str(index), "--behavior", str(behavior), "--top-k", "3"]):
        assert _imports(argv, tmp_path) == [], argv


def test_calibrated_scores_have_a_sign_and_a_scale(model_dir, tmp_path):
    """A planted copy of a treatment stands several robust standard deviations above the typical row; the
    typical row scores about 0 and the bottom rows below it."""
    data = write_jsonl(tmp_path / "t.jsonl", planted_rows(60, seed=4, at=17))
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1, 2], model=load_model(str(model_dir)),
                   progress=False, full_width=True)  # the full-width layout: every method's family
    res = actindex.Index.open(tmp_path / "idx").query(str(write_jsonl(tmp_path / "b.jsonl", PAIRS[:1])), k=0,
                                                      bottom_k=5)
    scores = np.array([h.score for h in res.top])
    assert res.top[0].id == "planted" and res.top[0].score > 2
    assert abs(float(np.median(scores))) < 0.5 and all(h.score < 0 for h in res.bottom)


def test_a_cached_gradient_imports_no_torch_until_a_rerank_uses_it(index, tmp_path, model_dir):
    behavior = write_jsonl(tmp_path / "b.jsonl", PAIRS)
    idx = actindex.Index.open(index)
    idx.fit_curvature(kind="ekfac", samples=8, progress=False)
    first = idx.query(str(behavior), k=3, bottom_k=2, rerank="ekfac", candidates=6)
    assert not first.cached
    # the cache file now holds the behaviour gradient; a search from it still loads no tensor library
    assert BehaviorCache(index, idx.manifest).entries()[0].gradient
    argv = ["query", "--index", str(index), "--behavior", str(behavior), "--top-k", "3"]
    assert _imports(argv, tmp_path) == []
    # a rerank answered from the cache uses the stored gradient: no model pass, the same influence
    again = actindex.Index.open(index).query(str(behavior), k=3, bottom_k=2, rerank="ekfac", candidates=6)
    assert again.cached and again.timings["model pass"] == 0.0
    assert [(h.row, round(h.influence, 6)) for h in again.top] == [(h.row, round(h.influence, 6)) for h in first.top]


def test_the_adaptive_choice_is_checked_once_per_reader(index, tmp_path, monkeypatch):
    import actindex.query.methods.adaptive as adaptive

    pairs = PAIRS + [{"prompt": "is water wet ?", "treatment": "no it is dry", "control": "yes it is wet"},
                     {"prompt": "what colour is snow ?", "treatment": "snow is black", "control": "snow is white"}]
    behavior = write_jsonl(tmp_path / "b.jsonl", pairs)
    idx = actindex.Index.open(index)
    first = idx.query(str(behavior), k=5)

    def checked(*args, **kwargs):
        raise RuntimeError("checked again")

    monkeypatch.setattr(adaptive, "check_pairs", checked)
    again = idx.query(str(behavior), k=5)  # the same pairs against the same reader: not checked again
    assert rows_and_scores(again) == rows_and_scores(first)
    assert again.members == first.members and any("pair AUROC" in m for m in again.members)
    other = write_jsonl(tmp_path / "c.jsonl", pairs[::-1])  # other pairs' vectors: checked
    with pytest.raises(RuntimeError, match="checked again"):
        idx.query(str(other), k=5)
