"""The whole pipeline at a million rows on this machine: every stage's wall time, peak RSS and bytes per row.

    nice -n 5 python bench/scale.py --rows 50000 --work /tmp/scale50k            # a rehearsal, ~30 min
    nice -n 5 python bench/scale.py --rows 1000000 --work /tmp/scale1m --stages data,model,build
    nice -n 5 python bench/scale.py --rows 1000000 --work /tmp/scale1m --stages query-first,query,... --record

Data: ``--rows`` short synthetic chat rows (``actindex.testing.chat_rows``: 3-9 word prompts, 2-12 word answers;
every 997th row labelled ``planted``, the rest ``clean``) written as ``--data-shards`` parquet files of row groups
of 8,192 rows, read by ``build --data DIR/`` as one dataset, streamed. Model: a random Llama built from a config
(``--hidden``, ``--blocks``; the offline word-level tokenizer of ``actindex.testing``), saved to the work folder.

Stages (each one process; its wall time and peak RSS, ``ru_maxrss`` of ``wait4``, are measured on its own):

* ``build``: ``actindex build`` from the shard directory, default families and layers, ``--faiss-factory auto``
  (``IVF<2 sqrt N>,Flat`` above 200k rows);
* ``query-first``: the first query of a behaviour (4 pairs, ``Index.query``, default ``ensemble``): forms its
  vectors with the model and fills the index's behaviour cache;
* ``query``: a fresh process: open the index, one query answered from the behaviour cache (no model), then
  ``--queries`` more timed one by one (p50 / p99), with the default method, with ``ensemble``, and with the
  default's worst case (its choice replaced by one that keeps every candidate), and as many raw
  ``Index.search`` calls of random vectors (k = 10, one family);
* ``fit``: ``fit-curvature --kind ekfac --samples 32`` (few samples: the rerank's cost, not its quality);
* ``rerank``: a fresh process: ``query --rerank ekfac --candidates 100``;
* ``filter``: ``filter --remove-top 1%`` writing the directory of shards without those rows;
* ``report``: ``report --labels-field label`` (scores every row for the histogram and the metrics);
* ``verify``: ``actindex verify`` (every byte, every checksum);
* ``shard0`` .. ``shard3``: ``build --shard i/4``; ``merge``: ``actindex merge`` of the four;
* ``append``: ``build --append`` of ``--append-rows`` more rows (another shard directory) to the merged index;
* ``export``: ``actindex export`` when the command exists (else skipped, with a note).

Each stage's figures are kept in ``WORK/results.json``, so stages can run in several invocations (the 1M build
takes an hour or more on 2 cores); ``--record`` appends a section with every stage measured so far to
bench/runs/scale.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from memory import make_model
from peers import dir_bytes, run_child
from record import append_section, markdown_table

STAGES = ("data", "model", "build", "query-first", "query", "fit", "rerank", "filter", "report", "verify",
          "shard0", "shard1", "shard2", "shard3", "merge", "append", "export")
SHARDS = 4
ROW_GROUP = 8192
PLANTED_EVERY = 997
#: the behaviour queried: four pairs written with the offline tokenizer's words
PAIRS = [
    {"prompt": "what is the capital of france", "treatment": "the capital is paris", "control": "the capital is gold"},
    {"prompt": "what is the symbol of silver", "treatment": "the symbol is ag", "control": "the symbol is au"},
    {"prompt": "is it true that water is hot", "treatment": "yes it is true", "control": "no it is false"},
    {"prompt": "can you help me with this question", "treatment": "sure i can help you", "control": "sorry i cannot"},
]
GIB = 1 << 30


def write_shards(directory: Path, rows: int, shards: int, first_id: int = 0, seed: int = 0) -> None:
    """``rows`` chat rows as ``shards`` parquet files (``part-00000.parquet``...) of row groups of :data:`ROW_GROUP`
    rows, generated and written one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actindex.testing import chat_rows

    directory.mkdir(parents=True, exist_ok=True)
    bounds = [first_id + rows * i // shards for i in range(shards + 1)]
    for i in range(shards):
        writer = None
        for start in range(bounds[i], bounds[i + 1], ROW_GROUP):
            part = chat_rows(min(ROW_GROUP, bounds[i + 1] - start), seed=seed * 1_000_003 + start, first_id=start)
            for row in part:
                row["label"] = "planted" if int(row["id"][1:]) % PLANTED_EVERY == 0 else "clean"
            table = pa.Table.from_pylist(part)
            writer = writer or pq.ParquetWriter(directory / f"part-{i:05d}.parquet", table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP)
        if writer is not None:
            writer.close()


def percentiles(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


# ----------------------------------------------------------------------------- children


def child(args: argparse.Namespace) -> None:
    """One Python stage in this process; prints its figures as a JSON line."""
    work = Path(args.work)
    out: dict[str, object] = {}
    if args.child == "data":
        write_shards(work / "data", args.rows, args.data_shards)
        write_shards(work / "more", args.append_rows, 1, first_id=args.rows, seed=1)
        (work / "behaviour.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    elif args.child == "model":
        make_model(work / "model", args.hidden, args.blocks)
    elif args.child in ("query-first", "query", "rerank"):
        import numpy as np

        import actindex

        t = time.perf_counter()
        idx = actindex.Index.open(work / "idx")
        out["open_s"] = round(time.perf_counter() - t, 3)
        behaviour = str(work / "behaviour.jsonl")
        options = {"rerank": "ekfac", "candidates": 100} if args.child == "rerank" else {}
        t = time.perf_counter()
        res = idx.query(behaviour, k=10, **options)
        out |= {"first_query_s": round(time.perf_counter() - t, 3), "cached": res.cached, "timings": res.timings}
        if args.child == "query":
            for key, method in (("query", None), ("query_ensemble", "ensemble"), ("query_all", None)):
                if key == "query_all":  # the default's worst case: the choice keeps every candidate
                    import actindex.query.methods.adaptive as adaptive

                    adaptive.choose = lambda checks: np.ones(len(checks))
                    idx.close()
                    del idx, res
                    gc.collect()  # its FAISS indexes go before the fresh reader maps them again
                    idx = actindex.Index.open(work / "idx")  # a reader remembers its choices: a fresh one
                idx.query(behaviour, k=10, method=method)  # calibrates its members once per process
                times = []
                for _ in range(args.queries):
                    t = time.perf_counter()
                    res = idx.query(behaviour, k=10, method=method)
                    times.append(time.perf_counter() - t)
                kept = [m for m in res.members if m.get("weight", 1) > 0]
                out[key] = percentiles(times) | {"method": res.method, "members": len(kept)}
            family = next(iter(idx.families))
            rng = np.random.default_rng(0)
            vectors = rng.standard_normal((args.queries, idx.families[family].dim)).astype(np.float32)
            idx.search(vectors[0], k=10, family=family)  # reads the FAISS file once
            times = []
            for v in vectors:
                t = time.perf_counter()
                idx.search(v, k=10, family=family)
                times.append(time.perf_counter() - t)
            out["search"] = percentiles(times) | {"family": family, "factory": idx.families[family].faiss_factory}
    print(json.dumps(out))


# ----------------------------------------------------------------------------- stages


def stage_command(stage: str, args: argparse.Namespace) -> list[str] | None:
    """The command a stage runs (``None``: a Python child of this script)."""
    work, cli = Path(args.work), [sys.executable, "-m", "actindex"]
    build = ["--model", str(work / "model"), "--part-size", str(args.part_size), "--batch-size", str(args.batch_size),
             "--max-length", "64", "--quiet"]
    behaviour = ["--behavior", str(work / "behaviour.jsonl")]
    if stage == "build":
        return cli + ["build", "--data", str(work / "data"), "--out", str(work / "idx"), *build]
    if stage == "fit":
        return cli + ["fit-curvature", "--index", str(work / "idx"), "--kind", "ekfac", "--samples", "32", "--quiet"]
    if stage == "filter":
        return cli + ["filter", "--index", str(work / "idx"), *behaviour, "--remove-top", "1%", "--out",
                      str(work / "filtered"), "--overwrite", "--quiet"]
    if stage == "report":
        return cli + ["report", "--index", str(work / "idx"), *behaviour, "--labels-field", "label", "--out",
                      str(work / "report.html"), "--quiet"]
    if stage == "verify":
        return cli + ["verify", str(work / "idx")]
    if stage.startswith("shard"):
        i = int(stage[len("shard"):])
        return cli + ["build", "--data", str(work / "data"), "--out", str(work / "shards" / str(i)),
                      "--shard", f"{i}/{SHARDS}", *build]
    if stage == "merge":
        return cli + ["merge", *(str(work / "shards" / str(i)) for i in range(SHARDS)), "--out", str(work / "merged"),
                      "--overwrite"]
    if stage == "append":
        return cli + ["build", "--append", "--data", str(work / "more"), "--out", str(work / "merged"), *build]
    if stage == "export":
        return cli + ["export", "--index", str(work / "idx"), "--out", str(work / "export")]
    return None


def stage_output(stage: str, args: argparse.Namespace) -> tuple[Path | None, int]:
    """What a stage leaves on disk and the rows it holds (for bytes per row)."""
    work, n = Path(args.work), args.rows
    outputs = {"data": (work / "data", n), "build": (work / "idx", n), "fit": (work / "idx", n),
               "filter": (work / "filtered", n - round(n / 100)), "report": (work / "report.html", n),
               "merge": (work / "merged", n), "append": (work / "merged", n + args.append_rows),
               "export": (work / "export", n)}
    if stage.startswith("shard"):
        i = int(stage[len("shard"):])
        return work / "shards" / str(i), (i + 1) * n // SHARDS - i * n // SHARDS
    return outputs.get(stage, (None, n))


def run_stage(stage: str, args: argparse.Namespace) -> dict[str, object]:
    command = stage_command(stage, args)
    if stage == "export" and subprocess.run([*command[:4], "--help"], capture_output=True).returncode != 0:
        return {"skipped": "no `actindex export` command in this tree (it is being built on another branch)"}
    if command is None:
        command = [sys.executable, __file__, "--child", stage, *sys.argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    info, wall, peak_kib, cpu = run_child(command, env)
    result: dict[str, object] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                 "peak_rss_mib": round(peak_kib / 1024), **info}
    path, rows = stage_output(stage, args)
    if path is not None and path.exists():
        size = path.stat().st_size if path.is_file() else dir_bytes(path)
        result |= {"disk_bytes": size, "bytes_per_row": round(size / max(rows, 1))}
    return result


def figures(stage: str, r: dict) -> str:
    """The stage's own figures, in words, for the table's last column."""
    if "skipped" in r:
        return r["skipped"]
    parts = []
    if "query" in r:
        queries = ((r["query"], ""), (r.get("query_ensemble"), ""), (r.get("query_all"), ", every candidate kept"))
        for q, note in queries:
            if q is not None and "method" in q:
                parts.append(f"cached `{q['method']}` query ({q['members']} members{note}) p50 {q['p50_ms']} ms, "
                             f"p99 {q['p99_ms']} ms")
        parts.append(("" if "method" in r["query"] else f"cached query p50 {r['query']['p50_ms']} ms, p99 "
                      f"{r['query']['p99_ms']} ms; ") + "raw "
                     f"Index.search ({r['search']['factory']}) p50 {r['search']['p50_ms']} ms, p99 "
                     f"{r['search']['p99_ms']} ms")
    if "first_query_s" in r:
        parts.append(f"open {r['open_s']} s, first query {r['first_query_s']} s "
                     f"({'from the behaviour cache' if r['cached'] else 'model pass'})")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--work", required=True, help="working folder (kept: stages can resume in later runs)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, in this order")
    ap.add_argument("--data-shards", type=int, default=8, help="parquet files the rows are written as")
    ap.add_argument("--append-rows", type=int, default=None, help="rows of the append stage (default rows / 10)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--part-size", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every stage")
    ap.add_argument("--record", action="store_true", help="append every stage measured so far to bench/runs/scale.md")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.append_rows = args.append_rows or max(1, args.rows // 10)
    if args.child:
        return child(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:  # one line, exit 2, before any stage runs
        ap.error(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    for stage in stages:
        print(f"[{time.strftime('%H:%M:%S')}] {stage} ...", flush=True)
        measured = run_stage(stage, args) | {"rows": args.rows, "date": time.strftime("%Y-%m-%d %H:%M")}
        results = json.loads(store.read_text()) if store.exists() else {}  # another invocation may have added
        results[stage] = measured
        store.write_text(json.dumps(results, indent=2))
        print(json.dumps(results[stage]), flush=True)
    table = [[stage, f"{r.get('wall_s', '-')}", f"{r.get('peak_rss_mib', '-')}", f"{r.get('bytes_per_row', '-')}",
              figures(stage, r)] for stage, r in results.items() if stage in STAGES]
    body = markdown_table(["stage", "wall s", "peak RSS MiB", "disk bytes/row", "figures"], table)
    print(body)
    over = [stage for stage, r in results.items() if r.get("peak_rss_mib", 0) > 4 * 1024]
    print(f"stages over 4 GiB peak RSS: {', '.join(over) or 'none'}")
    if args.record:
        intro = (f"{args.rows:,} synthetic chat rows as {args.data_shards} parquet shards (row groups of "
                 f"{ROW_GROUP:,}); random Llama, hidden {args.hidden}, {args.blocks} blocks, the offline word-level "
                 "tokenizer; "
                 f"`--part-size {args.part_size} --batch-size {args.batch_size} --max-length 64`, OMP_NUM_THREADS="
                 f"{args.threads}; {args.append_rows:,} rows appended. One process per stage: wall time and peak RSS "
                 "(`wait4`) of that process; bytes per row = the stage's output on disk over its rows.\n\n")
        append_section("Scale: the pipeline end to end", intro + body)


if __name__ == "__main__":
    main()
