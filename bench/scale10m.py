"""Search at 10M rows, measured: the compact layout's IVF-PQ + exact re-scoring, built and searched through actindex's
own writer, FAISS path and reader, on synthetic vectors at the default's stored width.

    nice -n 10 python bench/scale10m.py --work /big/disk/s10m --rows 10000000 --families 1 \\
        --stages build,search,query,ondisk --train-rows 262144        # ~2.5 h on 2 shared cores, ~9 GB of disk
    nice -n 10 python bench/scale10m.py --work /big/disk/s1m --rows 1000000 --families 20 --stages build,search,query
    nice -n 10 python bench/scale10m.py --work /big/disk/s10m --stages '' --record   # every stage measured so far

Rows: ``--families`` of the adaptive default's 20 families (5 kinds x 4 layers, in that order), each ``--rows`` vectors
of ``--width`` dims (256, the default's stored width) drawn from its own seeded generator with the structure
activations have rather than isotropic noise: ``x = m + c_j + B_j z + G (s * w) + sigma e`` with a common mean
``m`` (norm 0.5), ``--clusters`` cluster centres ``c_j ~ N(0, I/d)`` (Dirichlet(1) weights), a rank-16 basis ``B_j``
per cluster (``z ~ N(0, I/16)``), a shared rank-32 component ``G`` with a decaying spectrum ``s_i ~ 1/sqrt(i+1)``
(norm ~0.7) and noise ``sigma = 0.3``. Stored as ``--dtype``: ``int8`` (``round(127 x / max|x|)``; its per-row
float32 scale, which a cosine does not need, is counted in the bytes but not written: the writer has no dataset for
it), ``float16`` (the unit row; its float32 norm counted likewise) or ``float32`` (as drawn). ``--families-from
rotated`` draws one family and makes the others from it (:class:`Rotated`), for many families at a twentieth of the
drawing cost.

Stages (each its own process: wall time and peak RSS, ``ru_maxrss`` of ``wait4``, per stage):

* ``build``: :class:`actindex.index.writer.IndexWriter` writes ``--part-rows`` rows per part (generated part by part:
  memory is bounded by the part, not the rows), then ``finalize`` merges them into ``vectors.h5`` and builds each
  family's FAISS file as a compact build does (``--faiss-factory compact``: ``resolve_factory`` picks
  ``IVF<2 sqrt N>,PQ<width/8>`` above 200k rows, trained on a seeded ``--train-rows`` sample). The manifest is a
  synthetic model's (30 layers, hidden ``--hidden``), with the storage projection matrix stored as a real one is.
  The trained, empty FAISS index of the first family is kept for the ``ondisk`` stage.
* ``search``: ``actindex.Index.open`` (``vectors.h5`` held open, rows read through its memory map), then per family
  ``Index.search(q, k=100)``, one query at a time: FAISS returns candidates from its IVF-PQ codes
  (``rescore_candidates``: 400 for the top 100) and the reader ranks them by their exact cosines from the stored
  vectors. Queries are near real rows: a
  stored row (a seeded sample) plus Gaussian noise of relative norm ``--query-noise``. Swept over ``--nprobe`` x
  ``--candidates`` (re-scored for the top 100); recall@100 against exact brute force over every stored row (numpy,
  in blocks) on ``--recall-queries`` of them; p50/p95 over ``--queries``; the member depth of a fused query
  (k = 1000) at the index's own settings; the first queries after the index's files are dropped from the page
  cache (``posix_fadvise``); RAM to search (the process's anonymous RSS after opening and reading every family's
  FAISS file, and the FAISS files' bytes, memory-mapped).
* ``query``: the adaptive default's whole query once its members are formed: 24 members (every family, then the
  first ones again with another query vector, as the default keeps up to 24 over 20 families) searched
  ``member_depth(10) = 1000`` rows deep, calibrated and fused (``zmean``) by
  :class:`actindex.query.pipeline.QueryPipeline` itself (no model: the members' vectors are near-row queries).
* ``ondisk``: the path beyond one host, FAISS's own on-disk inverted lists: the first family's trained empty index
  (the build's) filled ``--ondisk-shards`` blocks of rows at a time, one file per block (what n hosts would each
  build), merged by ``faiss.contrib.ondisk.merge_ondisk`` into one ``.ivfdata`` file, read back with
  ``IO_FLAG_ONDISK_SAME_DIR`` and searched with the same candidates and exact re-scoring from ``vectors.h5``.

Each stage's figures are kept in ``WORK/results.json`` (stages can run in several invocations); ``--record`` appends a
section with every stage measured so far to bench/runs/scale10m.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from peers import dir_bytes, run_child
from record import append_section, markdown_table

STAGES = ("build", "search", "query", "ondisk")
KINDS = ("residual_change", "residual_change_opening", "mean_activation_surprisal", "mean_activation_opening",
         "mean_activation_start")
LAYERS = (12, 18, 24, 27)
DTYPES = ("int8", "float16", "float32")
#: bytes a row of each stored dtype keeps beside its vector to restore the raw vector (int8: its scale, float16 unit
#: rows: their norm); a cosine does not need them, so the writer stores none and they are counted, not written
SIDE_BYTES = {"int8": 4, "float16": 4, "float32": 0}
#: the adaptive default's most members (README "Query methods")
MEMBERS = 24
K = 100
#: rows each member of a fused query searches (``member_depth(10)``)
DEPTH = 1000
BLOCK = 1 << 18  # rows scored at a time by the brute-force truth
DRAW = 1 << 16  # rows drawn from one random stream of a generator


def family_names(n: int) -> list[str]:
    """The first ``n`` of the default's 20 families, kinds first: ``residual_change/12``, ``residual_change/18``..."""
    names = [f"{kind}/{layer}" for kind in KINDS for layer in LAYERS]
    if not 1 <= n <= len(names):
        raise SystemExit(f"--families must be 1 to {len(names)}")
    return names[:n]


class Activations:
    """The generator of the module docstring, deterministic in ``seed``; rows are drawn a part at a time."""

    RANK, SHARED, SIGMA, MEAN, SHARED_NORM = 16, 32, 0.3, 0.5, 0.7

    def __init__(self, width: int, clusters: int, seed: int):
        rng = np.random.default_rng([seed, width, clusters])
        d = width
        self.seed, self.d = seed, d
        self.mean = rng.standard_normal(d).astype(np.float32)
        self.mean *= self.MEAN / np.linalg.norm(self.mean)
        self.centres = (rng.standard_normal((clusters, d)) / np.sqrt(d)).astype(np.float32)
        self.bases = (rng.standard_normal((clusters, self.RANK, d)) / np.sqrt(d)).astype(np.float32)
        spectrum = 1 / np.sqrt(np.arange(1, self.SHARED + 1))
        shared, _ = np.linalg.qr(rng.standard_normal((d, self.SHARED)))
        self.shared = (shared * (self.SHARED_NORM * spectrum / np.linalg.norm(spectrum))).T.astype(np.float32)
        self.weights = rng.dirichlet(np.ones(clusters))
        self.last: tuple[int, np.ndarray] | None = None

    def rows(self, start: int, n: int) -> np.ndarray:
        """Rows ``start .. start + n - 1`` (float32, not normalised), the same whatever the part size: drawn from
        one random stream per :data:`DRAW` rows."""
        out = np.empty((n, self.d), np.float32)
        for a in range(start - start % DRAW, start + n, DRAW):
            block = self._block(a // DRAW)
            lo, hi = max(a, start), min(a + DRAW, start + n)
            out[lo - start : hi - start] = block[lo - a : hi - a]
        return out

    def _block(self, i: int) -> np.ndarray:
        if self.last is not None and self.last[0] == i:
            return self.last[1]
        rng = np.random.default_rng([self.seed, 1, i])
        cluster = rng.choice(len(self.weights), DRAW, p=self.weights)
        x = (self.SIGMA / np.sqrt(self.d)) * rng.standard_normal((DRAW, self.d), dtype=np.float32)
        x += self.mean + self.centres[cluster]
        x += rng.standard_normal((DRAW, self.SHARED), dtype=np.float32) @ self.shared
        order = np.argsort(cluster, kind="stable")
        bounds = np.searchsorted(cluster[order], np.arange(len(self.weights) + 1))
        z = rng.standard_normal((DRAW, self.RANK), dtype=np.float32) / np.sqrt(self.RANK)
        for j in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[j] : bounds[j + 1]]
            x[rows] += z[rows] @ self.bases[j]
        self.last = (i, x)
        return x


class Rotated:
    """Family ``i`` of ``--families-from rotated``: the rows of one drawn family (:class:`Activations`, drawn once into
    ``WORK/base.npy`` in float16), starting ``i x rows / families`` rows on (wrapping round), turned by a seeded
    random orthogonal matrix: the same structure for a ``1 / families`` share of the drawing cost, other rows next
    to each other in each family (a fused query's members then share fewer rows than real families' would)."""

    def __init__(self, base: np.ndarray, index: int, count: int, seed: int):
        rng = np.random.default_rng([seed, 2, index])
        self.base, self.shift = base, index * len(base) // count
        self.turn = np.linalg.qr(rng.standard_normal((base.shape[1], base.shape[1])))[0].astype(np.float32)

    def rows(self, start: int, n: int) -> np.ndarray:
        at = (np.arange(start, start + n) + self.shift) % len(self.base)
        return self.base[at].astype(np.float32) @ self.turn


def drawn_base(path: Path, generator: Activations, rows: int) -> np.ndarray:
    """The rows ``Rotated`` families turn, drawn once (float16, memory-mapped)."""
    if not path.exists():
        out = np.lib.format.open_memmap(str(path) + ".tmp.npy", "w+", np.float16, (rows, generator.d))
        for a in range(0, rows, DRAW):
            out[a : a + DRAW] = generator.rows(a, min(DRAW, rows - a))
        out.flush()
        del out
        os.replace(str(path) + ".tmp.npy", path)
    return np.load(path, mmap_mode="r")


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """Rows as ``--dtype`` stores them (see the module docstring)."""
    if dtype == "int8":
        scale = np.abs(x).max(axis=1, keepdims=True) / 127
        return np.rint(x / np.where(scale > 0, scale, 1)).astype(np.int8)
    if dtype == "float16":
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    return x.astype(np.float32)


def peak_rss_mib() -> dict[str, float]:
    """This process's RSS now and at its peak, anonymous and file-backed (/proc/self/status), MiB."""
    keys = {"VmHWM": "peak", "VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[keys[name]] = round(int(value.split()[0]) / 1024, 1)
    return out


def drop_from_page_cache(root: Path) -> None:
    """Ask the kernel to drop the cached pages of the index's files (``POSIX_FADV_DONTNEED``: only these files, and
    only pages no process maps)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


# ----------------------------------------------------------------------------- build


def child_build(args: argparse.Namespace) -> dict:
    import faiss

    import actindex.index.search as search_module
    import actindex.index.writer as writer_module
    from actindex.index.manifest import MANIFEST
    from actindex.testing import write_vector_index

    work = Path(args.work)
    root = work / "index"
    if (root / MANIFEST).exists():
        return {"skipped": "already built"}
    families = family_names(args.families)
    if args.families_from == "drawn":
        generators = {f: Activations(args.width, args.clusters, seed=args.seed + i) for i, f in enumerate(families)}
    else:
        base = drawn_base(work / "base.npy", Activations(args.width, args.clusters, seed=args.seed), args.rows)
        generators = {f: Rotated(base, i, len(families), args.seed) for i, f in enumerate(families)}
    timed = {"train_s": 0.0, "faiss_s": 0.0}
    train, write_faiss = search_module.trained_faiss_index, writer_module.write_faiss_index_from_rows

    def trained(*a, **kw):  # the product's training, timed; the first family's trained empty index kept
        started = time.perf_counter()
        inner = train(*a, **kw)
        timed["train_s"] += time.perf_counter() - started
        if not (work / "trained.faiss").exists():
            faiss.write_index(inner, str(work / "trained.faiss"))
        return inner

    def written(*a, **kw):  # a family's FAISS file: training, adding every row, writing
        started = time.perf_counter()
        out = write_faiss(*a, **kw)
        timed["faiss_s"] += time.perf_counter() - started
        return out

    search_module.trained_faiss_index, writer_module.write_faiss_index_from_rows = trained, written
    if args.flat_rows is not None:  # tiny runs: IVF-PQ below the product's threshold
        search_module.AUTO_FLAT_ROWS = args.flat_rows
    t = time.perf_counter()
    manifest = write_vector_index(
        root, args.rows, {f: args.width for f in families},
        lambda start, n: {f: stored(g.rows(start, n), args.dtype) for f, g in generators.items()},
        store_dtype=args.dtype, train_rows=args.train_rows, hidden=args.hidden, part_rows=args.part_rows)
    total = time.perf_counter() - t
    out = {"total_s": round(total, 1), "faiss_s": round(timed["faiss_s"], 1), "train_s": round(timed["train_s"], 1),
           "parts_and_copy_s": round(total - timed["faiss_s"], 1),
           "factory": next(iter(manifest.families.values())).faiss_factory}
    return out | index_bytes(root, args)


def index_bytes(root: Path, args: argparse.Namespace) -> dict:
    """Bytes per row of the index: each family's stored vectors (its dataset's storage) and FAISS file, the
    per-row metadata and the whole directory."""
    import h5py

    manifest = json.loads((root / "manifest.json").read_text())
    rows = manifest["rows"]
    vectors, faiss_bytes = [], []
    with h5py.File(root / "vectors.h5", "r") as f:
        for name, fam in manifest["families"].items():
            vectors.append(f[f"vectors/{name}"].id.get_storage_size())
            faiss_bytes.append((root / fam["faiss"]).stat().st_size if fam["faiss"] else 0)
    total = dir_bytes(root)
    fams = len(vectors)
    return {"rows": rows, "families": fams, "disk_bytes": total,
            "vector_bytes_per_row_family": round(sum(vectors) / fams / rows, 1),
            "side_bytes_per_row_family": SIDE_BYTES[args.dtype],
            "faiss_bytes_per_row_family": round(sum(faiss_bytes) / fams / rows, 2),
            "faiss_bytes": sum(faiss_bytes),
            "other_bytes_per_row": round((total - sum(vectors) - sum(faiss_bytes)) / rows, 1)}


# ----------------------------------------------------------------------------- search


def near_row_queries(reader, family: str, n: int, noise: float, seed: int) -> np.ndarray:
    """``n`` queries near stored rows: a seeded sample of rows, normalised, plus Gaussian noise of norm ``noise``."""
    valid = reader.table.searchable
    rng = np.random.default_rng([seed, n])
    rows = np.sort(rng.choice(valid, n, replace=False))
    v = reader.vectors(family, rows)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    e = rng.standard_normal(v.shape).astype(np.float32)
    e *= noise / np.linalg.norm(e, axis=1, keepdims=True)
    return rng.permutation(v + e)


def exact_top(reader, family: str, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-``k`` cosines of each query over every valid stored row, best first, scored a
    block of rows at a time (what the reader's exact search computes, for many queries at once)."""
    from actindex.index.search import normalise, valid_blocks

    q = normalise(queries)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    with reader.h5() as f:
        for rows, block in valid_blocks(f[f"vectors/{family}"], reader.table.valid, 0, BLOCK):
            s = np.concatenate([best_s, q @ block.T], axis=1)
            r = np.concatenate([best_r, np.broadcast_to(rows, (len(q), len(rows)))], axis=1)
            top = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
            best_s, best_r = np.take_along_axis(s, top, 1), np.take_along_axis(r, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_r, order, 1)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def timed_searches(idx, family: str, queries: np.ndarray, k: int) -> tuple[list[float], list[np.ndarray]]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, rows = idx.search(q, k=k, family=family)
        times.append((time.perf_counter() - t) * 1e3)
        found.append(rows)
    return times, found


def truth_for(work: Path, idx, family: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The timed queries of a family and the exact top-:data:`DEPTH` of the first ``--recall-queries``, best first
    (kept in WORK: the on-disk stage scores the same queries)."""
    path = work / f"truth-{family.replace('/', '-')}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["queries"], saved["truth"]
    queries = near_row_queries(idx.reader, family, args.queries, args.query_noise, args.seed)
    t = time.perf_counter()
    truth = exact_top(idx.reader, family, queries[: args.recall_queries], min(DEPTH, len(idx)))
    print(f"exact top-{DEPTH} of {args.recall_queries} queries over {family}: {time.perf_counter() - t:.0f} s",
          flush=True)
    np.savez(path, queries=queries, truth=truth)
    return queries, truth


def child_search(args: argparse.Namespace) -> dict:
    import actindex
    import actindex.index.reader as reader_module
    from actindex.index.manifest import STORE
    from actindex.index.search import search, search_params

    work = Path(args.work)
    root = work / "index"
    drop_from_page_cache(root)
    t = time.perf_counter()
    idx = actindex.Index.open(root, cache=False)
    out: dict = {"open_s": round(time.perf_counter() - t, 3), "rss_after_open": peak_rss_mib()}
    families = list(idx.families)
    first_read = {}
    if any(info.faiss_factory == STORE for info in idx.families.values()):
        raise SystemExit("the index has no FAISS copy (--rows at most --flat-rows): nothing approximate to measure")
    for family in families:
        t = time.perf_counter()
        index = idx.reader.faiss_index(family)  # read (memory-mapped lists) and spot-checked
        first_read[family] = round(time.perf_counter() - t, 3)
    out["faiss_read_s"] = first_read
    out["rss_after_faiss"] = peak_rss_mib()
    out["stored_settings"] = search_params(index)
    family = families[0]
    queries, deep = truth_for(work, idx, family, args)
    truth = deep[:, :K]
    drop_from_page_cache(root)  # the brute force read every row: drop them again
    cold = queries[-args.cold_queries:]
    times, _ = timed_searches(idx, family, cold, K)  # the index's own settings, pages first touched
    out["cold"] = percentiles(times) | {"queries": len(cold)}
    for q in queries:  # every page the timed searches touch, read once: the sweep compares settings, not disks
        idx.search(q, k=K, family=family)
    product = reader_module.rescore_candidates
    sweep = []
    for nprobe in [int(p) for p in args.nprobe.split(",")]:
        idx.reader.tune(nprobe=nprobe)
        for candidates in [int(c) for c in args.candidates.split(",")]:
            reader_module.rescore_candidates = lambda k, ntotal, c=candidates: min(max(c, k), ntotal)
            timed_searches(idx, family, queries[:5], K)  # the FAISS file read again, at this nprobe
            times, found = timed_searches(idx, family, queries, K)
            rec = recall(found[: len(truth)], truth)
            sweep.append({"nprobe": nprobe, "candidates": candidates, "recall": round(rec, 4)} | percentiles(times))
            print(json.dumps(sweep[-1]), flush=True)
    out["sweep"] = sweep
    reader_module.rescore_candidates = product
    idx.reader.tune(nprobe=None)  # the settings stored in the index, the product's candidates
    index = idx.reader.faiss_index(family)
    fetch = product(K, index.ntotal)
    times, found = timed_searches(idx, family, queries, K)
    out["default"] = percentiles(times) | {"recall": round(recall(found[: len(truth)], truth), 4),
                                           "candidates": fetch} | search_params(index)
    faiss_ms = []
    for q in queries:  # FAISS alone: the share of a search before its re-scoring
        t = time.perf_counter()
        search(index, q, fetch)
        faiss_ms.append((time.perf_counter() - t) * 1e3)
    out["default_faiss_only"] = percentiles(faiss_ms)
    depth = []
    for nprobe in [int(p) for p in args.nprobe.split(",")]:  # a fused query's member searches, 1000 rows deep
        idx.reader.tune(nprobe=nprobe)
        times, found = timed_searches(idx, family, queries[: args.depth_queries], deep.shape[1])
        depth.append({"nprobe": nprobe, "candidates": product(deep.shape[1], index.ntotal),
                      f"recall@{deep.shape[1]}": round(recall(found[: len(deep)], deep), 4)} | percentiles(times))
        print(json.dumps(depth[-1]), flush=True)
    out["member_depth"] = depth
    idx.reader.tune(nprobe=None)
    per_family = {}
    for other in families[1:]:
        qs = near_row_queries(idx.reader, other, min(len(queries), 50), args.query_noise, args.seed)
        timed_searches(idx, other, qs[:3], K)
        per_family[other] = percentiles(timed_searches(idx, other, qs, K)[0])
    if per_family:
        out["other_families_p50_ms"] = {f: v["p50_ms"] for f, v in per_family.items()}
    out["rss_end"] = peak_rss_mib()
    return out


# ----------------------------------------------------------------------------- query


def child_query(args: argparse.Namespace) -> dict:
    import actindex
    from actindex.query.methods.base import FormedMember
    from actindex.query.pipeline import QueryPipeline, member_depth

    work = Path(args.work)
    idx = actindex.Index.open(work / "index", cache=False)
    families = list(idx.families)
    members = [families[i % len(families)] for i in range(MEMBERS)]
    rng = np.random.default_rng(args.seed)
    pools = {f: near_row_queries(idx.reader, f, args.whole_queries + 1, args.query_noise, args.seed + 7)
             for f in families}
    whole, search_ms, first = [], [], None
    for i in range(args.whole_queries + 1):
        formed = [FormedMember(method="contrast", layer=int(f.split("/")[1]), family=f,
                               psi=pools[f][(i + j // len(families) * 3) % len(pools[f])]
                               + 0.01 * rng.standard_normal(args.width).astype(np.float32))
                  for j, f in enumerate(members)]
        pipeline = QueryPipeline(idx.reader, context=lambda: None, curvature=lambda kind: None)
        t = time.perf_counter()
        ranked = pipeline.member_rankings(formed, 10, 0)
        top, _ = pipeline.fused(ranked, "zmean", 10, 0)
        ms = (time.perf_counter() - t) * 1e3
        assert len(top.rows) == 10
        if first is None:
            first = ms  # reads each family's calibration sample once
            continue
        whole.append(ms)
        search_ms.append(pipeline.timings["search"] * 1e3)
    return {"members": MEMBERS, "families": len(families), "member_depth": member_depth(10),
            "first_query_ms": round(first, 1), "whole": percentiles(whole),
            "member_searches": percentiles(search_ms), "queries": len(whole), "rss_end": peak_rss_mib()}


# ----------------------------------------------------------------------------- on-disk inverted lists


def child_ondisk(args: argparse.Namespace) -> dict:
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    import actindex
    from actindex.index.search import faiss_threads, normalise, set_search_params, valid_blocks

    work = Path(args.work)
    root, ondisk = work / "index", work / "ondisk"
    ondisk.mkdir(exist_ok=True)
    idx = actindex.Index.open(root, cache=False)
    family = next(iter(idx.families))
    out: dict = {}
    valid = idx.reader.table.valid
    n = len(valid)
    blocks = [ondisk / f"block-{s}.index" for s in range(args.ondisk_shards)]
    t = time.perf_counter()
    with idx.reader.h5() as f:
        ds = f[f"vectors/{family}"]
        for s, path in enumerate(blocks):  # what host s of n runs: its rows into a copy of the trained index
            if path.exists():
                continue
            a, b = n * s // len(blocks), n * (s + 1) // len(blocks)
            block = faiss.read_index(str(work / "trained.faiss"))
            part = np.zeros(n, np.bool_)
            part[a:b] = valid[a:b]
            for rows, vectors in valid_blocks(ds, part, a):
                block.add_with_ids(vectors, rows)
            faiss.write_index(block, str(path) + ".tmp")
            os.replace(str(path) + ".tmp", path)
            del block
    out["add_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    populated = ondisk / "populated.index"
    if not populated.exists():
        index = faiss.read_index(str(work / "trained.faiss"))
        merge_ondisk(index, [str(p) for p in blocks], str(ondisk / "merged.ivfdata"))
        faiss.write_index(index, str(populated))
        del index
    out["merge_s"] = round(time.perf_counter() - t, 1)
    out["ivfdata_bytes"] = (ondisk / "merged.ivfdata").stat().st_size
    out["index_bytes"] = populated.stat().st_size
    drop_from_page_cache(ondisk)
    before = peak_rss_mib()
    index = faiss.read_index(str(populated), faiss.IO_FLAG_ONDISK_SAME_DIR)
    out["rss_anon_read_mib"] = round(peak_rss_mib()["anon"] - before["anon"], 1)
    queries, deep = truth_for(work, idx, family, args)
    truth = deep[:, :K]
    sweep = []
    for nprobe in [int(p) for p in args.nprobe.split(",")]:
        set_search_params(index, nprobe=nprobe)
        for candidates in [int(c) for c in args.candidates.split(",")]:
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                with faiss_threads(1):
                    _, cand = index.search(normalise(q), candidates)
                cand = cand[0][cand[0] >= 0]
                cos = idx.reader.cosines(q, family, cand)  # exact, from vectors.h5
                found.append(cand[np.argsort(-cos, kind="stable")[:K]])
                times.append((time.perf_counter() - t) * 1e3)
            sweep.append({"nprobe": nprobe, "candidates": candidates,
                          "recall": round(recall(found[: len(truth)], truth), 4)} | percentiles(times))
            print(json.dumps(sweep[-1]), flush=True)
    out["sweep"] = sweep
    out["rss_end"] = peak_rss_mib()
    if not args.keep_blocks:
        for path in blocks:
            path.unlink(missing_ok=True)
    return out


CHILDREN = {"build": child_build, "search": child_search, "query": child_query, "ondisk": child_ondisk}


# ----------------------------------------------------------------------------- report


def summary_rows(results: dict) -> list[list[object]]:
    rows = []
    for stage in STAGES:
        r = results.get(stage)
        if r is None:
            continue
        figures = ""
        if stage == "build" and "rows" in r:
            figures = "; ".join([
                f"{r['factory']}",
                f"vectors {r['vector_bytes_per_row_family']} B/row/family (+{r['side_bytes_per_row_family']} side)",
                f"FAISS {r['faiss_bytes_per_row_family']} B/row/family, other {r['other_bytes_per_row']} B/row",
                f"{r['total_s']} s: parts and vectors.h5 {r['parts_and_copy_s']} s, FAISS {r['faiss_s']} s "
                f"(training {r['train_s']} s)"])
        elif stage == "search" and "default" in r:
            d = r["default"]
            figures = "; ".join([
                f"Index.search k=100 at the stored settings (nprobe {d.get('nprobe')}, {d['candidates']} candidates): "
                f"p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, recall@100 {d['recall']}",
                f"FAISS alone p50 {r['default_faiss_only']['p50_ms']} ms",
                f"k={DEPTH} p50 " + ", ".join(f"{d['p50_ms']} ms (nprobe {d['nprobe']})" for d in r["member_depth"]),
                f"cold p50 {r['cold']['p50_ms']} ms",
                f"anon RSS after open + FAISS {r['rss_after_faiss']['anon']} MiB"])
        elif stage == "query" and "whole" in r:
            figures = (f"{r['members']} members over {r['families']} families, {r['member_depth']} rows deep: whole "
                       f"query p50 {r['whole']['p50_ms']} ms, p95 {r['whole']['p95_ms']} ms (member searches p50 "
                       f"{r['member_searches']['p50_ms']} ms); first {r['first_query_ms']} ms")
        elif stage == "ondisk" and "sweep" in r:
            figures = (f"adds {r['add_s']} s, merge {r['merge_s']} s, .ivfdata {r['ivfdata_bytes']:,} B, anon RSS to "
                       f"read {r['rss_anon_read_mib']} MiB")
        rows.append([stage, r.get("wall_s", "-"), r.get("peak_rss_mib", "-"), figures or r.get("skipped", "")])
    return rows


def sweep_table(sweep: list[dict]) -> str:
    return markdown_table(["nprobe", "candidates re-scored", "p50 ms", "p95 ms", "recall@100"],
                          [[s["nprobe"], s["candidates"], s["p50_ms"], s["p95_ms"], s["recall"]] for s in sweep])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="working folder (kept: stages resume; put it on a large disk)")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--families", type=int, default=1, help="how many of the default's 20 families (kinds first)")
    ap.add_argument("--width", type=int, default=256, help="stored width (the default's)")
    ap.add_argument("--dtype", choices=DTYPES, default="int8", help="how the vectors are stored")
    ap.add_argument("--hidden", type=int, default=576, help="the synthetic model's width (the projection matrix)")
    ap.add_argument("--clusters", type=int, default=1024)
    ap.add_argument("--families-from", choices=("drawn", "rotated"), default="drawn",
                    help="each family drawn from its own generator, or one drawn family turned and shifted per family "
                         "(class Rotated: a 1/families share of the drawing cost)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part-rows", type=int, default=1 << 17, help="rows per committed part (bounds the build's RAM)")
    ap.add_argument("--train-rows", type=int, default=100_000, help="FAISS training sample (--faiss-train-rows)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, in this order")
    ap.add_argument("--queries", type=int, default=200, help="timed queries per setting")
    ap.add_argument("--recall-queries", type=int, default=100, help="of those, queries scored against brute force")
    ap.add_argument("--cold-queries", type=int, default=50, help="queries timed first, the index's pages dropped")
    ap.add_argument("--depth-queries", type=int, default=50, help="queries timed at the member depth (k=1000)")
    ap.add_argument("--whole-queries", type=int, default=20, help="whole default queries timed")
    ap.add_argument("--query-noise", type=float, default=0.5, help="noise norm of a query, relative to its row")
    ap.add_argument("--nprobe", default="16,32,64,128", help="nprobe values swept")
    ap.add_argument("--candidates", default="200,400,800", help="candidates re-scored for the top 100, swept")
    ap.add_argument("--ondisk-shards", type=int, default=4, help="blocks of rows merged into the on-disk lists")
    ap.add_argument("--keep-blocks", action="store_true", help="keep the on-disk stage's per-block indexes")
    ap.add_argument("--flat-rows", type=int, default=None,
                    help="rows up to which a family gets no FAISS copy (default: the product's, 200,000)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the build and on-disk stages (more spin-wait on a shared machine)")
    ap.add_argument("--record", action="store_true", help="append every stage measured so far to bench/runs/")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if max(args.recall_queries, args.cold_queries, args.depth_queries) > args.queries:
        ap.error("--recall-queries, --cold-queries and --depth-queries must not exceed --queries")
    family_names(args.families)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    for stage in stages:
        print(f"[{time.strftime('%H:%M:%S')}] {stage} ...", flush=True)
        threads = args.threads if stage in ("build", "ondisk") else 1  # one query runs on one thread (search.py)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        info, wall, peak_kib, cpu = run_child([sys.executable, __file__, "--child", stage, *sys.argv[1:]], env)
        results = json.loads(store.read_text()) if store.exists() else {}
        results[stage] = info | {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(
            peak_kib / 1024), "threads": threads, "date": time.strftime("%Y-%m-%d %H:%M")}
        store.write_text(json.dumps(results, indent=2))
        print(json.dumps(results[stage]), flush=True)
    results = json.loads(store.read_text()) if store.exists() else {}
    body = markdown_table(["stage", "wall s", "peak RSS MiB", "figures"], summary_rows(results))
    for stage in ("search", "ondisk"):
        if "sweep" in results.get(stage, {}):
            body += f"\n\n`{stage}`: {'Index.search' if stage == 'search' else 'on-disk IVF-PQ'} at k = {K}, " \
                    "one query at a time on one thread:\n\n" + sweep_table(results[stage]["sweep"])
    depth = results.get("search", {}).get("member_depth")
    if depth:
        key = next(k for k in depth[0] if k.startswith("recall@"))
        body += (f"\n\n`search` at a fused query's member depth ({key[len('recall'):]}), the product's candidates:\n\n"
                 + markdown_table(["nprobe", "candidates re-scored", "p50 ms", "p95 ms", key],
                                  [[d["nprobe"], d["candidates"], d["p50_ms"], d["p95_ms"], d[key]] for d in depth]))
    print(body)
    if args.record:
        build = results.get("build", {})
        intro = " ".join([
            f"{build.get('rows', args.rows):,} synthetic rows x {build.get('families', args.families)}",
            f"of the default's families ({args.families_from}), width {args.width}, stored as {args.dtype},",
            f"{args.clusters} clusters (module docstring), hidden {args.hidden};",
            f"FAISS trained on {args.train_rows:,} rows; queries near stored rows (noise {args.query_noise});",
            f"recall against exact brute force over the stored rows ({args.recall_queries} queries).",
            "One process per stage: wall time and peak RSS (`wait4`).\n\n"])
        append_section("Search at 10M rows", intro + body + "\n\n```json\n" + json.dumps(results, indent=1) + "\n```",
                       ("faiss-cpu", "numpy", "h5py"))


if __name__ == "__main__":
    main()
