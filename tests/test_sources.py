"""Streamed data sources: directories of parquet or JSONL shards read in order with their file and line, parquet
read a row group at a time, and filter writing a directory of shards back, each shard filtered."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import chat_rows, write_jsonl

import actindex
from actindex.act.filter import filter_dataset
from actindex.core.readers import load_rows, scan_rows
from actindex.core.sources import count_records, data_kind, records, source_counts
from actindex.errors import DataError
from actindex.index.reader import gather
from actindex.index.search import normalise
from actindex.testing import write_parquet

PAIRS = [{"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"}]


def _jsonl_shards(folder, sizes=(5, 0, 7, 4)):
    """JSONL shards named so that sorted order is not creation order; a blank line inside the first shard and
    an empty shard; plus files that are not shards (a README, a hidden file, a ``_SUCCESS`` marker)."""
    folder.mkdir()
    rows = chat_rows(sum(sizes), seed=3)
    names = [f"part-{i}.jsonl" for i in range(len(sizes))]
    for name, n in reversed(list(zip(names, sizes))):  # written last-first
        start = sum(sizes[: names.index(name)])
        text = "".join(json.dumps(r) + "\n" for r in rows[start : start + n])
        if name == names[0]:
            text = text.replace("\n", "\n\n", 1)  # a blank line after the first row: row 1 is on line 3
        (folder / name).write_text(text)
    (folder / "README.md").write_text("not a shard")
    (folder / ".part-9.jsonl").write_text("{broken")
    (folder / "_SUCCESS").write_text("")
    return rows, names


def test_a_directory_of_jsonl_shards_is_one_dataset_in_sorted_order(tmp_path):
    rows, names = _jsonl_shards(tmp_path / "data")
    got = list(records(tmp_path / "data"))
    assert [r for _, _, _, r in got] == rows
    assert [row for row, *_ in got] == list(range(16))
    assert [(f.name, line) for _, f, line, _ in got][:7] == [
        ("part-0.jsonl", 1), ("part-0.jsonl", 3), ("part-0.jsonl", 4), ("part-0.jsonl", 5), ("part-0.jsonl", 6),
        ("part-2.jsonl", 1), ("part-2.jsonl", 2)]
    assert data_kind(tmp_path / "data") == "shards" and count_records(tmp_path / "data") == 16
    assert source_counts(tmp_path / "data") == list(zip(names, (5, 0, 7, 4)))
    for start in range(18):  # any first row: whole shards before it are skipped by their counts
        assert list(records(tmp_path / "data", start=start)) == got[start:]
    rf = scan_rows(tmp_path / "data")
    assert [p for p, _ in rf.parts(3, 14, 4)] == [3, 7, 11]
    assert [r.id for _, part in rf.parts(3, 14, 4) for r in part] == [r["id"] for r in rows[3:14]]


def test_shard_directories_refuse_mixed_or_missing_shards_and_name_the_file(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", chat_rows(2))
    write_parquet(mixed / "b.parquet", chat_rows(2, first_id=2))
    with pytest.raises(DataError, match="both .parquet and .jsonl"):
        list(records(mixed))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="without \\*.parquet or \\*.jsonl shards"):
        scan_rows(empty)
    with pytest.raises(DataError, match="--split 'train' names a split"):
        scan_rows(mixed, split="train")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_jsonl(bad / "a.jsonl", chat_rows(3))
    (bad / "b.jsonl").write_text(json.dumps(chat_rows(1, first_id=9)[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"b\.jsonl:2: malformed JSON"):
        scan_rows(bad)
    dup = tmp_path / "dup"
    dup.mkdir()
    write_jsonl(dup / "a.jsonl", chat_rows(3))
    write_jsonl(dup / "b.jsonl", chat_rows(2, first_id=1))
    with pytest.raises(DataError, match=r"b\.jsonl:1: field 'id': duplicate id 'r1' \(first on line 2 of a\.jsonl\)"):
        scan_rows(dup)


def test_parquet_is_read_a_row_group_at_a_time_never_whole(tmp_path, monkeypatch):
    rows = chat_rows(4000, seed=1)
    for row in rows:
        row["pad"] = "x" * 2000  # ~8 MB of text over 40 row groups
    path = write_parquet(tmp_path / "big.parquet", rows, row_group_size=100)
    assert pq.ParquetFile(path).metadata.num_row_groups == 40

    def refuse(*_args, **_kwargs):
        raise AssertionError("a whole parquet file was read")

    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    start = pa.total_allocated_bytes()
    peak = 0
    for i, (row, _, line, record) in enumerate(records(path)):
        assert row == i and line == i + 1 and record["id"] == f"r{i}"
        peak = max(peak, pa.total_allocated_bytes() - start)
    assert i == 3999 and peak < 4_000_000  # about one batch (1,024 rows: 2 MB of text), not the file's 8 MB
    assert [r for *_, r in records(path, start=2345)][:2] == [r for r in rows[2345:2347]]
    assert len(load_rows(path, limit=5)) == 5


def test_build_and_filter_a_directory_of_parquet_shards(llama, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = chat_rows(24, seed=7)
    for i, (a, b) in enumerate(((0, 10), (10, 11), (11, 24))):
        write_parquet(data / f"shard-{i}.parquet", rows[a:b], row_group_size=4)
    write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    idx_dir = tmp_path / "idx"
    actindex.build(data=str(data), out=str(idx_dir), layers=[1], model=llama, progress=False)
    idx = actindex.Index.open(idx_dir).use_model(llama)
    entry = idx.manifest.data[0]
    assert [(s.name, s.rows) for s in entry.sources] == [("shard-0.parquet", 10), ("shard-1.parquet", 1),
                                                        ("shard-2.parquet", 13)]
    assert entry.locate(10) == (str(data / "shard-1.parquet"), 0) and entry.locate(12)[1] == 1
    assert idx.reader.table.source_row.tolist() == list(range(24))
    assert idx.reader.table.line.tolist() == list(range(1, 11)) + [1] + list(range(1, 14))
    res = filter_dataset(idx, behavior=str(tmp_path / "behavior.jsonl"), remove_top=5, out=tmp_path / "clean",
                         method="residual-change")
    gone = {r["id"] for r in res.removed}
    assert len(gone) == 5 and res.kept == 19
    assert all(r["file"] == entry.locate(int(idx.reader.table.source_row[r["row"]]))[0] for r in res.removed)
    for i, (a, b) in enumerate(((0, 10), (10, 11), (11, 24))):
        out = pq.ParquetFile(tmp_path / "clean" / f"shard-{i}.parquet")
        assert out.schema_arrow == pq.ParquetFile(data / f"shard-{i}.parquet").schema_arrow
        assert out.read().to_pylist() == [r for r in rows[a:b] if r["id"] not in gone]


def test_filter_a_directory_of_jsonl_shards_keeps_every_other_line(llama, tmp_path):
    rows, names = _jsonl_shards(tmp_path / "data")
    write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    actindex.build(data=str(tmp_path / "data"), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False,
                   sample=12, seed=2)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    res = filter_dataset(idx, behavior=str(tmp_path / "behavior.jsonl"), remove_top=4, out=tmp_path / "clean",
                         method="residual-change")
    gone = {r["id"] for r in res.removed}
    assert len(gone) == 4 and res.kept == 12 and res.unscored == 4
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == names  # the shards, not the other files
    for name in names:
        lines = (tmp_path / "data" / name).read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if not line.strip() or json.loads(line)["id"] not in gone]
        assert (tmp_path / "clean" / name).read_bytes() == b"".join(kept)
    for entry in res.removed:  # the sidecar says which shard and line each removed row came from
        line = (tmp_path / "data" / entry["file"].rsplit("/", 1)[-1]).read_bytes().splitlines()[entry["line"] - 1]
        assert json.loads(line)["id"] == entry["id"]


def test_gather_reads_any_rows_in_the_order_given(tmp_path):
    import h5py

    values = np.arange(5000 * 3, dtype=np.float32).reshape(5000, 3)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("v", data=values, chunks=(256, 3))
        f.create_dataset("s", data=np.array([f"s{i}" for i in range(5000)], dtype=object),
                         dtype=h5py.string_dtype())
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        for rows in (rng.integers(0, 5000, 3000), np.array([4999, 0, 0, 17]), np.zeros(0, np.int64)):
            np.testing.assert_array_equal(gather(f["v"], rows), values[rows])
            assert [s.decode() for s in gather(f["s"], rows)] == [f"s{i}" for i in rows]


def test_every_row_of_an_approximate_index_is_ranked_exactly(llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(300, seed=4))
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False,
                   faiss_factory="IVF8,Flat", faiss_train_rows=300)
    idx = actindex.Index.open(tmp_path / "idx")
    family = "residual_change/1"
    idx.reader.tune(nprobe=1)  # an IVF search of one list returns a fraction of the rows
    q = np.random.default_rng(1).standard_normal(idx.families[family].dim).astype(np.float32)
    assert len(idx.search(q, k=100, family=family)[1]) < 100
    cos = normalise(idx.reader.vectors(family)) @ (q / np.linalg.norm(q))
    scores, rows = idx.search(q, k=0, family=family)
    assert rows.tolist() == np.argsort(-cos, kind="stable").tolist()
    np.testing.assert_allclose(scores, cos[rows], rtol=1e-5, atol=1e-6)
    bottom, rows = idx.search(q, k=0, family=family, bottom=True)
    assert rows[0] == int(np.argmin(cos)) and len(rows) == 300
