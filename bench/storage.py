"""Storage for internet scale, measured: bytes per row per family of the compact default (at SmolLM2's width and an
8B model's) and of the full-width research build, and the recall and latency of an IVF-PQ search whose candidates
are re-scored exactly from the vectors on disk.

    nice -n 5 python bench/storage.py --rows 1000000            # ~20 min on 2 cores, 3 GB of temporary disk

Part 1, bytes per row: real indexes of ``--build-rows`` synthetic chat rows built with random Llamas (2 blocks, the
offline tokenizer) at one layer: the default build (``compact``: five kinds stored at the default width in float16,
no FAISS copy) with a model of width 576 (SmolLM2-135M's) and one of width 4096 (an 8B model's; small attention
heads keep it cheap), and ``--full-width`` (seven kinds, float32, a Flat FAISS copy each) at width 576. Per family:
the bytes its dataset takes in vectors.h5 and its FAISS file, over the rows; per row: the metadata (ids, record,
hash, loss...) and the file total (the projection matrix, a fixed cost, included).

Part 2, IVF-PQ + exact rescoring: ``--rows`` synthetic clustered unit vectors of the stored width (``--width``,
``search_latency.py``'s mixture), stored the way ``actindex build`` stores a family (an HDF5 dataset in float16,
chunked as the writer chunks it); ``IVF<2 sqrt N>,PQ<width/8>`` (what ``compact`` builds beyond 200k rows) trained
on 100k rows (nprobe 16) returns ``c x k`` candidates (k = 100), whose stored vectors are read back
(``actindex.index.reader.gather``) and ranked by their exact cosine. Recall@100 against exact search and the
latency of search + rescoring (one query at a time, p50/p99), next to ``IVF<..>,Flat``, and the RAM each FAISS
index takes (its serialised size).

Part 3 projects disk and RAM at 1M, 10M and 100M rows, widths 576 and 4096, from the measured bytes per row.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import h5py
import numpy as np
from memory import make_model
from record import append_section, markdown_table
from search_latency import Mixture, exact_top, recall

from actindex.index.reader import gather
from actindex.index.search import faiss_index_from_rows, resolve_factory, set_search_params
from actindex.index.writer import vector_chunks

K = 100
LAYERS = 4  # the default build's layers (12, 18, 24, 27 of SmolLM2-135M's 30)
KINDS_DEFAULT, KINDS_FULL = 5, 7  # per-layer kinds of the default build and of --full-width


def index_bytes(path: Path) -> dict[str, float]:
    """Bytes per row of an index: each family's dataset and FAISS file, and the per-row metadata."""
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    rows = manifest["rows"]
    out: dict[str, float] = {}
    with h5py.File(path / "vectors.h5", "r") as f:
        meta = sum(f[k].id.get_storage_size() for k in f if isinstance(f[k], h5py.Dataset))
        strings = sum(len(v) for k in ("ids", "hash", "record") for v in f[k][()])  # vlen data sits in the heap
        out["metadata"] = (meta + strings) / rows
        for name, fam in manifest["families"].items():
            out[f"{name} vectors"] = f[f"vectors/{name}"].id.get_storage_size() / rows
            out[f"{name} faiss"] = (path / fam["faiss"]).stat().st_size / rows if fam["faiss"] else 0.0
    out["file total"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / rows
    return out


#: part 1's indexes: label, model width, build options
PART1 = (("default, width 576", 576, {}), ("default, width 4096", 4096, {}),
         ("--full-width, width 576", 576, {"full_width": True, "faiss_factory": "Flat"}))


def part1(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    import actindex
    from actindex.core.models import load_model
    from actindex.testing import chat_rows, write_jsonl

    data = write_jsonl(work / "rows.jsonl", chat_rows(args.build_rows, seed=0))
    out = {}
    for label, width, options in PART1:
        model = work / f"model-{width}"
        if not model.exists():
            make_model(model, width, 2, head_dim=16)
        lm = load_model(str(model), device="cpu")
        path = work / label.replace(", ", "-").replace(" ", "")
        actindex.build(data=str(data), out=str(path), model=lm, progress=False, overwrite=True, layers=[1],
                       heldout="none", **options)
        out[label] = index_bytes(path)
        print(label, {k: round(v) for k, v in out[label].items()}, flush=True)
    return out


def part2(args: argparse.Namespace, work: Path) -> tuple[list[list[object]], dict[str, float]]:
    mix = Mixture(args.width, 256, 24)
    t = time.perf_counter()
    data = mix.rows(args.rows, str(work))
    queries = mix.draw(args.queries, 0)
    truth = exact_top(data, queries, K)
    print(f"{args.rows} rows generated, exact truth in {time.perf_counter() - t:.0f} s", flush=True)
    with h5py.File(work / "family.h5", "w") as f:  # one family, stored as actindex stores it
        ds = f.create_dataset("v", shape=data.shape, dtype="float16", chunks=vector_chunks(data.shape, "float16"))
        for a in range(0, len(data), 65536):
            ds[a : a + 65536] = data[a : a + 65536]
    valid = np.ones(args.rows, np.bool_)
    nlist = 2 ** round(np.log2(2 * np.sqrt(args.rows)))
    rows, ram = [], {}
    for factory in (f"IVF{nlist},Flat", resolve_factory("compact", args.rows, args.width)):
        t = time.perf_counter()
        index = faiss_index_from_rows(data, valid, factory, 100_000)
        build_s = time.perf_counter() - t
        set_search_params(index, nprobe=16)
        ram[factory] = len(faiss.serialize_index(index)) / args.rows
        factors = (1,) if factory.endswith("Flat") else args.candidates
        for c in factors:
            times, found = [], []
            with h5py.File(work / "family.h5", "r") as f:
                stored = f["v"]
                for q in queries:
                    t = time.perf_counter()
                    _, cand = index.search(q[None], K * c)
                    cand = cand[0][cand[0] >= 0]
                    if not factory.endswith("Flat"):  # exact cosines of the candidates, from the stored vectors
                        vec = gather(stored, cand).astype(np.float32)
                        cos = (vec / np.linalg.norm(vec, axis=1, keepdims=True)) @ q
                        cand = cand[np.argsort(-cos, kind="stable")[:K]]
                    times.append(time.perf_counter() - t)
                    found.append(np.pad(cand[:K], (0, K - len(cand[:K])), constant_values=-1))
            ms = np.asarray(times) * 1000
            setting = "-" if factory.endswith("Flat") else f"{c * K} candidates re-scored"
            rows.append([f"{args.rows:,}", factory, setting, f"{build_s:.0f}", f"{np.percentile(ms, 50):.2f}",
                         f"{np.percentile(ms, 99):.2f}", f"{recall(np.stack(found), truth):.3f}",
                         f"{ram[factory]:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
        del index
    return rows, ram


def projection(p1: dict[str, dict[str, float]], ram: dict[str, float]) -> list[list[object]]:
    """Disk and RAM at 1M, 10M and 100M rows from the measured bytes per row (per family, times the families of
    the default's four layers; the projection matrix is a fixed cost, not counted per row)."""

    def per(d: dict[str, float], what: str) -> float:
        vals = [v for k, v in d.items() if k.endswith(what)]
        return sum(vals) / len(vals)

    ivf_flat = next(v for k, v in ram.items() if k.endswith(",Flat"))
    ivf_pq = next(v for k, v in ram.items() if not k.endswith(",Flat"))
    table_row_ram = 29  # valid, loss, token counts, source_row, line: what the reader holds per row
    configs = []
    for width in (576, 4096):
        d = p1[f"default, width {width}"]
        fams = KINDS_DEFAULT * LAYERS
        configs.append((f"default (compact), width {width}, <= 200k rows: no FAISS copy", width, d, fams,
                        per(d, " vectors"), 0.0, "store (exact scan)", 200_000))
        configs.append((f"default (compact), width {width}, > 200k rows: IVF-PQ + re-scoring", width, d, fams,
                        per(d, " vectors"), ivf_pq, "IVF<2 sqrt N>,PQ32", None))
    full = p1["--full-width, width 576"]
    for width in (576, 4096):
        scale = width / 576  # full width: every vector (and its Flat/IVF-Flat copy) grows with the width
        configs.append((f"--full-width, width {width}, IVF-Flat", width, full, KINDS_FULL * LAYERS,
                        per(full, " vectors") * scale, ivf_flat * scale, "IVF<2 sqrt N>,Flat", None))
    out = []
    for name, _width, d, fams, vec, faiss_row, factory, upto in configs:
        disk_row = d["metadata"] + fams * (vec + faiss_row)
        searched = min(fams, KINDS_DEFAULT * LAYERS)
        for n in (1_000_000, 10_000_000, 100_000_000):
            if upto is not None and n > upto or upto is None and n <= 200_000:
                continue
            ram_row = searched * (faiss_row if faiss_row else vec) + table_row_ram
            out.append([name, f"{n:,}", f"{fams * (vec + faiss_row):,.0f}", f"{_size(disk_row * n)}",
                        f"{_size(ram_row * n)}", factory, sharding(ram_row * n)])
    return out


def _size(n: float) -> str:
    return f"{n / 1e12:.2f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB"


#: RAM one search host is assumed to give the FAISS indexes (the rest: the model, the OS, the page cache)
HOST_RAM = 48e9


def sharding(ram: float) -> str:
    """How to lay out an index whose searched FAISS indexes take ``ram`` bytes: one index while they fit in
    :data:`HOST_RAM`, else ``n = ceil(ram / HOST_RAM)`` shards (``build --shard i/n``), each searched on its own
    host and the per-shard top k merged by score (or, on one host with n x that RAM, ``faiss.IndexShards``)."""
    n = int(np.ceil(ram / HOST_RAM))
    if n <= 1:
        return "one index (fits one host)"
    return (f"{n} shards (`build --shard i/{n}`): per-shard search, top k merged by score; or faiss.IndexShards "
            f"on one host with {ram / 1e9:.0f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--build-rows", type=int, default=1000)
    ap.add_argument("--width", type=int, default=256, help="stored width of part 2's vectors (the default build's)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--candidates", default="1,2,4,10", help="candidate factors c: c x 100 rows are re-scored")
    ap.add_argument("--work", default=None, help="temporary folder (default $TMPDIR)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    args.candidates = tuple(int(c) for c in args.candidates.split(","))
    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="actindex-storage-", dir=args.work) as tmp:
        work = Path(tmp)
        p1 = part1(args, work)
        p2, ram = part2(args, work)
    fam_rows = []
    for label, d in p1.items():
        for key, value in d.items():
            fam_rows.append([label, key, f"{value:,.0f}"])
    body = ("Part 1: bytes per row of real indexes (random Llamas, 2 blocks, the families at layer 1, "
            f"{args.build_rows:,} synthetic rows):\n\n" + markdown_table(["index", "what", "bytes per row"], fam_rows))
    body += (f"\n\nPart 2: IVF-PQ + exact rescoring, {args.rows:,} synthetic unit rows of width {args.width} stored in "
             "float16 "
             "(one FAISS thread, one query at a time, k = 100, nprobe 16):\n\n"
             + markdown_table(["rows", "factory", "rescoring", "build s", "p50 ms", "p99 ms", "recall@100",
                               "FAISS RAM bytes/row"], p2))
    body += ("\n\nPart 3: projected from the measured bytes per row at 4 layers (disk: metadata + families x (stored "
             "vector + FAISS); RAM: the searched families' FAISS indexes (or, with no copy, their stored vectors in "
             "the page cache) + the reader's 29-byte row table):\n\n"
             + markdown_table(["configuration", "rows", "vector + FAISS bytes/row", "disk", "RAM to search", "factory",
                             f"sharding (hosts of {HOST_RAM / 1e9:.0f} GB for FAISS)"], projection(p1, ram)))
    print(body)
    if not args.no_record:
        append_section("Storage for internet scale", body)


if __name__ == "__main__":
    main()
