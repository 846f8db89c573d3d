"""The stored precision of vectors: integer codes with a per-row scale (int4 in the compact default, int8), read
back within half a step of what was computed, searched exactly, kept through append, merge, export and verify."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import chat_rows, write_jsonl

import actindex
from actindex.index.manifest import read_manifest
from actindex.index.precision import DISK_DTYPES, LEVELS, decode, disk_shape, encode, row_bytes, scale_key
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


@pytest.mark.parametrize("dtype", list(LEVELS))
@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize("width", [64, 63])  # an odd width packs a padding code in int4
def test_integer_codes_read_back_within_half_a_step(kind, dtype, width):
    v = ROWS[kind][:, :width].astype(np.float32)
    stored, scales = encode(v, dtype)
    assert stored.shape == disk_shape(len(v), width, dtype) and stored.dtype == np.dtype(DISK_DTYPES[dtype])
    assert scales.dtype == np.float32 and scales.shape == (len(v),)
    assert stored.nbytes + scales.nbytes == len(v) * row_bytes(width, dtype)
    back = decode(stored, scales, width)
    assert back.shape == v.shape and back.dtype == np.float32 and np.isfinite(back).all()
    peak = np.abs(v).max(axis=1)
    # |s c_j - v_j| <= s / 2 = m / 2L, with float32's own rounding on top
    bound = peak / (2 * LEVELS[dtype]) * (1 + 1e-5) + 1e-45
    assert (np.abs(back - v).max(axis=1) <= bound).all()
    assert np.array_equal(scales == 0, peak == 0)  # a zero row is zero codes and scale 0
    assert np.array_equal(np.abs(np.rint(back / np.where(scales > 0, scales, 1)[:, None])).max(axis=1, initial=0)
                          == LEVELS[dtype], peak > 0)  # a row's largest coordinate takes the largest code
    # re-encoding what a row reads back gives its codes again (an append copies its base this way)
    again, _ = encode(back, dtype)
    assert np.array_equal(again, stored)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_stores_have_no_scale(dtype):
    stored, scales = encode(ROWS["gaussian"], dtype)
    assert scales is None and stored.dtype == np.dtype(dtype)
    assert np.array_equal(decode(stored, None), stored.astype(np.float32))


@pytest.fixture()
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", chat_rows(6))


def build(llama, data, out, **options):
    return actindex.build(data=str(data), out=str(out), model=llama, progress=False, heldout="none", **options)


@pytest.mark.parametrize("dtype", ["int4", "int8"])
def test_an_integer_store_reads_back_within_half_a_step_of_float32(llama, rows_file, tmp_path, dtype):
    """The model is 32 wide, under the default width: the rows are rotated (32 x 32) and every dimension kept."""
    codes = build(llama, rows_file, tmp_path / "codes", **({} if dtype == "int4" else {"store_dtype": dtype}))
    build(llama, rows_file, tmp_path / "f32", store_dtype="float32")
    assert {f.dtype for f in codes.families.values()} == {dtype}  # int4 is the default
    assert codes.reduction.hidden == codes.reduction.width == 32
    assert verify(tmp_path / "codes") == []
    a, b = IndexReader.open(tmp_path / "codes"), IndexReader.open(tmp_path / "f32")
    assert b.reduction is None  # a float store of a model no wider than --width is stored as computed
    rotation = a.reduction.matrix
    assert np.allclose(rotation.T @ rotation, np.eye(32), atol=1e-5)
    with h5py.File(tmp_path / "codes" / "vectors.h5") as f:
        for family in codes.families:
            assert f[f"vectors/{family}"].dtype == np.dtype(DISK_DTYPES[dtype])
            assert f[scale_key(family)].shape == (codes.rows,)
    for family in codes.families:
        truth = b.vectors(family) @ rotation if "/" in family else b.vectors(family)
        bound = np.abs(truth).max(axis=1, keepdims=True) / (2 * LEVELS[dtype]) * (1 + 1e-4) + 1e-30
        assert (np.abs(a.vectors(family) - truth) <= bound).all(), family
        assert np.array_equal(a.vectors(family, [4, 1, 1]), a.vectors(family)[[4, 1, 1]])
    assert codes.summary["vector_bytes_per_row"] == sum(row_bytes(f.dim, dtype) for f in codes.families.values())


def test_an_integer_family_is_searched_exactly(llama, rows_file, tmp_path):
    build(llama, rows_file, tmp_path / "idx")
    idx = actindex.Index.open(tmp_path / "idx")
    for i, family in enumerate(idx.families):
        psi = np.random.default_rng(i).standard_normal(32).astype(np.float32)
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
    assert m.rows == 7 and {f.dtype for f in m.families.values()} == {"int4"} and verify(root) == []
    reader = IndexReader.open(root)
    with h5py.File(root / "vectors.h5") as f:
        for family, old in codes.items():
            assert np.array_equal(f[f"vectors/{family}"][:4], old), family
            assert np.array_equal(reader.vectors(family, range(4)), before[family]), family
    shards = [build(llama, first, tmp_path / f"s{i}", shard=f"{i}/2") and tmp_path / f"s{i}" for i in range(2)]
    merged = actindex.merge([str(s) for s in shards], str(tmp_path / "merged"))
    assert {f.dtype for f in merged.families.values()} == {"int4"} and verify(tmp_path / "merged") == []
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


def test_a_residual_stream_vector_is_searched_in_model_space(llama, rows_file, tmp_path):
    """The 32-wide model is rotated at its own width: a 32-dim vector is taken as stored unless said otherwise."""
    build(llama, rows_file, tmp_path / "idx")
    idx = actindex.Index.open(tmp_path / "idx")
    family = "residual_change/3"
    residual = np.random.default_rng(5).standard_normal(32)
    stored = idx.reader.reduction.project(residual[None])[0]
    assert idx.search(residual, k=6, family=family, space="model")[1].tolist() == idx.search(
        stored, k=6, family=family)[1].tolist()
    truth = brute_force(idx.reader.vectors(family), stored)
    assert idx.search(residual, k=6, family=family, space="model")[1].tolist() == np.argsort(-truth,
                                                                                              kind="stable")[:6].tolist()
    with pytest.raises(actindex.ActindexError, match="space must be"):
        idx.search(residual, family=family, space="residual")
