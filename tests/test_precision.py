"""The stored precision of vectors: int8 codes with a per-row scale (the compact default), read back within half
a step of what was computed, searched from the codes alone, kept through append, merge, export and verify."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import chat_rows, write_jsonl

import actindex
from actindex.index.manifest import read_manifest
from actindex.index.precision import LEVELS, decode, encode, scale_key
from actindex.index.reader import IndexReader, layout_problem
from actindex.index.search import brute_force
from actindex.index.verify import verify

RNG = np.random.default_rng(0)
#: rows an int8 store must keep within half a step: the kinds of row a build computes, and the edge cases
ROWS = {
    "gaussian": RNG.standard_normal((50, 64)),
    "one outsized coordinate": np.hstack([RNG.standard_normal((50, 63)), np.full((50, 1), 1e4)]),
    "tiny magnitude": 1e-30 * RNG.standard_normal((50, 64)),
    "huge magnitude": 1e30 * RNG.standard_normal((50, 64)),
    "one nonzero": np.eye(64)[:50] * -3.5,
    "zero": np.zeros((5, 64)),
    "negative": -np.abs(RNG.standard_normal((50, 64))),
}


@pytest.mark.parametrize("kind", list(ROWS))
def test_int8_codes_read_back_within_half_a_step(kind):
    v = ROWS[kind].astype(np.float32)
    codes, scales = encode(v, "int8")
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (len(v),)
    assert np.abs(codes.astype(int)).max() <= LEVELS
    peak = np.abs(v).max(axis=1)
    # |s c_j - v_j| <= s / 2 = m / 254, with float32's own rounding on top
    bound = peak / (2 * LEVELS) * (1 + 1e-5) + 1e-45
    assert (np.abs(decode(codes, scales) - v).max(axis=1) <= bound).all()
    assert np.array_equal(scales == 0, peak == 0)  # a zero row is zero codes and scale 0
    assert np.isfinite(decode(codes, scales)).all()
    # re-encoding what a row reads back gives its codes again (an append copies its base this way)
    again, _ = encode(decode(codes, scales), "int8")
    assert np.array_equal(again, codes)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_stores_have_no_scale(dtype):
    stored, scales = encode(ROWS["gaussian"], dtype)
    assert scales is None and stored.dtype == np.dtype(dtype)
    assert np.array_equal(decode(stored, None), stored.astype(np.float32))


@pytest.fixture()
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", chat_rows(6))


def build(llama, data, out, **options):
    return actindex.build(data=str(data), out=str(out), model=llama, progress=False, heldout="none", width=16,
                          full_width=False, **options)


def test_the_compact_default_stores_int8_within_half_a_step_of_float32(llama, rows_file, tmp_path):
    codes = build(llama, rows_file, tmp_path / "int8")
    build(llama, rows_file, tmp_path / "f32", store_dtype="float32")
    assert {f.dtype for f in codes.families.values()} == {"int8"}
    assert verify(tmp_path / "int8") == []
    a, b = IndexReader.open(tmp_path / "int8"), IndexReader.open(tmp_path / "f32")
    with h5py.File(tmp_path / "int8" / "vectors.h5") as f:
        for family in codes.families:
            assert f[f"vectors/{family}"].dtype == np.int8 and f[scale_key(family)].shape == (codes.rows,)
    for family in codes.families:
        truth = b.vectors(family)
        bound = np.abs(truth).max(axis=1, keepdims=True) / (2 * LEVELS) * (1 + 1e-4) + 1e-30
        assert (np.abs(a.vectors(family) - truth) <= bound).all(), family
        assert np.array_equal(a.vectors(family, [4, 1, 1]), a.vectors(family)[[4, 1, 1]])
    # vectors in the compact default cost one byte a dimension and a 4-byte scale
    per_row = sum(f.dim + 4 for f in codes.families.values())
    assert codes.summary["vector_bytes_per_row"] == per_row


def test_an_int8_family_is_searched_exactly_from_its_codes(llama, rows_file, tmp_path):
    build(llama, rows_file, tmp_path / "idx")
    idx = actindex.Index.open(tmp_path / "idx")
    for i, family in enumerate(idx.families):
        psi = np.random.default_rng(i).standard_normal(16).astype(np.float32)
        truth = brute_force(idx.reader.vectors(family), psi)  # the decoded rows
        scores, rows = idx.search(psi, k=6, family=family)
        assert rows.tolist() == np.argsort(-truth, kind="stable")[:6].tolist()
        assert np.allclose(scores, truth[rows], atol=1e-5)


def test_append_and_merge_keep_the_codes_of_rows_already_stored(llama, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", chat_rows(4))
    second = write_jsonl(tmp_path / "b.jsonl", chat_rows(3, seed=1, first_id=4))
    root = build(llama, first, tmp_path / "idx") and tmp_path / "idx"
    before = {family: (IndexReader.open(root).vectors(family)) for family in read_manifest(root).families}
    with h5py.File(root / "vectors.h5") as f:
        codes = {family: f[f"vectors/{family}"][()] for family in before}
    m = actindex.build(data=str(second), out=str(root), model=llama, progress=False, append=True, heldout="none")
    assert m.rows == 7 and {f.dtype for f in m.families.values()} == {"int8"} and verify(root) == []
    reader = IndexReader.open(root)
    with h5py.File(root / "vectors.h5") as f:
        for family, old in codes.items():
            assert np.array_equal(f[f"vectors/{family}"][:4], old), family
            assert np.array_equal(reader.vectors(family, range(4)), before[family]), family
    shards = [build(llama, first, tmp_path / f"s{i}", shard=f"{i}/2") and tmp_path / f"s{i}" for i in range(2)]
    merged = actindex.merge([str(s) for s in shards], str(tmp_path / "merged"))
    assert {f.dtype for f in merged.families.values()} == {"int8"} and verify(tmp_path / "merged") == []
    whole = IndexReader.open(tmp_path / "merged")
    for family in merged.families:
        parts = np.vstack([IndexReader.open(s).vectors(family) for s in shards])
        assert np.array_equal(whole.vectors(family), parts), family


def test_export_writes_the_decoded_vectors(llama, rows_file, tmp_path):
    build(llama, rows_file, tmp_path / "idx")
    out = tmp_path / "rows.parquet"
    actindex.export(str(tmp_path / "idx"), str(out))
    table = pq.read_table(out)
    reader = IndexReader.open(tmp_path / "idx")
    for family in reader.families:
        column = np.array(table.column(family).to_pylist(), dtype=np.float32)
        assert np.array_equal(column, reader.vectors(family)), family


def test_damaged_or_missing_scales_are_caught(llama, rows_file, tmp_path):
    root = tmp_path / "idx"
    build(llama, rows_file, root)
    family = next(iter(read_manifest(root).families))
    changed = shutil.copytree(root, tmp_path / "changed")
    with h5py.File(changed / "vectors.h5", "a") as f:
        f[scale_key(family)][0] *= 2
    assert any(scale_key(family) in p and "checksum mismatch" in p for p in verify(changed))
    missing = shutil.copytree(root, tmp_path / "missing")
    with h5py.File(missing / "vectors.h5", "a") as f:
        del f[scale_key(family)]
    assert any(scale_key(family) in p and "missing" in p for p in verify(missing))
    assert "without one scale per row" in layout_problem(missing, read_manifest(missing))
