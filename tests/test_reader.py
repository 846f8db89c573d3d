"""Reading stored rows: the memory-mapped row reader equals HDF5's own reads, and refuses what it cannot read."""

from __future__ import annotations

import mmap

import h5py
import numpy as np
import pytest

from actindex.index.reader import RowMap, gather


def mapped(path, key):
    f = h5py.File(path, "r")
    buffer = mmap.mmap(f.id.get_vfd_handle(), 0, access=mmap.ACCESS_READ)
    return f, f[key], RowMap.of(buffer, f[key])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
@pytest.mark.parametrize("rows,chunk", [(1000, 256), (257, 256), (5, 4)])
def test_row_map_reads_what_hdf5_reads(tmp_path, dtype, rows, chunk):
    rng = np.random.default_rng(rows)
    data = (rng.standard_normal((rows, 7)) * 100).astype(dtype)
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.arange(rows))  # something before the vectors: offsets are not 0
        f.create_dataset("x", data=data, chunks=(chunk, 7))
    f, ds, row_map = mapped(path, "x")
    assert row_map is not None
    picks = [rng.integers(0, rows, 300), np.array([rows - 1, 0, rows - 1]), np.zeros(0, np.int64),
             np.arange(rows)[::-1]]
    for pick in picks:
        got = row_map.read(pick)
        assert got.dtype == data.dtype and got.shape == (len(pick), 7)
        np.testing.assert_array_equal(got, data[pick])
        np.testing.assert_array_equal(got, gather(ds, pick))
    with pytest.raises(IndexError):
        row_map.read(np.array([rows]))
    f.close()


@pytest.mark.parametrize("layout", [{"compression": "gzip", "chunks": (16, 4)}, {"chunks": None},
                                    {"chunks": (16, 2)}, {"chunks": (16, 4), "fletcher32": True}])
def test_row_map_refuses_what_it_cannot_read_exactly(tmp_path, layout):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.ones((64, 4), np.float32), **layout)
    f, _, row_map = mapped(path, "x")
    assert row_map is None
    f.close()


def test_row_map_refuses_unwritten_chunks(tmp_path):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(64, 4), dtype=np.float32, chunks=(16, 4))
        ds[:16] = 1.0  # chunks 1-3 never written: HDF5 reads them as the fill value, the file has no bytes
    f, _, row_map = mapped(path, "x")
    assert row_map is None
    f.close()


def test_records_are_read_once_and_handed_out_fresh(planted_index, monkeypatch):
    from conftest import planted_rows

    from actindex.index import reader as reader_module

    idx = planted_index(30, 4, 7)
    truth = {i: row for i, row in enumerate(planted_rows(30, 4, 7))}  # the rows as written, in order
    reads = []
    monkeypatch.setattr(reader_module, "gather", lambda ds, rows: reads.append(list(rows)) or gather(ds, rows))
    monkeypatch.setattr(reader_module, "RECORDS_KEPT", 16)  # reads of up to 4 rows are kept
    r = idx.reader
    rows = [7, 3, 7, 9]
    first = r.records(rows)
    assert first == [truth[7], truth[3], truth[7], truth[9]] and reads == [[3, 7, 9]]
    first[0]["id"] = "changed"  # a caller's object is its own
    assert r.records(rows) == [truth[7], truth[3], truth[7], truth[9]] and len(reads) == 1  # no HDF5 read
    assert r.records([3, 11]) == [truth[3], truth[11]] and reads[-1] == [11]  # only the row not yet read
    assert r.records(list(range(20))) == [truth[i] for i in range(20)]  # a large read: not kept
    for more in ([12, 13, 14, 15], [16, 17, 18, 19], [0, 1, 2, 4], [5, 6, 8, 10]):  # 20 rows: the first 4 let go
        r.records(more)
    reads.clear()
    assert r.records([12, 7]) == [truth[12], truth[7]] and reads == [[7]]
