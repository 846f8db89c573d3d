"""Scale-out: shard + merge, append and torchrun builds equal one single-process build; large-N FAISS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_index, chat_rows, make_tokenizer, read_all, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.models import wrap_model
from actindex.core.readers import file_sha256
from actindex.errors import ActindexError, DataError, IndexFileError
from actindex.index.search import brute_force, faiss_index_from_rows, measured_recall, search, set_search_params
from actindex.index.shards import merge, shard_range
from actindex.index.verify import verify


def test_shard_ranges_tile_the_rows_in_order():
    for n_rows in (0, 1, 7, 23, 100):
        for count in (1, 2, 3, 8, 30):
            ranges = [shard_range(n_rows, i, count) for i in range(count)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [e - s for s, e in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_shards_merged_equal_the_single_build(llama, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(23, seed=1))
    kwargs = dict(data=str(data), layers=[1, 2], grad=True, model=llama, progress=False, part_size=4, batch_size=3)
    actindex.build(out=str(tmp_path / "single"), **kwargs)
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    monkeypatch.setattr(sys.modules["actindex.index.build"], "load_model", lambda *a, **k: llama)
    res = CliRunner().invoke(main, ["build", "--data", str(data), "--out", str(shards[1]), "--layers", "1,2", "--grad",
                                    "--part-size", "4", "--batch-size", "3", "--shard", "1/3", "--quiet"])
    assert res.exit_code == 0 and "8 rows" in res.output, res.output  # rows 7-15 of 23
    res = CliRunner().invoke(main, ["build", "--data", str(data), "--out", str(tmp_path / "x"), "--shard", "1-3"])
    assert res.exit_code == 2 and "--shard must be I/N" in res.output
    for i in (2, 0, 1):  # any order: array jobs finish when they finish
        if i == 1:
            m = json.loads((shards[1] / "manifest.json").read_text())
        else:
            m = actindex.build(out=str(shards[i]), shard=f"{i}/3", **kwargs).to_dict()
        start, end = shard_range(23, i, 3)
        assert m["shard"] == {"index": i, "count": 3, "start": start, "end": end} and m["rows"] == end - start
        assert verify(shards[i]) == []  # a shard is a complete index of its own
    res = CliRunner().invoke(main, ["merge", str(shards[1]), str(shards[2]), str(shards[0]),
                                    "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    assert "23 rows" in res.output
    assert_same_index(tmp_path / "single", tmp_path / "merged")
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert "shard" not in merged and merged["rows"] == 23 and len(merged["merged_from"]) == 3
    assert verify(tmp_path / "merged") == []
    res = CliRunner().invoke(main, ["merge", *map(str, shards), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 2 and "already holds a complete index" in res.output


def test_merge_builds_the_requested_factory_once(llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(40, seed=2))
    kwargs = dict(data=str(data), layers=[1], model=llama, progress=False, faiss_factory="IVF4,Flat", full_width=True)
    for i in range(2):
        m = actindex.build(out=str(tmp_path / f"s{i}"), shard=f"{i}/2", **kwargs)
        assert {f.faiss_factory for f in m.families.values()} == {"Flat"}  # exact within a shard
    m = merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert {f.faiss_factory for f in m.families.values()} == {"IVF4,Flat"}
    assert verify(tmp_path / "merged") == []
    # nprobe defaults to min(16, nlist): all 4 lists are visited, so the IVF index is exact
    res = CliRunner().invoke(main, ["info", str(tmp_path / "merged"), "--recall-queries", "20", "--recall-k", "5"])
    assert res.exit_code == 0, res.output
    assert "recall@5 vs exact (20 sampled rows)" in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("residual_change/1 ") and "IVF" in line]
    assert lines and "IVF4,Flat (nprobe 4, nlist 4)" in lines[-1] and lines[-1].endswith("1.000"), res.output


def test_float16_storage_is_the_float32_build_rounded(llama, small_data, tmp_path):
    kwargs = dict(data=str(small_data), layers=[1], grad=True, model=llama, progress=False, full_width=True)
    m32 = actindex.build(out=str(tmp_path / "f32"), **kwargs)
    m = actindex.build(out=str(tmp_path / "f16"), store_dtype="float16", **kwargs)
    assert {f.dtype for f in m.families.values()} == {"float16"}
    a, b = read_all(tmp_path / "f32"), read_all(tmp_path / "f16")
    for key in m.families:
        assert b[f"vectors/{key}"].dtype == np.float16
        np.testing.assert_array_equal(b[f"vectors/{key}"], a[f"vectors/{key}"].astype(np.float16))
    assert 2 * m.summary["vector_bytes_per_row"] == m32.summary["vector_bytes_per_row"]
    assert verify(tmp_path / "f16") == []


@pytest.fixture()
def small_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(8, seed=4))


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("model", {"model": "other"}),
        ("layers", {"layers": [2]}),
        ("projection seed", {"seed": 7}),
        ("data", {"data": "other"}),
    ],
)
def test_merge_refuses_shards_of_different_builds(llama, tokenizer, small_data, tmp_path, field, change):
    base = dict(data=str(small_data), layers=[1], model=llama, progress=False)
    actindex.build(out=str(tmp_path / "a"), shard="0/2", **base)
    other = dict(base, **change)
    if field == "model":
        other["model"] = wrap_model(tiny_llama(seed=1), tokenizer, "tiny-llama")
    if field == "data":
        other["data"] = str(write_jsonl(tmp_path / "other.jsonl", chat_rows(8, seed=5)))
    actindex.build(out=str(tmp_path / "b"), shard="1/2", **other)
    with pytest.raises(IndexFileError) as err:
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    message = str(err.value)
    assert message.startswith(f"cannot merge these shards: {field} differs (")
    assert str(tmp_path / "a") in message and str(tmp_path / "b") in message and "\n" not in message
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and f"{field} differs" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "merged" / "manifest.json").exists()


def test_merge_refuses_missing_doubled_and_non_shards(llama, small_data, tmp_path):
    base = dict(data=str(small_data), layers=[1], model=llama, progress=False)
    actindex.build(out=str(tmp_path / "a"), shard="0/3", **base)
    actindex.build(out=str(tmp_path / "b"), shard="2/3", **base)
    actindex.build(out=str(tmp_path / "whole"), **base)
    with pytest.raises(IndexFileError, match=r"shard\(s\) 1/3 missing \(given: 0/3, 2/3\)"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    with pytest.raises(IndexFileError, match="shard 0/3 is given twice"):
        merge([tmp_path / "a", tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    with pytest.raises(IndexFileError, match="is not a shard"):
        merge([tmp_path / "whole"], tmp_path / "m")
    with pytest.raises(ActindexError, match="--shard must be I/N"):
        actindex.build(out=str(tmp_path / "x"), shard="3/3", **base)


class Crash(Exception):
    pass


def test_append_equals_building_the_concatenation(llama, tmp_path, monkeypatch):
    rows = chat_rows(19, seed=6)
    first = write_jsonl(tmp_path / "first.jsonl", rows[:11])
    more = write_jsonl(tmp_path / "more.jsonl", rows[11:])
    both = write_jsonl(tmp_path / "both.jsonl", rows)
    kwargs = dict(layers=[1, 3], grad=True, model=llama, progress=False, part_size=3, full_width=True)
    actindex.build(data=str(both), out=str(tmp_path / "whole"), **kwargs)
    out = tmp_path / "grown"
    actindex.build(data=str(first), out=str(out), **kwargs)

    # a crash while computing the new rows leaves the old index complete and usable
    def crash(start, end):
        raise Crash

    with pytest.raises(Crash):
        actindex.build(data=str(more), out=str(out), append=True, on_part=crash, **kwargs)
    assert len(actindex.Index.open(out)) == 11 and verify(out) == []
    # a crash while finalising leaves an unfinished index that the same command completes
    import actindex.index.writer as search_mod  # the writer's own name for it

    real_write = search_mod.write_faiss_index
    calls = []

    def write_then_crash(index, path):
        real_write(index, path)
        calls.append(path)
        if len(calls) == 2:
            raise Crash

    monkeypatch.setattr(search_mod, "write_faiss_index", write_then_crash)
    with pytest.raises(Crash):
        actindex.build(data=str(more), out=str(out), append=True, **kwargs)
    monkeypatch.setattr(search_mod, "write_faiss_index", real_write)
    with pytest.raises(IndexFileError, match="unfinished build"):
        actindex.Index.open(out)
    parts = []
    m = actindex.build(data=str(more), out=str(out), append=True, on_part=lambda s, e: parts.append((s, e)), **kwargs)
    assert parts == []  # the new rows were all committed before the crash: nothing recomputed
    assert_same_index(tmp_path / "whole", out, provenance=False)  # two files: rows keep their own lines
    assert actindex.Index.open(out).reader.table.line.tolist() == list(range(1, 12)) + list(range(1, 9))
    assert verify(out) == []
    files = m.data
    assert [f.rows for f in files] == [11, 8] and [f.first_row for f in files] == [0, 11]
    assert [Path(f.path).name for f in files] == ["first.jsonl", "more.jsonl"]
    assert files[1].sha256 == file_sha256(more) != files[0].sha256
    assert m.rows == 19 and not (out / ".build").exists()

    with pytest.raises(IndexFileError, match="same sha256"):
        actindex.build(data=str(more), out=str(out), append=True, **kwargs)
    clash = write_jsonl(tmp_path / "clash.jsonl", [dict(rows[0], messages=rows[1]["messages"])])
    with pytest.raises(DataError, match="id 'r0' is already in"):
        actindex.build(data=str(clash), out=str(out), append=True, **kwargs)
    fresh = write_jsonl(tmp_path / "fresh.jsonl", [dict(r, id=f"n{i}") for i, r in enumerate(rows[:2])])
    with pytest.raises(IndexFileError, match="cannot append to .*: layers differs"):
        actindex.build(data=str(fresh), out=str(out), append=True, **dict(kwargs, layers=[1]))
    with pytest.raises(IndexFileError, match="--append needs a complete index"):
        actindex.build(data=str(fresh), out=str(tmp_path / "none"), append=True, **kwargs)
    monkeypatch.setattr(sys.modules["actindex.index.build"], "load_model", lambda *a, **k: llama)
    res = CliRunner().invoke(main, ["build", "--append", "--data", str(fresh), "--out", str(out), "--layers", "1,3",
                                    "--grad", "--quiet"])
    assert res.exit_code == 0 and "built" in res.output and "21 rows" in res.output, res.output
    assert actindex.Index.open(out).reader.ids()[-3:] == ["r18", "n0", "n1"] and verify(out) == []


def test_append_gives_the_new_rows_the_families_the_index_holds(llama, tmp_path):
    """An index built before a family became default (here: without the openings and the start) is appended to
    with today's default switches: the new rows get the index's families, as building both files at once with
    the index's switches would."""
    rows = chat_rows(9, seed=7)
    first = write_jsonl(tmp_path / "first.jsonl", rows[:5])
    more = write_jsonl(tmp_path / "more.jsonl", rows[5:])
    both = write_jsonl(tmp_path / "both.jsonl", rows)
    old = dict(layers=[1, 3], model=llama, progress=False, opening=False, start=False)
    actindex.build(data=str(both), out=str(tmp_path / "whole"), **old)
    held = set(actindex.build(data=str(first), out=str(tmp_path / "grown"), **old).families)
    assert not any(("opening" in name or "start" in name) for name in held)
    m = actindex.build(data=str(more), out=str(tmp_path / "grown"), append=True, layers=[1, 3], model=llama,
                       progress=False)
    assert set(m.families) == held and m.rows == 9 and verify(tmp_path / "grown") == []
    assert_same_index(tmp_path / "whole", tmp_path / "grown", provenance=False)


def test_append_extends_a_trained_faiss_index_without_retraining(llama, tmp_path):
    rows = chat_rows(60, seed=8)
    first = write_jsonl(tmp_path / "first.jsonl", rows[:40])
    more = write_jsonl(tmp_path / "more.jsonl", rows[40:])
    out = tmp_path / "idx"
    kwargs = dict(layers=[1], model=llama, progress=False, faiss_factory="IVF4,Flat")
    actindex.build(data=str(first), out=str(out), **kwargs)
    centroids_before = _ivf_centroids(out)
    m = actindex.build(data=str(more), out=str(out), append=True, **kwargs)
    assert m.rows == 60 and verify(out) == []
    assert {f.faiss_factory for f in m.families.values()} == {"IVF4,Flat"}
    np.testing.assert_array_equal(_ivf_centroids(out), centroids_before)


def _ivf_centroids(root: Path) -> np.ndarray:
    import faiss

    index = faiss.read_index(str(root / "faiss" / "residual_change-1.faiss"))
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


@pytest.fixture()
def one_faiss_thread():
    """FAISS's OpenMP threads crawl on a crowded machine; one thread is faster there."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_ivf_factory_finds_a_planted_duplicate_and_reports_its_recall(tmp_path, one_faiss_thread):
    import faiss

    rng = np.random.default_rng(0)
    n, dim = 4000, 32
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    valid = np.ones(n, bool)
    valid[::97] = False
    planted = 1234
    for factory, params in (("IVF64,Flat", {"nprobe": 4}), ("HNSW16", {"ef_search": 64}), ("IVF32,PQ8x4", {})):
        index = faiss_index_from_rows(vectors, valid, factory, train_rows=2000)
        assert index.ntotal == valid.sum()
        set_search_params(index, **params)
        query = vectors[planted] * 3.0  # same direction: cosine 1 with the planted row only
        scores, rows = search(index, query, 5)
        assert rows[0][0] == planted, factory
        path = tmp_path / "ivf.faiss"
        faiss.write_index(index, str(path))
        from actindex.index.search import read_faiss_index

        mapped = read_faiss_index(path)  # memory-mapped for IVF
        assert search(mapped, query, 1)[1][0][0] == planted
        recall = measured_recall(mapped, vectors, valid, k=10, queries=100)
        assert 0.1 < recall <= 1.0, (factory, recall)
    exact = faiss_index_from_rows(vectors, valid, "Flat")
    assert measured_recall(exact, vectors, valid, k=10, queries=100) == 1.0
    ivf = faiss_index_from_rows(vectors, valid, "IVF64,Flat", train_rows=2000)
    recalls = [measured_recall(set_search_params(ivf, nprobe=p), vectors, valid, 10, 100) for p in (1, 8, 64)]
    assert recalls[0] < recalls[1] < recalls[2] == 1.0, recalls  # visiting every list is exact search
    truth = brute_force(vectors[valid], vectors[planted])
    assert np.argmax(truth) == np.flatnonzero(valid).tolist().index(planted)


def test_ivf_indexes_visit_16_lists_up_to_2048_then_one_in_128_and_lossy_codes_fetch_300_extra_candidates():
    from actindex.index.search import default_nprobe, new_faiss_index, rescore_candidates, search_params

    assert [default_nprobe(n) for n in (4, 16, 1024, 2048, 4096, 8192, 32768)] == [4, 16, 16, 16, 32, 64, 256]
    assert search_params(new_faiss_index(8, "IVF1024,Flat")) == {"nprobe": 16, "nlist": 1024}  # 1M rows: as before
    assert search_params(new_faiss_index(8, "IVF8192,PQ4")) == {"nprobe": 64, "nlist": 8192}  # 10M rows
    assert [rescore_candidates(k, 10**6) for k in (1, 10, 100, 1000)] == [301, 310, 400, 2000]
    assert rescore_candidates(100, 250) == 250


def test_a_compact_family_beyond_the_flat_rows_is_searched_through_ivf_pq_codes_rescored_exactly(
        tmp_path, monkeypatch, one_faiss_thread):
    """Beyond AUTO_FLAT_ROWS a compact family's FAISS copy is IVF-PQ (codes of one byte per 8 dims); a search takes
    its candidates from the codes and ranks them by their exact cosines from the stored vectors: with every list
    visited, the top 10 is brute force's, with its exact cosines."""
    import actindex.index.search as search_module
    from actindex.index.search import search_params
    from actindex.testing import write_vector_index

    monkeypatch.setattr(search_module, "AUTO_FLAT_ROWS", 1000)
    rng = np.random.default_rng(2)
    n, dim, family = 4000, 32, "residual_change/18"
    centres = rng.standard_normal((20, dim))
    data = (centres[rng.integers(0, 20, n)] + 0.7 * rng.standard_normal((n, dim))).astype(np.float32)
    root = tmp_path / "idx"
    m = write_vector_index(root, n, {family: dim}, lambda a, k: {family: data[a : a + k]}, train_rows=n,
                           part_rows=1500)
    assert m.rows == n and m.families[family].faiss_factory == "IVF128,PQ4"  # 2 sqrt(4000) = 126 -> 2^7 lists
    assert verify(root) == []
    idx = actindex.Index.open(root, cache=False)
    assert search_params(idx.reader.faiss_index(family)) == {"nprobe": 16, "nlist": 128}
    idx.reader.tune(nprobe=128)  # every list: only the codes' error is left, and the re-scoring removes it
    for row in rng.choice(n, 20, replace=False):
        query = data[row] + 0.5 * rng.standard_normal(dim).astype(np.float32)
        truth = brute_force(data, query)
        scores, rows = idx.search(query, k=10, family=family)
        assert rows.tolist() == np.argsort(-truth, kind="stable")[:10].tolist()
        np.testing.assert_allclose(scores, truth[rows], atol=1e-5)


def test_an_ivf_index_keeps_row_numbers_in_its_lists_and_an_id_mapped_one_still_reads(tmp_path, one_faiss_thread):
    """No IndexIDMap2 around IVF (its hash map of every id cost 53 bytes a row of RAM): the inverted lists hold the
    row numbers themselves; the rows decode, the spot check finds a copied file, the ids are the valid rows; an
    id-mapped IVF (the layout indexes were written in before) searches and checks the same."""
    import faiss

    from actindex.index.search import (
        extend_faiss_index,
        normalise,
        read_faiss_index,
        reconstructed,
        rows_disagree,
        stored_as,
        stored_ids,
        trained_faiss_index,
        write_faiss_index,
    )

    rng = np.random.default_rng(3)
    n, dim = 3000, 16
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    valid = np.ones(n, bool)
    valid[::7] = False
    index = faiss_index_from_rows(vectors, valid, "IVF16,PQ4", train_rows=n)
    assert isinstance(index, faiss.IndexIVFPQ) and not hasattr(index, "id_map")
    assert np.array_equal(stored_ids(index), np.flatnonzero(valid))
    rows = np.flatnonzero(valid)[:40]
    np.testing.assert_allclose(reconstructed(index, rows), stored_as(index, normalise(vectors[rows])), atol=1e-5)
    with pytest.raises(RuntimeError, match="holds no row 7"):
        reconstructed(index, np.array([8, 7]))
    assert len(rows_disagree(index, rows, vectors[rows])) == 0
    assert rows_disagree(index, rows, vectors[rows + 1]).tolist() == rows.tolist()  # another row's vectors
    write_faiss_index(index, tmp_path / "ivf.faiss")
    mapped = read_faiss_index(tmp_path / "ivf.faiss")  # lists (ids and codes) memory-mapped
    old = extend_faiss_index(faiss.IndexIDMap2(trained_faiss_index(vectors, valid, "IVF16,PQ4", n)), vectors, valid, 0)
    queries = normalise(rng.standard_normal((10, dim)))
    for other in (mapped, old):
        set_search_params(other, nprobe=16)
        assert np.array_equal(stored_ids(other), np.flatnonzero(valid))
        assert len(rows_disagree(other, rows, vectors[rows])) == 0
    set_search_params(index, nprobe=16)
    want = search(index, queries, 20)
    for other in (mapped, old):
        got = search(other, queries, 20)
        assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], atol=1e-6)
    allowed = np.zeros(n, bool)
    allowed[rows] = True
    assert set(search(mapped, queries[0], 5, allowed)[1][0].tolist()) <= set(rows.tolist())


def test_pq_codes_are_trained_without_the_polysemous_reordering_which_changes_no_score(one_faiss_thread):
    """FAISS's factory reorders 8-bit PQ centroids by simulated annealing (minutes per family); actindex never filters
    codes by Hamming distance, so it is off, and the reordering (made quick here) gives the very same search."""
    import faiss

    from actindex.index.search import new_faiss_index, normalise

    rng = np.random.default_rng(1)
    vectors = normalise(rng.standard_normal((3000, 32)))
    valid = np.ones(len(vectors), bool)
    ours = faiss_index_from_rows(vectors, valid, "IVF8,PQ4", train_rows=3000)
    assert not faiss.downcast_index(faiss.extract_index_ivf(ours)).do_polysemous_training
    assert not faiss.downcast_index(new_faiss_index(32, "PQ4")).do_polysemous_training
    reordered = faiss.index_factory(32, "IVF8,PQ4", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(reordered))
    assert ivf.do_polysemous_training  # FAISS's own default
    annealing = faiss.PolysemousTraining()
    annealing.n_iter, annealing.n_redo = 2000, 1
    ivf.polysemous_training = annealing
    reordered.train(vectors)
    reordered = faiss.IndexIDMap2(reordered)
    reordered.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    inner = faiss.downcast_index(faiss.extract_index_ivf(ours))
    assert not np.array_equal(faiss.vector_to_array(ivf.pq.centroids), faiss.vector_to_array(inner.pq.centroids))
    queries = normalise(rng.standard_normal((20, 32)))
    for index in (ours, reordered):
        set_search_params(index, nprobe=8)
    got, want = search(ours, queries, 50), search(reordered, queries, 50)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    assert (got[1] == want[1]).mean() > 0.99  # the same rows, up to the order of equal scores



def test_auto_factory_is_exact_until_large_then_ivf(llama, tmp_path, monkeypatch):
    import actindex.index.search as search_module
    from actindex.index.search import resolve_factory

    assert resolve_factory("auto", 200_000) == "Flat"
    assert resolve_factory("auto", 1_000_000) == "IVF2048,Flat"  # 2 sqrt(1e6) = 2000 -> 2^11
    assert resolve_factory("auto", 300_000) == "IVF1024,Flat"
    assert resolve_factory("HNSW32", 10) == "HNSW32"  # an explicit factory is kept
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(24, seed=3))
    kwargs = dict(data=str(data), layers=[1], model=llama, progress=False, full_width=True)
    small = actindex.build(out=str(tmp_path / "small"), **kwargs)
    assert {f.faiss_factory for f in small.families.values()} == {"Flat"}
    monkeypatch.setattr(search_module, "AUTO_FLAT_ROWS", 10)  # 24 rows now count as "large"
    large = actindex.build(out=str(tmp_path / "large"), **kwargs)
    assert {f.faiss_factory for f in large.families.values()} == {"IVF8,Flat"}  # 2 sqrt(24) = 9.8 -> 2^3
    assert large.build.faiss_factory == "auto"  # what was asked stays on record
    idx = actindex.Index.open(tmp_path / "large")
    family = next(iter(idx.families))
    set_search_params(idx.reader.faiss_index(family), nprobe=8)  # every list: exact
    _, rows = idx.search(idx.reader.vectors(family, [5])[0], 1, family=family)
    assert list(rows) == [5]


TORCHRUN_TIMEOUT = 240


def test_torchrun_two_process_build_equals_the_single_build(tmp_path):
    model_dir = tmp_path / "model"
    tiny_llama().save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(21, seed=9))
    args = ["build", "--model", str(model_dir), "--data", str(data), "--layers", "1,2", "--grad",
            "--part-size", "4", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "actindex", *args, "--out", str(tmp_path / "dist")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("built ") == 1, proc.stdout  # rank 0 reports
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "single")])
    assert res.exit_code == 0, res.output
    assert_same_index(tmp_path / "single", tmp_path / "dist")
    assert not (tmp_path / "dist" / ".shards").exists() and verify(tmp_path / "dist") == []
