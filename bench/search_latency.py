"""Latency of one query (p50/p99) and recall@100 of actindex's FAISS indexes at 10k-1M rows.

    nice -n 5 python bench/search_latency.py --rows 10000,100000
    nice -n 5 python bench/search_latency.py --rows 1000000 --factories flat,ivf

Data: synthetic unit-normalised float32 vectors of width 576 (SmolLM2-135M's hidden size) from a
clustered mixture that looks like activation vectors more than isotropic noise does: ``--clusters``
centres ``c_j ~ N(0, I/d)`` with Dirichlet(1) weights, and each point
``x = c_j + B_j z + 0.1 e``, ``z ~ N(0, I_r / r)``, ``B_j`` a random d x r basis (``--rank`` latent
dimensions per cluster), ``e ~ N(0, I/d)``; then ``x / ||x||``. Rows are generated in seeded
chunks, so the first 10k rows of the 1M set are the 10k set. Queries are fresh draws of the same
mixture (not stored rows). Sizes over 200k rows are generated into a memory-mapped file, so the
process holds only the FAISS index in memory.

Each index is built the way ``actindex build`` builds one (``actindex.index.search.faiss_index_from_rows``:
trained on at most ``--train-rows`` seeded rows, filled in blocks), and queried one vector at a time
through ``actindex.index.search.search`` with k = 100. Recall@100 = mean over queries of
``|approx top-100 & exact top-100| / 100``, the exact top-100 from ``faiss.knn`` (brute-force inner
product = ``IndexFlatIP``). IVF is swept over ``nprobe``, HNSW over ``efSearch``; the frontier line
gives, per size, the fastest setting with recall@100 >= ``--target-recall``.

HNSW at 1M: its graph is built in blocks; when ``--hnsw-budget`` seconds run out the build stops,
the time for all rows is extrapolated from the rows added, and the search is not measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import faiss
import numpy as np
from record import append_section, markdown_table

from actindex.index.search import faiss_index_from_rows, search, set_search_params

CHUNK = 50_000


class Mixture:
    """The clustered generator described in the module docstring (deterministic in ``seed``)."""

    def __init__(self, dim: int, clusters: int, rank: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.rank, self.seed = dim, rank, seed
        self.centres = rng.standard_normal((clusters, dim), dtype=np.float32) / np.sqrt(dim)
        self.bases = rng.standard_normal((clusters, rank, dim), dtype=np.float32) / np.sqrt(dim)
        self.weights = rng.dirichlet(np.ones(clusters))

    def draw(self, n: int, stream: int) -> np.ndarray:
        """``n`` unit vectors from random stream ``stream`` (chunks and queries use distinct streams)."""
        rng = np.random.default_rng([self.seed, stream])
        counts = rng.multinomial(n, self.weights)
        x = 0.1 / np.sqrt(self.dim) * rng.standard_normal((n, self.dim), dtype=np.float32)
        start = 0
        for j in np.flatnonzero(counts):  # rows grouped by cluster, shuffled below
            end = start + counts[j]
            z = rng.standard_normal((end - start, self.rank), dtype=np.float32) / np.sqrt(self.rank)
            x[start:end] += self.centres[j] + z @ self.bases[j]
            start = end
        x = x[rng.permutation(n)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def rows(self, n: int, directory: str | None = None) -> np.ndarray:
        """The first ``n`` stored rows (chunk ``i`` is stream ``i + 1``; stream 0 is the queries); in a
        file-backed memmap under ``directory`` when given (page cache, not process memory)."""
        shape = (n, self.dim)
        out = np.lib.format.open_memmap(f"{directory}/rows.npy", "w+", np.float32, shape) if directory else (
            np.empty(shape, np.float32))
        for i, a in enumerate(range(0, n, CHUNK)):
            b = min(a + CHUNK, n)
            out[a:b] = self.draw(CHUNK, i + 1)[: b - a]
        return out


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-``k`` inner products (brute force, as ``IndexFlatIP`` does)."""
    _, rows = faiss.knn(queries, data, k, faiss.METRIC_INNER_PRODUCT)
    return rows


def ivf_nlist(n: int, factor: float) -> int:
    """``factor * sqrt(n)`` rounded to a power of two, with at least 39 rows per list."""
    nlist = 2 ** int(round(np.log2(max(factor * np.sqrt(n), 1))))
    while nlist > 1 and n / nlist < 39:
        nlist //= 2
    return nlist


def latencies(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds of each single-query ``actindex.index.search.search`` call, and the rows found."""
    for q in queries[:3]:
        search(index, q, k)  # warm-up: page in lists, spin up OpenMP
    times, found = np.empty(len(queries)), np.empty((len(queries), k), np.int64)
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, rows = search(index, q, k)
        times[i] = (time.perf_counter() - t) * 1e3
        found[i] = rows[0]
    return times, found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())]))


def build_hnsw_budgeted(data: np.ndarray, factory: str, budget: float) -> tuple[faiss.Index | None, float, int]:
    """HNSW built block by block: ``(index or None, seconds, rows added)``; None when over ``budget``."""
    valid = np.ones(len(data), np.bool_)
    start = time.perf_counter()
    index = faiss_index_from_rows(data[:CHUNK], valid[:CHUNK], factory)
    added = min(CHUNK, len(data))
    for a in range(CHUNK, len(data), CHUNK):
        if time.perf_counter() - start > budget:
            return None, time.perf_counter() - start, added
        b = min(a + CHUNK, len(data))
        index.add_with_ids(data[a:b], np.arange(a, b, dtype=np.int64))
        added = b
    return index, time.perf_counter() - start, added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="10000,100000", help="comma-separated index sizes")
    ap.add_argument("--factories", default="flat,ivf,hnsw", help="any of flat, ivf, hnsw")
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--rank", type=int, default=24, help="latent dimensions per cluster")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--nlist-factor", type=float, default=2.0, help="IVF lists = factor * sqrt(rows), power of 2")
    ap.add_argument("--nprobe", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--hnsw", default="HNSW32", help="HNSW factory string")
    ap.add_argument("--ef-search", default="16,32,64,128,256,512")
    ap.add_argument("--hnsw-budget", type=float, default=900.0, help="seconds allowed for one HNSW build")
    ap.add_argument("--train-rows", type=int, default=100_000, help="rows sampled to train IVF (as --faiss-train-rows)")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--memmap-dir", default=None, help="where sizes over 200k rows are generated (default: $TMPDIR)")
    ap.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: FAISS's default)")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    args = ap.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    mix = Mixture(args.dim, args.clusters, args.rank)
    queries = mix.draw(args.queries, 0)
    table: list[list[object]] = []
    frontier: list[str] = []
    notes: list[str] = []
    kinds = args.factories.split(",")
    for n in [int(x) for x in args.rows.split(",")]:
        t = time.perf_counter()
        tmp = tempfile.TemporaryDirectory(prefix="actindex-search-", dir=args.memmap_dir) if n > 200_000 else None
        data = mix.rows(n, tmp.name if tmp else None)
        print(f"{n} rows generated in {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        truth = exact_top(data, queries, args.k)
        print(f"exact top-{args.k}: {time.perf_counter() - t:.1f} s", flush=True)
        valid = np.ones(n, np.bool_)
        runs: list[tuple[str, str, list[tuple[str, dict[str, int]]]]] = []
        if "flat" in kinds:
            runs.append(("Flat", "-", [("-", {})]))
        if "ivf" in kinds:
            nlist = ivf_nlist(n, args.nlist_factor)
            runs.append((f"IVF{nlist},Flat", "nprobe", [(p, {"nprobe": int(p)}) for p in args.nprobe.split(",")
                                                         if int(p) <= nlist]))
        if "hnsw" in kinds:
            runs.append((args.hnsw, "efSearch", [(e, {"ef_search": int(e)}) for e in args.ef_search.split(",")]))
        for factory, knob, settings in runs:
            t = time.perf_counter()
            if factory.startswith("HNSW"):
                index, build_s, added = build_hnsw_budgeted(data, factory, args.hnsw_budget)
                if index is None:
                    total = build_s * n / added
                    notes.append(f"{factory} at {n} rows: stopped after {build_s:.0f} s with {added} rows added; "
                                 f"the whole build would take about {total / 60:.0f} min on this machine, so it "
                                 "was not measured.")
                    print(notes[-1], flush=True)
                    continue
            else:
                index = faiss_index_from_rows(data, valid, factory, args.train_rows)
                build_s = time.perf_counter() - t
            print(f"{factory} built in {build_s:.0f} s", flush=True)
            best: tuple[float, str, float] | None = None
            for value, params in settings:
                set_search_params(index, **params)
                times, found = latencies(index, queries, args.k)
                p50, p99, rec = np.percentile(times, 50), np.percentile(times, 99), recall(found, truth)
                table.append([f"{n:,}", factory, f"{knob}={value}" if knob != "-" else "exact", f"{build_s:.0f}",
                              f"{p50:.2f}", f"{p99:.2f}", f"{rec:.3f}"])
                print(" | ".join(str(c) for c in table[-1]), flush=True)
                if rec >= args.target_recall and (best is None or p50 < best[0]):
                    best = (p50, f"{knob}={value}" if knob != "-" else "exact", rec)
            if best is not None:
                frontier.append(f"{n:,} rows, {factory}: fastest at recall@{args.k} >= {args.target_recall}: "
                                f"{best[1]}, p50 {best[0]:.2f} ms (recall {best[2]:.3f})")
            else:
                frontier.append(f"{n:,} rows, {factory}: no setting reached recall@{args.k} >= {args.target_recall}")
            del index
        del data
        if tmp is not None:
            tmp.cleanup()

    columns = ["rows", "factory", "setting", "build s", "p50 ms", "p99 ms", f"recall@{args.k}"]
    body = markdown_table(columns, table)
    print(body)
    print("\n".join(frontier + notes))
    if not args.no_record:
        intro = (
            f"Synthetic clustered unit vectors, d={args.dim}, {args.clusters} clusters of rank {args.rank}; "
            f"{args.queries} fresh queries, one at a time through `actindex.index.search.search` (k={args.k}); indexes "
            f"built with `actindex.index.search.faiss_index_from_rows` (IVF trained on <= {args.train_rows} rows); "
            f"FAISS threads: {faiss.omp_get_max_threads()}. Recall against exact brute-force inner product.\n\n"
        )
        tail = "\n\n" + "\n".join(f"* {line}" for line in frontier + notes)
        append_section("Search latency", intro + body + tail, ("faiss-cpu", "numpy", "torch", "transformers"))


if __name__ == "__main__":
    main()
