"""How a family's vectors are stored: their precision on disk, and how they read back as float32.

* ``float32``: as computed.
* ``float16``: half the bytes, but a value past 65,504 becomes inf (the residual change of a long row can pass it).
* ``int8``: each row ``v`` as codes ``c = round(127 v / m)`` with ``m = max_j |v_j|``, and one float32 scale
  ``s = m / 127`` per row (``vectors/FAMILY`` holds ``c``, ``scales/FAMILY`` holds ``s``); it reads back as
  ``v' = s c``, within ``s / 2 = m / 254`` of ``v`` in every coordinate whatever the row's magnitude. A row and
  its codes point the same way up to that rounding, so a cosine can be computed from the codes alone (a search
  never needs the scale); the scale is read where a magnitude matters (projections, exports). A zero row is
  stored as zero codes and scale 0.

In the compact layout every per-layer vector is first rotated by the storage projection
(:mod:`actindex.core.reduction`), which spreads a residual stream's few outsized coordinates over all of them:
``m`` is then a few times the coordinates' typical size, so the rounding costs little of a row's direction.
bench/runs/storage.md measures what each precision keeps of the default's rankings.
"""

from __future__ import annotations

import numpy as np

#: the stored dtypes a build may ask for (``auto``: :meth:`~actindex.index.config.BuildConfig.stored_dtype`)
STORE_DTYPES = ("auto", "float32", "float16", "int8")
#: the largest int8 code: codes lie in ``[-127, 127]`` (symmetric, so ``-v`` is stored as ``-c``)
LEVELS = 127


def scale_key(family: str) -> str:
    """The dataset of ``vectors.h5`` that holds an int8 family's per-row scales."""
    return f"scales/{family}"


def has_scales(dtype: str) -> bool:
    """Whether a family stored in ``dtype`` keeps a per-row scale beside its vectors."""
    return dtype == "int8"


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes one row of a ``dim``-wide family takes in ``dtype``: ``dim x itemsize``, plus 4 for an int8 row's
    scale."""
    return dim * np.dtype(dtype).itemsize + (4 if has_scales(dtype) else 0)


def encode(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(stored rows, per-row scales or None)`` of float vectors (n, d) in ``dtype``: for int8
    ``c = round(127 v / m)``, ``s = m / 127`` with ``m = max_j |v_j|`` (the module docstring); else the rows cast."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if not has_scales(dtype):
        return vectors.astype(dtype, copy=False), None
    peak = np.abs(vectors).max(axis=1, initial=0.0)
    safe = np.where(peak > 0, peak, 1.0).astype(np.float32)
    codes = np.rint(vectors * (LEVELS / safe)[:, None])
    return np.clip(codes, -LEVELS, LEVELS).astype(np.int8), (peak / LEVELS).astype(np.float32)


def decode(stored: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The float32 vectors that ``stored`` rows (and their ``scales``, for int8) stand for: ``s c`` or the rows."""
    out = np.asarray(stored, dtype=np.float32)
    return out if scales is None else out * np.asarray(scales, dtype=np.float32)[:, None]
