"""Write a flat-coded FAISS index (``Flat``, ``SQ8``, ``PQ16``...) in an ``IndexIDMap2`` to disk block by block.

``faiss.write_index`` needs the whole index in memory: for ``Flat`` every vector (2.3 KB a row at
width 576), for ``SQ8`` one byte per dimension, plus the id map. A flat-coded index (a subclass of
``faiss.IndexFlatCodes``) serialises as (faiss/impl/index_write.cpp)::

    "IxM2" header(ntotal)  <inner fourcc> header(ntotal) <quantizer parameters>
    codes: u64 length, bytes      <inner tail (IndexPQ: search params)>
    id_map: u64 length, int64s    <outer tail (nothing as of faiss 1.15)>

where ``header`` is ``d`` (int32) then ``ntotal`` (int64) then dummies, ``is_trained`` and the
metric. Everything but the two ``ntotal``, the two vectors and their lengths is taken from faiss
itself (:func:`derive_layout`: the trained index serialised empty and with one row), and the codes
are ``inner.sa_encode`` of each block of rows, as ``add`` computes them. :func:`stream_layout`
first stream-writes a 3-row index and compares it with ``faiss.serialize_index`` of the same index
built in memory; on any difference (a future format change) it returns ``None`` and the caller
keeps the in-memory path, so the shortcut can never write a file faiss would not.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import faiss
import numpy as np

#: byte offset of ``ntotal`` in a serialised index: after the fourcc (4 bytes) and ``d`` (int32)
NTOTAL_AT = 8
U64 = struct.Struct("=Q")  # faiss writes native-endian ``size_t`` / ``idx_t``


@dataclass(frozen=True)
class FlatCodesLayout:
    """The bytes of an ``IndexIDMap2`` around a trained flat-coded index, minus its rows."""

    head: bytes  #: outer header, inner header and quantizer parameters, both ``ntotal`` = 0
    inner_at: int  #: offset of the inner index's fourcc in ``head``
    units_per_row: int  #: the codes vector's length field per row (bytes; floats for ``Flat``)
    inner_tail: bytes  #: what the inner index writes after its codes
    outer_tail: bytes  #: what ``IndexIDMap2`` writes after its id map


def supported(inner: faiss.Index) -> bool:
    """Whether ``inner`` is flat-coded with a per-row deterministic encoder: its codes do not
    depend on how rows are grouped into blocks (not so for LSQ, whose encoder is randomised)."""
    concrete = faiss.downcast_index(inner)  # a view: ``inner`` keeps owning the index
    randomised = (faiss.IndexLocalSearchQuantizer, faiss.IndexProductLocalSearchQuantizer)
    return isinstance(concrete, faiss.IndexFlatCodes) and not isinstance(concrete, randomised) and inner.is_trained


def _sample_rows(dim: int, n: int) -> np.ndarray:
    """``n`` seeded unit rows of width ``dim`` (float32), to probe the serialisation with."""
    rows = np.random.default_rng(12345).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _with_count(data: bytes, at: int, n: int) -> bytes:
    """``data`` with the int64 ``ntotal`` at byte ``at`` set to ``n``."""
    return data[:at] + U64.pack(n) + data[at + U64.size :]


def _filled(inner: faiss.Index, rows: np.ndarray, ids: np.ndarray | None = None) -> faiss.Index:
    """A copy of ``inner`` with ``rows`` added (in an ``IndexIDMap2`` with ``ids`` when given)."""
    copy = faiss.clone_index(inner)
    if ids is None:
        copy.add(rows)
        return copy
    index = faiss.IndexIDMap2(copy)
    index.add_with_ids(rows, ids)
    return index


def derive_layout(inner: faiss.Index) -> FlatCodesLayout | None:
    """The layout of ``inner`` (trained, empty) wrapped in ``IndexIDMap2``, read off faiss's own output.

    ``E`` = the wrapped empty index serialised, ``I0``/``I1`` = the inner index serialised empty /
    with one row of codes ``c``. ``I0`` sits in ``E`` followed by the empty id map (a zero u64);
    the codes vector's length field is the offset ``p`` where ``I1`` = ``I0[:p]`` (``ntotal`` 1)
    + length + ``c`` + ``I0[p+8:]``. ``None`` if no such split exists.
    """
    empty = faiss.clone_index(inner)
    i0 = bytes(faiss.serialize_index(empty))
    outer = bytes(faiss.serialize_index(faiss.IndexIDMap2(empty)))
    inner_at = outer.find(i0)
    after = inner_at + len(i0)
    if inner_at < NTOTAL_AT + U64.size or outer[after : after + U64.size] != U64.pack(0):
        return None
    row = _sample_rows(inner.d, 1)
    code = inner.sa_encode(row).tobytes()
    i1 = bytes(faiss.serialize_index(_filled(inner, row)))
    if len(i1) != len(i0) + len(code):
        return None
    at = i1.find(code)
    while at >= 0:
        p = at - U64.size
        if (p >= NTOTAL_AT + U64.size and i0[p:at] == U64.pack(0) and i1[at + len(code) :] == i0[at:]
                and i1[:p] == _with_count(i0, NTOTAL_AT, 1)[:p]):
            (units,) = U64.unpack(i1[p:at])
            head = outer[:inner_at] + i0[:p]
            return FlatCodesLayout(head, inner_at, units, i0[at:], outer[after + U64.size :])
        at = i1.find(code, at + 1)
    return None


def write_stream(
    out: BinaryIO,
    inner: faiss.Index,
    layout: FlatCodesLayout,
    ntotal: int,
    row_blocks: Iterable[np.ndarray],
    id_blocks: Iterable[np.ndarray],
) -> None:
    """Write an ``IndexIDMap2`` of ``ntotal`` rows to ``out``: the codes of each block of
    ``row_blocks`` (normalised float32, ``inner.sa_encode``), then the ids in ``id_blocks``; both
    must hold exactly ``ntotal`` rows in the same order."""
    head = _with_count(_with_count(layout.head, NTOTAL_AT, ntotal), layout.inner_at + NTOTAL_AT, ntotal)
    out.write(head + U64.pack(ntotal * layout.units_per_row))
    rows_written = 0
    for rows in row_blocks:
        out.write(np.ascontiguousarray(inner.sa_encode(rows)))  # the buffer itself, no bytes copy
        rows_written += len(rows)
        del rows  # not held while the next block is read
    out.write(layout.inner_tail + U64.pack(ntotal))
    ids_written = 0
    for ids in id_blocks:
        out.write(np.ascontiguousarray(ids, dtype=np.int64))
        ids_written += len(ids)
    out.write(layout.outer_tail)
    if rows_written != ntotal or ids_written != ntotal:
        raise RuntimeError(f"streamed FAISS index: {rows_written} rows, {ids_written} ids, expected {ntotal}")


def self_check(inner: faiss.Index, layout: FlatCodesLayout) -> bool:
    """Whether :func:`write_stream` of 3 rows (ids 11, 3, 7, two blocks) gives the very bytes of
    ``faiss.serialize_index`` of the same ``IndexIDMap2`` built in memory."""
    rows, ids = _sample_rows(inner.d, 3), np.array([11, 3, 7], np.int64)
    expected = bytes(faiss.serialize_index(_filled(inner, rows, ids)))
    out = io.BytesIO()
    try:
        write_stream(out, inner, layout, 3, [rows[:2], rows[2:]], [ids[:1], ids[1:]])
    except RuntimeError:
        return False
    return out.getvalue() == expected


def stream_layout(inner: faiss.Index) -> FlatCodesLayout | None:
    """The layout to stream ``inner`` (trained, empty) with, or ``None`` where the caller must
    build the index in memory: not flat-coded (IVF, HNSW, pre-transforms...), or the layout fails
    :func:`self_check` (warned: the in-memory path is then taken)."""
    if not supported(inner):
        return None
    layout = derive_layout(inner)
    if layout is None or not self_check(inner, layout):
        kind = type(faiss.downcast_index(inner)).__name__
        warnings.warn(
            f"streamed writing of a FAISS {kind} does not reproduce faiss {faiss.__version__}'s format; "
            "building it in memory instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return layout
