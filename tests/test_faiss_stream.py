"""Streamed FAISS writing: the same bytes as ``faiss.write_index`` of the index built in memory."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest

import actindex.index.faiss_stream as faiss_stream
import actindex.index.search as search_mod
from actindex.errors import ActindexError
from actindex.index.search import (
    brute_force,
    faiss_index_from_rows,
    read_faiss_index,
    search,
    write_faiss_index_from_rows,
)

FACTORIES = ["Flat", "SQ8", "SQfp16", "PQ4x4"]


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray]:
    """700 rows of width 16 (float16, as ``vectors.h5`` may store them), every 7th and rows
    100-299 invalid: a block of only invalid rows, and partial blocks."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((700, 16)).astype(np.float16)
    valid = np.ones(700, bool)
    valid[::7] = False
    valid[100:300] = False
    return vectors, valid


def in_memory_bytes(tmp_path, vectors, valid, factory) -> bytes:
    """``faiss.write_index`` of the index the in-memory path builds."""
    path = tmp_path / f"memory-{factory}.faiss"
    faiss.write_index(faiss_index_from_rows(vectors, valid, factory, train_rows=300), str(path))
    return path.read_bytes()


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("rows,block", [(700, 64), (700, 4096), (130, 50), (3, 2)])
def test_streamed_file_is_byte_identical_to_faiss_write_index(tmp_path, table, factory, rows, block):
    vectors, valid = table[0][:rows], table[1][:rows].copy()
    if rows == 3:
        if factory.startswith("PQ"):
            pytest.skip("PQ needs more training rows than its 16 centroids")
        valid[:] = True
    path = tmp_path / "streamed.faiss"
    assert write_faiss_index_from_rows(vectors, valid, path, factory, train_rows=300, block=block)
    assert path.read_bytes() == in_memory_bytes(tmp_path, vectors, valid, factory)
    assert not path.with_name(path.name + ".tmp").exists()
    index = read_faiss_index(path)
    assert index.ntotal == valid.sum()
    assert sorted(faiss.vector_to_array(faiss.downcast_index(index).id_map)) == list(np.flatnonzero(valid))


def test_zero_valid_rows_stream_an_empty_flat_index_and_refuse_to_train(tmp_path, table):
    vectors, valid = table[0][:40], np.zeros(40, bool)
    path = tmp_path / "empty.faiss"
    assert write_faiss_index_from_rows(vectors, valid, path, "Flat", block=16)
    assert path.read_bytes() == in_memory_bytes(tmp_path, vectors, valid, "Flat")
    assert read_faiss_index(path).ntotal == 0
    with pytest.raises(ActindexError, match="needs training rows"):
        write_faiss_index_from_rows(vectors, valid, tmp_path / "sq.faiss", "SQ8", block=16)


def test_streamed_flat_index_read_back_memory_mapped_searches_like_brute_force(tmp_path, table):
    vectors, valid = table
    path = tmp_path / "flat.faiss"
    write_faiss_index_from_rows(vectors, valid, path, "Flat", block=64)
    index = read_faiss_index(path, mmap=True)
    rows = np.flatnonzero(valid)
    for query in (vectors[5].astype(np.float32), np.random.default_rng(2).standard_normal(16)):
        truth = brute_force(vectors[rows].astype(np.float32), query)
        scores, found = search(index, query, 10)
        order = np.argsort(-truth, kind="stable")[:10]
        assert list(found[0]) == list(rows[order])
        np.testing.assert_allclose(scores[0], truth[order], rtol=1e-5, atol=1e-6)


def test_a_float32_input_is_not_normalised_in_place(tmp_path, table):
    vectors = table[0].astype(np.float32)
    before = vectors.copy()
    write_faiss_index_from_rows(vectors, np.ones(len(vectors), bool), tmp_path / "f.faiss", "Flat", block=64)
    faiss_index_from_rows(vectors, np.ones(len(vectors), bool))
    np.testing.assert_array_equal(vectors, before)


def test_sq8_streamed_index_finds_each_row_first(tmp_path, table):
    vectors, valid = table
    path = tmp_path / "sq8.faiss"
    write_faiss_index_from_rows(vectors, valid, path, "SQ8", train_rows=300, block=64)
    index = read_faiss_index(path)
    rows = np.flatnonzero(valid)[::25]
    _, found = search(index, vectors[rows].astype(np.float32), 1)
    assert list(found[:, 0]) == list(rows)


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW8", "PCA8,Flat"])
def test_ivf_hnsw_and_pre_transforms_are_built_in_memory(tmp_path, table, factory):
    vectors, valid = table
    path = tmp_path / "other.faiss"
    assert not write_faiss_index_from_rows(vectors, valid, path, factory, train_rows=300, block=64)
    assert read_faiss_index(path).ntotal == valid.sum()


def test_self_check_mismatch_falls_back_to_the_in_memory_index(tmp_path, table, monkeypatch):
    vectors, valid = table
    real = faiss_stream.derive_layout

    def off_by_one(inner):  # as if faiss had added a field after the id map
        return dataclasses.replace(real(inner), outer_tail=b"\0")

    monkeypatch.setattr(faiss_stream, "derive_layout", off_by_one)
    written = []
    monkeypatch.setattr(search_mod, "write_faiss_index", lambda index, path: written.append(path) or
                        faiss.write_index(index, str(path)))
    path = tmp_path / "fallback.faiss"
    with pytest.warns(RuntimeWarning, match="building it in memory"):
        assert not write_faiss_index_from_rows(vectors, valid, path, "SQ8", train_rows=300, block=64)
    assert written == [path]
    assert path.read_bytes() == in_memory_bytes(tmp_path, vectors, valid, "SQ8")


def test_layout_is_derived_from_faiss_and_self_checked():
    inner = faiss.index_factory(16, "Flat", faiss.METRIC_INNER_PRODUCT)
    layout = faiss_stream.derive_layout(inner)
    assert layout is not None and faiss_stream.self_check(inner, layout)
    assert layout.head[:4] == b"IxM2" and layout.head[layout.inner_at : layout.inner_at + 4] == b"IxFI"
    assert layout.units_per_row == 16  # Flat writes its codes vector's length in floats
    assert faiss_stream.stream_layout(faiss.index_factory(16, "LSQ2x4", faiss.METRIC_INNER_PRODUCT)) is None
    broken = dataclasses.replace(layout, units_per_row=64)
    assert not faiss_stream.self_check(inner, broken)
