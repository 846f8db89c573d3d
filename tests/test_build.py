"""The one-pass build and the index on disk: resume, atomicity, FAISS against brute force."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_index, chat_rows, read_all, write_jsonl

import actindex
from actindex.cli import main
from actindex.errors import ActindexError, IndexFileError
from actindex.index.search import brute_force

TESTS = Path(__file__).resolve().parent


def test_build_writes_the_design_layout(llama, train_file, tmp_path):
    out = tmp_path / "idx"
    m = actindex.build(data=str(train_file), out=str(out), layers=[1, 3], grad=True, full_width=True,
                       model=llama, progress=False, part_size=5)
    assert (out / "manifest.json").exists() and not (out / ".build").exists() and not (out / ".lock").exists()
    assert set(m.families) == {
        "residual_change/1", "residual_change/3", "residual_change_pooled/1", "residual_change_pooled/3",
        "mean_activation/1", "mean_activation/3", "residual_change_opening/1", "residual_change_opening/3",
        "mean_activation_opening/1", "mean_activation_opening/3", "mean_activation_start/1",
        "mean_activation_start/3", "mean_activation_surprisal/1", "mean_activation_surprisal/3", "gradient",
    }
    assert m.rows == 24 and m.layers == [1, 3] and m.model.fingerprint == llama.fingerprint
    data = read_all(out)
    assert [i.decode() for i in data["ids"]] == [f"r{i}" for i in range(24)]
    assert data["vectors/gradient"].shape == (24, len(m.projection.modules) * 8**2)
    assert np.all(data["loss"] > 0) and data["valid"].all()
    for fam, spec in m.families.items():
        assert (out / spec.faiss).exists(), fam
    assert m.summary["tokens"] == int(data["n_tokens"].sum())


def test_default_layers_and_the_default_single_layer(llama, train_file, tmp_path):
    from actindex.core.layers import default_layers, default_single_layer

    assert default_layers(30) == [12, 18, 24, 27]  # SmolLM2-135M: 40/60/80/90% of the depth
    assert default_layers(4) == [2, 3] and default_layers(1) == [0]  # kept inside the model, deduplicated
    assert default_single_layer([12, 18, 24, 27], 30) == 18 and default_single_layer([2, 3], 4) == 2
    m = actindex.build(data=str(train_file), out=str(tmp_path / "idx"), model=llama, progress=False, limit=4)
    assert m.layers == [2, 3] and set(m.families) == {
        f"{kind}/{layer}" for kind in ("residual_change", "residual_change_opening", "mean_activation_opening",
                                       "mean_activation_start", "mean_activation_surprisal")
        for layer in (2, 3)
    }  # the compact default: the adaptive default's five kinds
    assert actindex.Index.open(tmp_path / "idx").session.resolve_layer(None) == 2


def test_complete_index_is_never_silently_overwritten(llama, train_file, tmp_path):
    out = tmp_path / "idx"
    actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False)
    with pytest.raises(IndexFileError, match="already holds a complete index"):
        actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False)
    actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False, overwrite=True)


class Crash(Exception):
    pass


def test_crash_between_parts_resumes_to_the_uninterrupted_result(llama, train_file, tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    kwargs = dict(data=str(train_file), layers=[1, 2], grad=True, model=llama, progress=False, part_size=4)
    actindex.build(out=str(full), **kwargs)
    committed = []

    def crash_after_two(start, end):
        committed.append((start, end))
        if len(committed) == 2:
            raise Crash

    with pytest.raises(Crash):
        actindex.build(out=str(crashed), on_part=crash_after_two, **kwargs)
    assert not (crashed / "manifest.json").exists()
    with pytest.raises(IndexFileError, match="unfinished build"):
        actindex.Index.open(crashed)
    resumed = []
    actindex.build(out=str(crashed), on_part=lambda s, e: resumed.append((s, e)), **kwargs)
    assert resumed[0] == (8, 12)  # nothing recomputed, nothing skipped
    assert_same_index(full, crashed)


def test_resume_with_other_settings_is_refused(llama, train_file, tmp_path):
    out = tmp_path / "idx"

    def crash(start, end):
        raise Crash

    with pytest.raises(Crash):
        actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False,
                       part_size=4, on_part=crash)
    with pytest.raises(IndexFileError, match="different settings"):
        actindex.build(data=str(train_file), out=str(out), layers=[2], model=llama, progress=False, part_size=4)


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import make_tokenizer, tiny_llama
from actindex.core.models import wrap_model
import actindex
lm = wrap_model(tiny_llama(), make_tokenizer(), "tiny-llama")
actindex.build(data={data!r}, out={out!r}, layers=[1, 2], grad=True, model=lm, progress=False, part_size=3,
               on_part=lambda s, e: time.sleep(0.15))
"""


@pytest.mark.parametrize("parts_before_kill", [1, 3])
def test_kill_9_mid_build_resumes_with_nothing_lost_or_doubled(llama, tmp_path, parts_before_kill):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(30, seed=3))
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(TESTS), data=str(data), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    parts = out / ".build" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.glob("part-*.h5"))) >= parts_before_kill:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    actindex.build(data=str(data), out=str(out), layers=[1, 2], grad=True, model=llama, progress=False, part_size=3)
    actindex.build(data=str(data), out=str(tmp_path / "full"), layers=[1, 2], grad=True, model=llama,
                   progress=False, part_size=3)
    assert_same_index(tmp_path / "full", out)


def test_faiss_search_equals_brute_force_cosine(llama, train_file, tmp_path):
    out = tmp_path / "idx"
    actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False)
    idx = actindex.Index.open(out)
    rng = np.random.default_rng(0)
    for family in idx.families:
        vectors = idx.reader.vectors(family)
        for _ in range(3):
            q = rng.standard_normal(vectors.shape[1]).astype(np.float32)
            truth = brute_force(vectors, q)
            scores, rows = idx.search(q, k=0, family=family)
            assert list(rows) == list(np.argsort(-truth, kind="stable"))
            np.testing.assert_allclose(scores, truth[rows], rtol=1e-5, atol=1e-6)
            bottom_scores, bottom_rows = idx.search(q, k=5, family=family, bottom=True)
            assert list(bottom_rows) == list(np.argsort(truth, kind="stable")[:5])
            np.testing.assert_allclose(bottom_scores, truth[bottom_rows], rtol=1e-5, atol=1e-6)


def test_single_query_search_runs_faiss_on_one_thread_and_restores_it():
    import faiss

    from actindex.index.search import faiss_index_from_rows, search

    vectors = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    index = faiss_index_from_rows(vectors, np.ones(50, bool))
    seen, real = [], index.search

    class Spy:  # records the thread count FAISS runs with
        ntotal = index.ntotal

        def search(self, q, k, params=None):
            seen.append(faiss.omp_get_max_threads())
            return real(q, k, params=params)

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        search(Spy(), vectors[0], 3)
        search(Spy(), vectors[:4], 3)
        assert seen == [1, 2] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def test_non_finite_rows_are_flagged_and_kept_out_of_faiss(llama, train_file, tmp_path, monkeypatch):
    import actindex.core.vectors as vectors

    original = vectors.compute_vectors

    def poisoned(model, encoded, spec, pad_id, projector=None, *more):
        out = original(model, encoded, spec, pad_id, projector, *more)
        out.loss[0] = np.nan
        out.valid[0] = False
        for arr in out.vectors.values():
            arr[0] = 0.0
        return out

    monkeypatch.setattr(vectors, "compute_vectors", poisoned)
    out = tmp_path / "idx"
    m = actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False, batch_size=4)
    data = read_all(out)
    assert m.valid_rows == int(data["valid"].sum()) < 24
    idx = actindex.Index.open(out)
    _, rows = idx.search(np.ones(32, np.float32), k=0, family="residual_change/1")
    assert set(rows) == set(np.flatnonzero(data["valid"]))
    assert np.isfinite(data["vectors/residual_change/1"]).all()


def test_unknown_layer_and_missing_family_errors(llama, train_file, tmp_path):
    with pytest.raises(ActindexError, match="unknown layer 9: tiny-llama has 4 decoder layers"):
        actindex.build(data=str(train_file), out=str(tmp_path / "x"), layers=[9], model=llama, progress=False)
    actindex.build(data=str(train_file), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    with pytest.raises(IndexFileError, match="needs the 'gradient' vectors.*--grad"):
        idx.query_vector("hallucination", method="gradient")
    with pytest.raises(IndexFileError, match="no vectors for layer 2"):
        idx.query_vector("hallucination", layer=2)


def test_input_formats_give_the_same_rows(llama, tmp_path):
    pytest.importorskip("datasets")
    import datasets

    recs = [{"prompt": "the capital of france", "response": "paris", "id": "a"},
            {"prompt": "the symbol of silver", "response": "ag", "id": "b"}]
    jsonl = write_jsonl(tmp_path / "pr.jsonl", recs)
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["response"]}]} for r in recs])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"id": r["id"], "instruction": r["prompt"], "input": "", "output": r["response"]} for r in recs])
    parquet = tmp_path / "pr.parquet"
    datasets.Dataset.from_list(recs).to_parquet(str(parquet))
    hf_dir = tmp_path / "hf"
    datasets.Dataset.from_list(recs).save_to_disk(str(hf_dir))
    results = []
    for i, path in enumerate([jsonl, chat, alpaca, parquet, hf_dir]):
        out = tmp_path / f"idx{i}"
        actindex.build(data=str(path), out=str(out), layers=[1], model=llama, progress=False)
        results.append(read_all(out)["vectors/residual_change/1"])
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-5, atol=1e-6)


def test_cli_build_info_and_errors(tmp_path, monkeypatch, llama, train_file):
    build_mod = importlib.import_module("actindex.index.build")  # the package exports the function `build`
    monkeypatch.setattr(build_mod, "load_model", lambda *a, **k: llama)
    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(main, ["build", "--data", str(train_file), "--out", str(out), "--layers", "1,2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "built" in res.output and "24 rows" in res.output
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0 and "residual_change/2" in res.output and "tiny-llama" in res.output
    res = runner.invoke(main, ["build", "--data", str(train_file), "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "already holds a complete index" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["info", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not an actindex index" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build"]["layers"] == [1, 2]


def test_same_inputs_give_byte_identical_vectors(llama, train_file, tmp_path):
    for name in ("a", "b"):
        actindex.build(data=str(train_file), out=str(tmp_path / name), layers=[1, 2], grad=True, model=llama,
                       progress=False)
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    for key in a:
        if a[key].dtype.kind == "O":
            assert list(a[key]) == list(b[key]), key
        else:
            assert a[key].tobytes() == b[key].tobytes(), key
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())["checksums"]
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())["checksums"]
    assert ma == mb


def test_rows_are_streamed_part_by_part(llama, train_file, tmp_path, monkeypatch):
    """The build holds at most two parts of rows at a time: memory does not grow with the file."""
    import weakref

    import actindex.core.readers as data

    alive, most = [0], [0]
    original = data.normalise_record

    def counted(*args):
        row = original(*args)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(row, lambda: alive.__setitem__(0, alive[0] - 1))
        return row

    monkeypatch.setattr(data, "normalise_record", counted)
    actindex.build(data=str(train_file), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False,
                   part_size=4)
    assert 4 <= most[0] <= 2 * 4 + 1  # the part being built and the next one being read, never all 24 rows


def test_row_file_parts_tile_the_requested_rows(train_file):
    from actindex.core.readers import load_rows, scan_rows

    rows = load_rows(train_file)
    parts = list(scan_rows(train_file).parts(3, 17, 5))
    assert [first for first, _ in parts] == [3, 8, 13]
    assert [r.id for _, part in parts for r in part] == [r.id for r in rows[3:17]]
    assert len(scan_rows(train_file, limit=10)) == 10 and len(list(scan_rows(train_file, limit=10))) == 10


def test_file_changed_during_build_is_refused(llama, train_file, tmp_path):
    rows = train_file.read_text().splitlines(keepends=True)

    def shrink(start, end):
        if start == 0:  # an editor saves a new version over the file
            write_jsonl(tmp_path / "new.jsonl", [json.loads(r) for r in rows[:10]]).replace(train_file)

    with pytest.raises(ActindexError, match="changed during the build"):
        actindex.build(data=str(train_file), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False,
                       part_size=4, on_part=shrink)
    assert not (tmp_path / "idx" / "manifest.json").exists()
