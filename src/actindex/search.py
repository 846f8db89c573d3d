"""Stage 6 — search: FAISS indexes over normalised vectors, so inner product = cosine similarity.

Each family's index maps FAISS ids to row numbers of ``vectors.h5`` (rows with a non-finite
loss or vector are never added). ``Flat`` (the default) is exact; any FAISS factory string
(``IVF1024,Flat``, ``HNSW32``, ``IVF4096,PQ64``...) can be given for large indexes and is trained
on the vectors being added.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .errors import ActindexError


def normalise(vectors: np.ndarray) -> np.ndarray:
    """``v / ||v||`` row-wise (zero rows stay zero), float32, C-contiguous."""
    out = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if out.ndim == 1:
        out = out[None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def build_faiss_index(vectors: np.ndarray, row_ids: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """An inner-product FAISS index over the normalised ``vectors``, with ids ``row_ids``."""
    dim = vectors.shape[1]
    data = normalise(vectors) if len(vectors) else np.zeros((0, dim), np.float32)
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ActindexError(f"invalid --faiss-factory {factory!r}: {str(err).splitlines()[-1]}") from None
    if not inner.is_trained:
        if len(data) == 0:
            raise ActindexError(f"--faiss-factory {factory!r} needs training rows, but no row is valid")
        inner.train(data)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(data, np.asarray(row_ids, dtype=np.int64))
    return index


def write_faiss_index(index: faiss.Index, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def read_faiss_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by cosine with ``query`` (1-D or (Q, d)): ``(scores, rows)``, each (Q, k).

    ``k <= 0`` or ``k > ntotal`` returns every row. Slots FAISS cannot fill carry row -1.
    """
    q = normalise(query)
    k = index.ntotal if k <= 0 else min(k, index.ntotal)
    if k == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    scores, rows = index.search(q, k)
    return scores, rows


def search_bottom(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bottom-``k``: the most negative cosines, found as the top of ``-query``."""
    scores, rows = search(index, -np.asarray(query, dtype=np.float32), k)
    return -scores, rows


def brute_force(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of every row with ``query``, in numpy: the ground truth FAISS is tested against."""
    return normalise(vectors) @ normalise(query)[0]
