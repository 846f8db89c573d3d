"""How a family's vectors are stored: their precision on disk, and how they read back as float32.

* ``float32``: as computed.
* ``float16``: half the bytes, but a value past 65,504 becomes inf (the raw residual change of a long row can
  pass it).
* ``int8`` and ``int4``: each row ``v`` as integer codes ``c = round(L v / m)`` in ``[-L, L]`` with
  ``m = max_j |v_j|`` (L = 127 for int8, 7 for int4), and one float32 scale ``s = m / L`` per row
  (``vectors/FAMILY`` holds the codes, int4 two to a byte; ``scales/FAMILY`` holds ``s``). A row reads back as
  ``v' = s c``, within ``s / 2 = m / 2L`` of ``v`` in every coordinate whatever the row's magnitude. A zero row
  is stored as zero codes and scale 0.

An integer store is only as good as ``m`` is small against a row's typical coordinate. A residual stream has a
few outsized coordinates, hundreds of times the others: the storage projection (:mod:`actindex.core.reduction`)
rotates every per-layer vector first, which spreads them over all coordinates, so a rotated row is close to
Gaussian and ``m`` is about 3 typical coordinates. The rounding error is then a nearly independent
``e_j ~ U(-s/2, s/2)`` per coordinate, so for unit vectors the cosine with any fixed query moves by about
``|e| / |v| / sqrt(d) = (m / L) / (sqrt(12) sigma sqrt(d))``: ~0.005 for int4 at d = 576, and 20x less for
int8. Dropping dimensions instead (a projection to k < d) moves it by about ``sqrt((1 - k/d) / k)``: 0.05 for
k = 256 of 576. Hence the compact default keeps every dimension of the rotation up to its width and spends
4 bits on each (bench/runs/storage.md measures both against the default's rankings).

:class:`StoredRows` reads a family's rows as float32 wherever code wants "the vectors" (searches, FAISS
training, exports), so no reader handles codes itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the stored dtypes a build may ask for (``auto``: :meth:`~actindex.index.config.BuildConfig.stored_dtype`)
STORE_DTYPES = ("auto", "float32", "float16", "int8", "int4")
#: the largest code of each integer store: codes lie in ``[-L, L]`` (symmetric, so ``-v`` is stored as ``-c``)
LEVELS = {"int8": 127, "int4": 7}
#: the on-disk dtype of each store (int4: two codes a byte, each offset by 8 into ``0..15``)
DISK_DTYPES = {"float32": "float32", "float16": "float16", "int8": "int8", "int4": "uint8"}


def scale_key(family: str) -> str:
    """The dataset of ``vectors.h5`` that holds an integer family's per-row scales."""
    return f"scales/{family}"


def has_scales(dtype: str) -> bool:
    """Whether a family stored in ``dtype`` keeps a per-row scale beside its vectors."""
    return dtype in LEVELS


def disk_shape(rows: int, dim: int, dtype: str) -> tuple[int, int]:
    """The shape of the dataset that stores ``rows`` rows of ``dim`` dims in ``dtype``."""
    return rows, -(-dim // 2) if dtype == "int4" else dim


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes one row of a ``dim``-wide family takes in ``dtype``, its scale included."""
    cols = disk_shape(1, dim, dtype)[1]
    return cols * np.dtype(DISK_DTYPES[dtype]).itemsize + (4 if has_scales(dtype) else 0)


def encode(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(stored rows, per-row scales or None)`` of float vectors (n, d) in ``dtype``: for an integer store
    ``c = round(L v / m)``, ``s = m / L`` with ``m = max_j |v_j|`` (the module docstring); else the rows cast."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if not has_scales(dtype):
        return vectors.astype(dtype, copy=False), None
    levels = LEVELS[dtype]
    peak = np.abs(vectors).max(axis=1, initial=0.0)
    safe = np.where(peak > 0, peak, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors * (levels / safe)[:, None]), -levels, levels).astype(np.int8)
    scales = (peak / levels).astype(np.float32)
    if dtype == "int8":
        return codes, scales
    if codes.shape[1] % 2:  # an odd width: one padding code, 0
        codes = np.hstack([codes, np.zeros((len(codes), 1), np.int8)])
    offset = (codes + 8).astype(np.uint8)
    return offset[:, 0::2] | (offset[:, 1::2] << 4), scales


def decode(stored: np.ndarray, scales: np.ndarray | None, dim: int | None = None) -> np.ndarray:
    """The float32 vectors that ``stored`` rows stand for: ``s c`` for an integer store (int4 codes unpacked from
    their bytes and cut to ``dim``), else the rows."""
    stored = np.asarray(stored)
    if stored.dtype == np.uint8:  # int4: each byte is two codes, looked up at once
        out = _NIBBLES[stored].reshape(len(stored), 2 * stored.shape[1])
        out = out[:, :dim] if dim is not None and dim < out.shape[1] else out
    else:
        out = stored.astype(np.float32, copy=scales is not None)  # scaled in place below: never the input
    if scales is not None:
        out *= np.asarray(scales, dtype=np.float32)[:, None]
    return out


#: byte -> its two int4 codes (low nibble first), as float32: ``(b & 15) - 8, (b >> 4) - 8``
_NIBBLES = np.stack([(np.arange(256) & 15) - 8, (np.arange(256) >> 4) - 8], axis=1).astype(np.float32)


class StoredRows:
    """A stored family read as the float32 vectors it stands for, with the verbs code reads a dataset by:
    ``shape`` (rows, dim), ``rows[a:b]`` and ``rows[sorted row numbers]`` (decoded, :func:`decode`)."""

    def __init__(self, stored: Any, scales: Any | None, dim: int):
        self.stored, self.scales, self.dim = stored, scales, dim

    @classmethod
    def of(cls, f: Any, family: str, dim: int) -> StoredRows:
        """The rows of ``family`` in the open HDF5 file ``f`` (its scales where it has them)."""
        key = scale_key(family)
        return cls(f[f"vectors/{family}"], f[key] if key in f else None, dim)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.stored.shape[0]), self.dim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        return decode(self.stored[rows], None if self.scales is None else self.scales[rows], self.dim)
