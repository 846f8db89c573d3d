"""Latency and throughput of `actindex serve` at 1, 4 and 8 concurrent clients against a served index.

    nice -n 5 python bench/serve.py --rows 10000 --queries 96 --clients 1,4,8 [--baseline-src OLD/src]

Builds (once, in ``--work``) a tiny random Llama saved to a directory (no download; the offline tokenizer of
:mod:`actindex.testing`) and an index of ``--rows`` synthetic chat rows (:func:`actindex.testing.chat_rows`)
with the default layers and families, then starts ``actindex serve`` as its own process on a free port of
127.0.0.1, as a user would. The first query of the behaviour forms it with the model and stores it in the
behaviour cache. Then, for each number of clients, that many client *processes* (each with its own keep-alive
HTTP connection, so the clients' own Python does not share one interpreter lock) send ``--queries`` requests in
all, started together, of three kinds:

    /query, same request     the behaviour, k = 10: answered from the server's memory of answers
    /query, varying k        the behaviour, k = 5..24 and bottom_k = 0..4, no two requests alike (up to 100):
                             computed from the behaviour cache (no model pass), never from the memory of answers
    /search, varying k       a raw vector, k = 5..24 in one family

(the default method, the fused adaptive ensemble over every indexed layer; records in every answer). Latency is
the wall time of each request at the client; p50, p95, the throughput (requests over the wall time of the
slowest client) and the errors (any non-200 answer) are printed and appended to bench/runs/serve.md, with the
ratio of each kind's throughput at 4 clients to 1 client's. ``--baseline-src`` serves the same requests from
another source tree first (``PYTHONPATH``; e.g. ``git archive`` of an older commit), side by side in one run.
Targets (issue 38): 4 clients at p50 <= 20 ms on a cached 10k-row query on an idle machine, and throughput at 4
clients above 1 client's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from record import append_section, markdown_table

from actindex.testing import chat_rows, make_tokenizer, write_jsonl

#: ``k`` and ``bottom_k`` of the varying requests: every pair once (100 requests) before any repeats
KS, BOTTOM_KS = tuple(range(5, 25)), tuple(range(5))


def build(work: Path, rows: int, hidden: int, layers: int) -> tuple[Path, Path]:
    """``(model directory, index directory)`` in ``work``, made when missing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import actindex
    from actindex.core.models import load_model, save_weights

    model_dir, index_dir = work / "model", work / f"index-{rows}"
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        tok = make_tokenizer()
        config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                             tie_word_embeddings=True)
        save_weights(LlamaForCausalLM(config).eval(), tok, model_dir)
    if not (index_dir / "manifest.json").exists():
        data = write_jsonl(work / f"rows-{rows}.jsonl", chat_rows(rows, seed=0))
        started = time.perf_counter()
        actindex.build(data=str(data), out=str(index_dir), model=load_model(str(model_dir)), batch_size=32,
                       progress=False, overwrite=True)
        print(f"built {index_dir} in {time.perf_counter() - started:.0f} s")
    return model_dir, index_dir


def start_server(index_dir: Path, model_dir: Path, workers: int | None, src: str | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """``actindex serve`` in its own process (from the source tree ``src`` when given), and its URL."""
    threads = ["--workers", str(workers)] if workers else []
    env = dict(os.environ, PYTHONPATH=src) if src else None
    proc = subprocess.Popen([sys.executable, "-m", "actindex", "serve", "--index", str(index_dir), "--port", "0",
                             "--model", str(model_dir), *threads], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    print(line.strip())
    url = line.split()[2]
    for _ in range(600):
        try:
            httpx.get(url + "health")
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the server did not answer")


def client(job: tuple[str, str, list[dict], float]) -> tuple[list[float], int]:
    """One client process: its requests (``path``, the bodies) on one keep-alive connection, from ``start``
    (wall clock) on; ``(latencies in s, errors)``."""
    url, path, bodies, start = job
    latencies, errors = [], 0
    with httpx.Client(base_url=url, timeout=300) as c:
        c.get("/health")  # connected before the clock starts
        time.sleep(max(0.0, start - time.time()))
        for body in bodies:
            started = time.perf_counter()
            errors += c.post(path, json=body).status_code != 200
            latencies.append(time.perf_counter() - started)
    return latencies, errors


def burst(pool: multiprocessing.pool.Pool, url: str, path: str, bodies: list[dict], clients: int
          ) -> tuple[list[float], int, float]:
    """``(latencies, errors, wall s)`` of ``bodies`` sent by ``clients`` processes (dealt round-robin)."""
    start = time.time() + 1.0
    jobs = [(url, path, bodies[i::clients], start) for i in range(clients)]
    results = pool.map(client, jobs)
    latencies = [x for r, _ in results for x in r]
    return latencies, sum(e for _, e in results), max(sum(r) for r, _ in results)


def kinds(info: dict, behavior: str, n: int) -> list[tuple[str, str, list[dict]]]:
    """``(name, path, bodies)`` of the three kinds of request (see the module docstring)."""
    family = next(iter(info["families"]))
    vector = np.random.default_rng(0).standard_normal(info["families"][family]["dim"]).tolist()
    return [("/query, same request", "/query", [{"behavior": behavior, "k": 10}] * n),
            ("/query, varying k", "/query", [{"behavior": behavior, "k": KS[i % len(KS)],
                                              "bottom_k": BOTTOM_KS[i // len(KS) % len(BOTTOM_KS)]}
                                             for i in range(n)]),
            (f"/search {family}, varying k", "/search",
             [{"vector": vector, "family": family, "k": KS[i % len(KS)]} for i in range(n)])]


def measure(urls: dict[str, str], behavior: str, args: argparse.Namespace) -> list[dict]:
    """Every kind of request at every number of clients against every server (``name -> url``), ``--rounds``
    times, the servers taking turns for each cell (so a load that comes and goes on a shared machine falls on
    them alike); each cell's figures are the median over the rounds."""
    info = httpx.get(next(iter(urls.values())) + "info").json()
    samples: dict[tuple[str, str, int], list[dict]] = {}
    with multiprocessing.get_context("spawn").Pool(max(args.clients)) as pool:
        for _ in range(args.rounds):
            for name, path, bodies in kinds(info, behavior, args.queries):
                for clients in args.clients:
                    for server, url in urls.items():
                        latencies, errors, wall = burst(pool, url, path, bodies, clients)
                        ms = np.array(latencies) * 1000
                        samples.setdefault((server, name, clients), []).append(
                            {"n": len(ms), "p50": float(np.percentile(ms, 50)),
                             "p95": float(np.percentile(ms, 95)), "rate": len(ms) / wall, "errors": errors})
                        last = samples[server, name, clients][-1]
                        print(f"{server}: {name}, {clients} clients: p50 {last['p50']:.1f} ms, "
                              f"{last['rate']:.0f} req/s")
    return [{"server": server, "request": name, "clients": clients, "n": sum(x["n"] for x in got),
             "errors": sum(x["errors"] for x in got),
             **{key: float(np.median([x[key] for x in got])) for key in ("p50", "p95", "rate")}}
            for (server, name, clients), got in sorted(samples.items(), key=lambda item: item[0])]


def started(index_dir: Path, model_dir: Path, args: argparse.Namespace, src: str | None
            ) -> tuple[subprocess.Popen, str, float]:
    """A server (from ``src``) with the behaviour formed by its first query: ``(process, url, first query s)``."""
    proc, url = start_server(index_dir, model_dir, args.workers, src)
    began = time.perf_counter()
    httpx.post(url + "query", json={"behavior": args.behavior, "k": 10}, timeout=900).raise_for_status()
    return proc, url, time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=96, help="requests of each kind at each number of clients")
    ap.add_argument("--clients", default="1,4,8", help="numbers of concurrent clients, comma-separated")
    ap.add_argument("--workers", type=int, help="the server's --workers (default: its own, one per CPU core)")
    ap.add_argument("--behavior", default="sycophancy")
    ap.add_argument("--hidden", type=int, default=64, help="the random Llama's width")
    ap.add_argument("--layers", type=int, default=4, help="its blocks (the index holds the default layers)")
    ap.add_argument("--baseline-src", help="also serve from this source tree (PYTHONPATH), side by side")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each cell (their median is reported)")
    ap.add_argument("--work", default="/tmp/actindex-bench-serve")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, index_dir = build(work, args.rows, args.hidden, args.layers)
    shutil.rmtree(index_dir / "cache", ignore_errors=True)  # the first query forms the behaviour
    servers = ([("baseline", args.baseline_src)] if args.baseline_src else []) + [("this tree", None)]
    running, firsts = {}, {}
    try:
        for server, src in servers:
            proc, url, firsts[server] = started(index_dir, model_dir, args, src)
            running[server] = (proc, url)
        rows = measure({server: url for server, (_, url) in running.items()}, args.behavior, args)
    finally:
        for proc, _ in running.values():
            proc.terminate()
            proc.wait(timeout=60)
    ratios = []
    for server, _ in servers:
        for request in dict.fromkeys(r["request"] for r in rows):
            rate = {r["clients"]: r["rate"] for r in rows if r["server"] == server and r["request"] == request}
            if 1 in rate and 4 in rate:
                ratios.append(f"{server}, {request}: {rate[4] / rate[1]:.2f}x")
    table = markdown_table(["server", "request", "clients", "n", "p50 ms", "p95 ms", "req/s", "errors"],
                           [[r["server"], r["request"], r["clients"], r["n"], f"{r['p50']:.1f}", f"{r['p95']:.1f}",
                             f"{r['rate']:.0f}", r["errors"]] for r in rows])
    print(table)
    print("throughput at 4 clients / 1 client: " + "; ".join(ratios))
    if not args.no_record:
        workers = f" --workers {args.workers}" if args.workers else ""
        first = ", ".join(f"{server} {s:.2f} s" for server, s in firsts.items())
        rounds = f"median of {args.rounds} rounds, the servers taking turns for each cell"
        body_md = (f"Index of {args.rows} synthetic chat rows (`actindex.testing.chat_rows`), random Llama of width "
                   f"{args.hidden} with {args.layers} blocks, served by `actindex serve{workers}` in its own process "
                   f"({args.workers or os.cpu_count()} worker threads); each client a process of its own with a "
                   f"keep-alive connection; the default method (adaptive); {rounds}. The first `{args.behavior}` "
                   f"query (the first server forms it with the model; the next finds it cached): {first}. "
                   f"Throughput at 4 clients / 1 client: {'; '.join(ratios)}."
                   f"\n\n{table}\n")
        append_section("Serve latency and throughput at 1, 4 and 8 clients", body_md,
                       packages=("torch", "faiss-cpu", "fastapi", "uvicorn", "httpx", "numpy", "h5py"))


if __name__ == "__main__":
    main()
