"""Stage 6 — search: FAISS indexes over normalised vectors, so inner product = cosine similarity.

Each family's index maps FAISS ids to row numbers of ``vectors.h5`` (rows with a non-finite
loss or vector are never added). ``auto`` (the default) is exact ``Flat`` search up to 200k rows
and an IVF index above (:func:`resolve_factory`); any FAISS factory string (``Flat``,
``IVF1024,Flat``, ``HNSW32``, ``IVF4096,PQ64``...) can be given instead. A factory that
needs training (IVF, PQ) is trained on a seeded uniform sample of at most ``train_rows`` valid rows;
rows are then read and normalised in blocks. A build writes a flat-coded index (``Flat``, ``SQ8``,
``PQ``...) to disk block by block (:func:`write_faiss_index_from_rows`, :mod:`actindex.index.faiss_stream`),
so its memory does not grow with the rows; IVF and HNSW indexes are built in memory, then written.

Approximate indexes trade recall for speed: ``nprobe`` (IVF: inverted lists visited per query) and
``efSearch`` (HNSW: candidate list size) are stored in the file with the defaults below and can
be changed at query time with :func:`set_search_params`. :func:`measured_recall` reports recall@k
against exact search on a sample of stored rows used as queries. IVF files are memory-mapped when
read (``faiss.IO_FLAG_MMAP``: inverted lists stay on disk until a query touches them), and
``read_faiss_index(path, gpu=True)`` copies an index to the GPUs when FAISS sees one
(``faiss.get_num_gpus() > 0``, GPU builds of faiss only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from actindex.errors import ActindexError, IndexFileError
from actindex.files import atomic_file
from actindex.index import faiss_stream
from actindex.index.manifest import STORE


def normalise(vectors: np.ndarray, inplace: bool = False) -> np.ndarray:
    """``v / ||v||`` row-wise (zero rows stay zero), float32, C-contiguous; ``inplace`` reuses a
    C-contiguous float32 input instead of copying it."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if not inplace and isinstance(vectors, np.ndarray) and np.may_share_memory(out, vectors):
        out = out.copy()
    if out.ndim == 1:
        out = out[None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


#: rows sampled to train an IVF/PQ factory (FAISS wants 30-256 points per centroid)
TRAIN_ROWS = 100_000
#: query-time defaults stored in new approximate indexes (FAISS's own default nprobe is 1): IVF visits at least
#: DEFAULT_NPROBE lists and at least one in NPROBE_SHARE of them (:func:`default_nprobe`)
DEFAULT_NPROBE = 16
NPROBE_SHARE = 128
DEFAULT_EF_SEARCH = 128
#: a search through lossy codes (PQ, SQ: approximate scores) fetches ``max(RESCORE_FACTOR k, k + RESCORE_EXTRA)``
#: candidates for ``k`` rows and ranks them by their exact cosines, read from the stored vectors
#: (:func:`rescore_candidates`)
RESCORE_FACTOR = 2
RESCORE_EXTRA = 300
#: rows read from HDF5 and added to FAISS at a time (about 10 MB of float32 at width 576)
ADD_BLOCK = 4096


#: factories ``auto`` and ``compact`` keep exact search up to this many rows and switch to IVF above it
AUTO_FLAT_ROWS = 200_000


def resolve_factory(factory: str, rows: int, dim: int | None = None) -> str:
    """The factory string to build for ``rows`` vectors of ``dim`` dims.

    ``auto`` means ``Flat`` (exact) up to :data:`AUTO_FLAT_ROWS` rows, else ``IVF<nlist>,Flat`` with ``nlist``
    the power of two nearest ``2 sqrt(rows)`` (1M rows: ``IVF2048,Flat``, measured p50 1.8 ms at recall@100 0.97
    with the default nprobe 16, against 559 ms for ``Flat``; bench/search_latency.py). ``compact`` (a default
    build's) keeps one copy of each vector: :data:`STORE` (no FAISS file) up to :data:`AUTO_FLAT_ROWS` rows, else
    ``IVF<nlist>,PQ<m>`` codes of ``m`` bytes (one per 8 dims), whose candidates a search re-scores exactly from
    the stored vectors."""
    if factory not in ("auto", "compact"):
        return factory
    if rows <= AUTO_FLAT_ROWS:
        return "Flat" if factory == "auto" else STORE
    nlist = 2 ** round(np.log2(2 * np.sqrt(rows)))
    if factory == "auto":
        return f"IVF{nlist},Flat"
    d = int(dim or 8)
    return f"IVF{nlist},PQ{next(m for m in range(max(1, d // 8), 0, -1) if d % m == 0)}"


def new_faiss_index(dim: int, factory: str = "Flat") -> faiss.Index:
    """An empty inner-product index from a FAISS factory string (untrained when it needs training), without
    polysemous training (:func:`skip_polysemous_training`)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ActindexError(f"invalid --faiss-factory {factory!r}: {str(err).splitlines()[-1]}") from None
    ivf = faiss.try_extract_index_ivf(index)
    set_search_params(index, nprobe=DEFAULT_NPROBE if ivf is None else default_nprobe(ivf.nlist),
                      ef_search=DEFAULT_EF_SEARCH)
    skip_polysemous_training(index)
    return index


def default_nprobe(nlist: int) -> int:
    """The ``nprobe`` stored in a new IVF index of ``nlist`` lists: ``max(16, nlist / 128)``, at most ``nlist``.

    16 of the 2,048 lists ``auto`` builds at 1M rows give recall@100 0.974 (bench/search_latency.py); as the lists
    grow in number with the rows (``2 sqrt N``: 8,192 at 10M), a fixed 16 would visit a shrinking share of the
    rows, so beyond 2,048 lists the share is kept at 1/128 instead (10M rows: 64 lists, bench/scale10m.py: the
    recall and latency measured at 10M). Indexes of up to 2,048 lists (about 1.5M rows) keep 16."""
    return min(int(nlist), max(DEFAULT_NPROBE, int(nlist) // NPROBE_SHARE))


def rescore_candidates(k: int, ntotal: int) -> int:
    """Candidates a search through lossy codes fetches for its top ``k``, to rank by their exact cosines:
    ``max(2 k, k + 300)``, at most ``ntotal``.

    The codes' error moves rows across the k-th score by about a fixed number of places, not in proportion to
    ``k``: at 1M rows of width 256 (IVF2048,PQ32, bench/scale10m.py) 200 candidates gave recall@100 0.917, 400 gave
    0.980 and 800 0.989, while at k = 1000 (a fused query's member depth) 2,000 candidates gave recall@1000 0.871
    and 4,000 0.873 (there the probed lists, not the codes, set the recall)."""
    return min(max(RESCORE_FACTOR * k, k + RESCORE_EXTRA), int(ntotal))


def skip_polysemous_training(index: faiss.Index) -> None:
    """Switch off the polysemous training FAISS's factory turns on for 8-bit PQ codes (``IVF..,PQm``, ``PQm``).

    It reorders each sub-quantiser's centroids by simulated annealing so that the Hamming distance between codes
    approximates theirs, for a search that filters codes by Hamming distance first (``polysemous_ht``). actindex
    never searches that way: the scores are the same asymmetric distances with or without it (the codes are a
    permutation of each other), and the annealing costs minutes of CPU per family whatever the number of rows
    (155 s for ``IVF128,PQ32`` on 1,000 rows here, against 0.6 s for the PQ's k-means)."""
    for part in (faiss.downcast_index(index), faiss.try_extract_index_ivf(index)):
        part = faiss.downcast_index(part) if part is not None else None
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def train_sample(candidates: np.ndarray, train_rows: int | None) -> np.ndarray:
    """Sorted row numbers to train on: all ``candidates``, or ``train_rows`` drawn without
    replacement with a fixed seed (the same rows every build)."""
    limit = TRAIN_ROWS if train_rows is None else train_rows
    if len(candidates) <= limit:
        return candidates
    return np.sort(np.random.default_rng(0).choice(candidates, limit, replace=False))


def trained_faiss_index(
    dataset: Any, valid: np.ndarray, factory: str = "Flat", train_rows: int | None = None
) -> faiss.Index:
    """The empty inner index for the valid rows of a ``(rows, dim)`` dataset: ``factory`` resolved
    for their number, trained (when it needs training) on a seeded sample of at most ``train_rows``."""
    inner = new_faiss_index(dataset.shape[1], resolve_factory(factory, int(valid.sum())))
    if not inner.is_trained:
        sample = train_sample(np.flatnonzero(valid), train_rows)
        if len(sample) == 0:
            raise ActindexError(f"--faiss-factory {factory!r} needs training rows, but no row is valid")
        inner.train(normalise(dataset[sample]))
    return inner


def faiss_index_from_rows(
    dataset: Any, valid: np.ndarray, factory: str = "Flat", train_rows: int | None = None
) -> faiss.Index:
    """A FAISS index over the valid rows of a stored ``(rows, dim)`` dataset (HDF5 or array), with
    ids = row numbers; trained on a sample, filled block by block (held in memory whole)."""
    inner = trained_faiss_index(dataset, valid, factory, train_rows)
    return extend_faiss_index(with_row_ids(inner), dataset, valid, 0)


def with_row_ids(inner: faiss.Index) -> faiss.Index:
    """``inner`` (empty) made to hold rows under their row numbers: an IVF index as it is, since its inverted lists
    keep each row's id beside its code (on disk with the codes, memory-mapped when read); any other index in an
    ``IndexIDMap2`` (Flat, PQ, SQ and HNSW number their rows 0, 1, 2...).

    Why not an id map around IVF as well (an IVF file in one is read too): it holds every id a second time and, when
    read, FAISS builds a hash map of them, 53 bytes a row in memory (measured at 1M rows: 51 MiB), so at 10M rows a
    family would hold 0.5 GB of RAM to search beside its 40 bytes of codes a row left on disk."""
    return inner if bare_ivf(inner) is not None else faiss.IndexIDMap2(inner)


def bare_ivf(index: faiss.Index) -> Any:
    """``index`` as an ``IndexIVF`` when it is one itself (no id map or transform around it), else ``None``."""
    concrete = faiss.downcast_index(index)
    return concrete if isinstance(concrete, faiss.IndexIVF) else None


def write_faiss_index_from_rows(
    dataset: Any,
    valid: np.ndarray,
    path: Path,
    factory: str = "Flat",
    train_rows: int | None = None,
    block: int = ADD_BLOCK,
) -> bool:
    """Write the index :func:`faiss_index_from_rows` would build to ``path``, the same bytes; True if
    it was streamed.

    A flat-coded factory (``Flat``, ``SQ8``, ``SQfp16``, ``PQ16``... :func:`faiss_stream.supported`)
    is streamed: trained on the sample as usual, then written ``block`` rows at a time (their codes,
    then the ids), so memory does not grow with the number of rows. IVF, HNSW and pre-transformed
    factories, or a faiss whose format fails :func:`faiss_stream.self_check`, are built in memory
    and written whole (an on-disk IVF would need ``faiss.OnDiskInvertedLists``).
    """
    inner = trained_faiss_index(dataset, valid, factory, train_rows)
    layout = faiss_stream.stream_layout(inner)
    if layout is None:
        write_faiss_index(extend_faiss_index(with_row_ids(inner), dataset, valid, 0), path)
        return False
    blocks = map(itemgetter(1), valid_blocks(dataset, valid, 0, block))  # holds no block between items
    ids = ((np.flatnonzero(valid[a : a + block]) + a).astype(np.int64) for a in range(0, len(valid), block))
    with atomic_file(path) as tmp, open(tmp, "wb") as out:  # never half a file behind
        faiss_stream.write_stream(out, inner, layout, int(valid.sum()), blocks, ids)
    return True


def valid_blocks(
    dataset: Any, valid: np.ndarray, start: int, block: int = ADD_BLOCK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(row numbers, normalised float32 rows)`` of the valid rows ``start, start+1, ...`` of
    ``dataset``, ``block`` rows read at a time (blocks without a valid row are skipped)."""
    for a in range(start, dataset.shape[0], block):
        b = min(a + block, dataset.shape[0])
        keep = np.flatnonzero(valid[a:b])
        if len(keep):
            rows = dataset[a:b]  # HDF5 reads into a fresh array, numpy gives a view
            rows = rows if len(keep) == b - a else rows[keep]  # a copy, still in the stored dtype
            view = isinstance(dataset, np.ndarray) and len(keep) == b - a
            rows = np.array(rows, dtype=np.float32, copy=True if view else None)  # never normalise the input
            yield (keep + a).astype(np.int64), normalise(rows, inplace=True)


def extend_faiss_index(index: faiss.Index, dataset: Any, valid: np.ndarray, start: int) -> faiss.Index:
    """Add the valid rows ``start, start+1, ...`` of ``dataset`` to ``index`` (ids = row numbers)."""
    _reserve(index, int(valid[start:].sum()))
    for ids, rows in valid_blocks(dataset, valid, start):
        index.add_with_ids(rows, ids)
    return index


def _reserve(index: faiss.Index, more_rows: int) -> None:
    """Give a flat-coded index (Flat, PQ, SQ) room for ``more_rows`` in one allocation.

    Its codes are one ``std::vector``: adding blocks would grow it by doubling, holding the old and
    the new buffer at once (up to 3x the final size at the peak). Resizing to the final size and back
    keeps that capacity, so the adds that follow never reallocate.
    """
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexFlatCodes) and more_rows > 0:
        used = inner.codes.size()
        inner.codes.resize(used + more_rows * inner.code_size)
        inner.codes.resize(used)


def write_faiss_index(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` through a fresh temporary file (:func:`~actindex.files.atomic_file`)."""
    with atomic_file(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_faiss_index(path: Path, mmap: bool = True, gpu: bool = False) -> faiss.Index:
    """Read a FAISS file; IVF inverted lists are memory-mapped (``mmap``), and the index is copied to
    every GPU FAISS sees when ``gpu`` is set (GPU builds of faiss only). A memory-mapped index is
    read-only: pass ``mmap=False`` to add rows to it. A missing or unreadable file is one
    :class:`~actindex.errors.IndexFileError` line."""
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"{path}: FAISS index file is missing")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError, OSError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(err).__name__
        raise IndexFileError(f"{path}: cannot be read as a FAISS index ({reason})") from None
    if gpu and gpu_count() > 0:  # pragma: no cover - needs faiss-gpu
        index = to_gpu(index)
    return index


def gpu_count() -> int:
    """GPUs FAISS can search on: ``faiss.get_num_gpus()``, 0 for a CPU build of FAISS."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def to_gpu(index: faiss.Index) -> faiss.Index:  # pragma: no cover - needs faiss-gpu and a GPU
    """``index`` copied to every GPU FAISS sees (``faiss.index_cpu_to_all_gpus``); set its search parameters
    (nprobe) before copying."""
    return faiss.index_cpu_to_all_gpus(index)


def _codec(index: faiss.Index) -> faiss.Index:
    """The index that encodes vectors: the inner index of an id map, an HNSW graph's storage."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    storage = getattr(inner, "storage", None)
    return faiss.downcast_index(storage) if isinstance(inner, faiss.IndexHNSW) and storage is not None else inner


def exact_scores(index: faiss.Index) -> bool:
    """Whether ``index`` scores with the vectors themselves (``Flat``, ``IVF..,Flat``, ``HNSW..`` over a flat
    storage), not with lossy codes (PQ, SQ...)."""
    return isinstance(_codec(index), (faiss.IndexFlat, faiss.IndexIVFFlat))


def stored_as(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """What ``index`` holds for these (normalised) vectors: ``decode(encode(v))`` with its own codec,
    equal to the vectors for exact (``Flat``) indexes and their quantised form otherwise."""
    codec = _codec(index)
    return codec.sa_decode(codec.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32)))


def reconstructed(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """The vectors ``index`` holds for the given ids (row numbers), decoded: an IVF index's rows looked up in its
    inverted lists (:func:`ivf_lists_of`), an id-mapped IVF through a direct map it makes; a row the index lacks is
    a ``RuntimeError``."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return np.zeros((0, index.d), np.float32)
    ivf = bare_ivf(index)
    if ivf is not None:
        got = ivf_rows(ivf, rows, ivf_lists_of(ivf, rows))
        if np.isnan(got).any():
            raise RuntimeError(f"the IVF index holds no row {int(rows[np.isnan(got).any(axis=1)][0])}")
        return got
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    return np.stack([index.reconstruct(int(r)) for r in rows])


def _list_ids(ivf: Any, list_no: int) -> np.ndarray:
    """The ids inverted list ``list_no`` of an IVF index holds, in list order (a copy)."""
    n = ivf.invlists.list_size(list_no)
    if n == 0:
        return np.zeros(0, np.int64)
    pointer = ivf.invlists.get_ids(list_no)
    ids = faiss.rev_swig_ptr(pointer, n).copy()
    ivf.invlists.release_ids(list_no, pointer)
    return ids


def ivf_lists_of(ivf: Any, rows: np.ndarray) -> np.ndarray:
    """The inverted list holding each of ``rows`` (-1 where none does), found by reading every list's ids."""
    where = np.full(len(rows), -1, np.int64)
    for list_no in range(ivf.nlist):
        hit = np.isin(rows, _list_ids(ivf, list_no))
        where[hit] = list_no
    return where


def ivf_rows(ivf: Any, rows: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """The decoded vectors of ``rows``, each looked up in its inverted list ``lists[i]`` (NaN where that list does
    not hold it)."""
    out = np.full((len(rows), ivf.d), np.nan, np.float32)
    for i, (row, list_no) in enumerate(zip(rows.tolist(), np.asarray(lists).tolist())):
        at = np.flatnonzero(_list_ids(ivf, list_no) == row) if list_no >= 0 else []
        if len(at):
            ivf.reconstruct_from_offset(list_no, int(at[0]), faiss.swig_ptr(out[i]))
    return out


def stored_ids(index: faiss.Index) -> np.ndarray | None:
    """The ids (row numbers) ``index`` holds, sorted: its id map's, or every inverted list's of an IVF index;
    ``None`` for an index without ids of its own."""
    if hasattr(index, "id_map"):
        return np.sort(faiss.vector_to_array(index.id_map))
    ivf = bare_ivf(index)
    if ivf is None:
        return None
    return np.sort(np.concatenate([np.zeros(0, np.int64)] + [_list_ids(ivf, i) for i in range(ivf.nlist)]))


def rows_disagree(index: faiss.Index, rows: np.ndarray, vectors: np.ndarray, atol: float = 1e-5) -> np.ndarray:
    """Of ``rows``, those whose vector in ``index`` is not what the index would hold for ``vectors`` (the
    rows' stored vectors, as in vectors.h5): a FAISS file copied from another index, or damaged. An IVF index's
    row is looked for in the list its stored vector is assigned to (reading that list alone)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return rows
    unit = normalise(vectors)
    expected = stored_as(index, unit)
    ivf = bare_ivf(index)
    if ivf is not None:
        _, lists = ivf.quantizer.search(unit, 1)
        got = ivf_rows(ivf, rows, lists[:, 0])
    else:
        try:
            got = reconstructed(index, rows)
        except RuntimeError:  # an id the index does not hold
            return rows
    bad = ~(np.abs(got - expected) <= atol).all(axis=1)
    return rows[bad]


def search_params(index: faiss.Index) -> dict[str, int]:
    """The query-time knobs of an index and their current values (``{}`` for exact indexes)."""
    out = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
        out["nlist"] = int(ivf.nlist)
    hnsw = _hnsw(index)
    if hnsw is not None:
        out["efSearch"] = int(hnsw.hnsw.efSearch)
    return out


def _hnsw(index: faiss.Index) -> Any:
    while True:
        index = faiss.downcast_index(index)
        if isinstance(index, (faiss.IndexHNSW,)):
            return index
        inner = getattr(index, "index", None) or getattr(index, "base_index", None)
        if inner is None:
            return None
        index = inner


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> faiss.Index:
    """Set IVF ``nprobe`` (capped at ``nlist``) and HNSW ``efSearch`` where the index has them."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe is not None:
        ivf.nprobe = max(1, min(int(nprobe), int(ivf.nlist)))
    hnsw = _hnsw(index)
    if hnsw is not None and ef_search is not None:
        hnsw.hnsw.efSearch = max(1, int(ef_search))
    return index


def measured_recall(
    index: faiss.Index, dataset: Any, valid: np.ndarray, k: int = 10, queries: int = 200, seed: int = 0
) -> float:
    """recall@k of ``index`` against exact cosine search, with stored rows as queries.

    ``queries`` valid rows q (a seeded sample) are searched; recall@k = mean over q of
    ``|top_k(index, q) & top_k(exact, q)| / k`` where the exact top-k is found by brute force over
    every valid row of ``dataset`` (read in blocks). 1.0 for a Flat index up to ties.
    """
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        return 1.0
    k = min(k, len(rows))
    picked = train_sample(rows, queries) if len(rows) > queries else rows
    q = normalise(dataset[picked])
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for a in range(0, dataset.shape[0], ADD_BLOCK):
        keep = np.flatnonzero(valid[a : a + ADD_BLOCK])
        if not len(keep):
            continue
        scores = q @ normalise(dataset[a : a + ADD_BLOCK][keep]).T
        cand_s = np.concatenate([best_s, scores], axis=1)
        cand_r = np.concatenate([best_r, np.broadcast_to(keep + a, scores.shape)], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_r, top, 1)
    _, approx = index.search(q, k)
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), best_r.tolist())]))


def search(index: faiss.Index, query: np.ndarray, k: int,
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by cosine with ``query`` (1-D or (Q, d)): ``(scores, rows)``, each (Q, k).

    ``k <= 0`` or ``k > ntotal`` returns every row. Slots FAISS cannot fill carry row -1. ``allowed`` (a boolean
    mask over row numbers) searches only the rows it marks (:func:`only_rows`): the k returned are the best k of
    them.
    """
    q = normalise(query)
    k = index.ntotal if k <= 0 else min(k, index.ntotal)
    if k == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    params = None if allowed is None else only_rows(index, allowed)
    with faiss_threads(1 if len(q) == 1 else None):
        scores, rows = index.search(q, k, params=params)
    return scores, rows


def only_rows(index: faiss.Index, allowed: np.ndarray) -> faiss.SearchParameters:
    """Search parameters that let ``index`` (ids = row numbers) consider only the rows ``allowed`` marks: a FAISS
    ``IDSelectorBitmap`` (bit ``i`` of the packed mask), in the parameter type the index expects (IVF and HNSW keep
    their ``nprobe`` and ``efSearch``)."""
    bits = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    ivf, hnsw = faiss.try_extract_index_ivf(index), _hnsw(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=int(ivf.nprobe))
    elif hnsw is not None:
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(hnsw.hnsw.efSearch))
    else:
        params = faiss.SearchParameters(sel=selector)
    params.bits = bits  # the selector reads this buffer: it lives as long as the parameters
    return params


@contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads inside the block (``None``: leave it as it is).

    FAISS parallelises a search over its queries, so one query gains nothing from more threads,
    while idle OpenMP workers spin-wait: on a busy 2-core host that made one query 16-48 ms
    instead of 0.03-1 ms (bench/README.md). Single queries therefore run on one thread.
    """
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search_bottom(index: faiss.Index, query: np.ndarray, k: int,
                  allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bottom-``k``: the most negative cosines, found as the top of ``-query`` (``allowed``: as :func:`search`)."""
    scores, rows = search(index, -np.asarray(query, dtype=np.float32), k, allowed)
    return -scores, rows


def brute_force(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of every row with ``query``, in numpy: the ground truth FAISS is tested against."""
    return normalise(vectors) @ normalise(query)[0]
