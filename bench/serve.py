"""Latency of `actindex serve`: cached-behaviour queries from concurrent clients against a served index.

    nice -n 5 python bench/serve.py --rows 10000 --queries 200 --clients 8

Builds (once, in ``--work``) a tiny random Llama saved to a directory (no download; the offline tokenizer of
:mod:`actindex.testing`) and an index of ``--rows`` synthetic chat rows (:func:`actindex.testing.chat_rows`)
with the default layers and families, then starts ``actindex serve`` as its own process on a free port of
127.0.0.1, as a user would. The first query of the behaviour forms it with the model and stores it in the
behaviour cache; then ``--clients`` threads, each with its own keep-alive HTTP connection (httpx), send
``--queries`` queries of that behaviour in all (the default method, the fused ensemble over every indexed
layer, k = 10, the records in the answer), then a quarter as many from one client alone. The default server
answers an identical request from its memory of answers (``--answers``); the same is then measured against a
server started with ``--answers 0``, which computes every query from the behaviour cache (the model never
runs), beside raw-vector ``/search`` and ``/health`` calls: the floor of a request through the HTTP stack on
the same machine. Latency is the wall time of each request at the client (the clients run in this process,
on the same cores); p50, p99, max, the throughput and the errors (any non-200 answer) are printed and
appended to bench/runs/serve.md. Target (issue 24): p50 <= 20 ms at 10k rows on this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from record import append_section, markdown_table

from actindex.testing import chat_rows, make_tokenizer, write_jsonl


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


def start_server(index_dir: Path, model_dir: Path, workers: int | None, answers: int
                 ) -> tuple[subprocess.Popen, str]:
    threads = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen([sys.executable, "-m", "actindex", "serve", "--index", str(index_dir), "--port", "0",
                             "--model", str(model_dir), *threads, "--answers", str(answers)],
                            stdout=subprocess.PIPE, text=True)
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


def burst(url: str, path: str, body: dict | None, total: int, clients: int) -> tuple[list[float], int, float]:
    """``(latencies in s, errors, wall s)`` of ``total`` requests from ``clients`` threads."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per_client = [total // clients + (i < total % clients) for i in range(clients)]

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for _ in range(n):
                started = time.perf_counter()
                status = (c.get(path) if body is None else c.post(path, json=body)).status_code
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors[0] += status != 200

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def row(name: str, latencies: list[float], errors: int, wall: float) -> list[object]:
    ms = np.array(latencies) * 1000
    return [name, len(ms), f"{np.percentile(ms, 50):.1f}", f"{np.percentile(ms, 99):.1f}", f"{ms.max():.1f}",
            f"{len(ms) / wall:.0f}", errors]


def measure(url: str, body: dict, args: argparse.Namespace, how: str, floor: bool) -> list[list[object]]:
    """Rows of the table for one server: the burst of queries, the same from one client, and with ``floor`` the
    raw-vector searches and /health through the same HTTP stack."""
    c = args.clients
    many = burst(url, "/query", body, args.queries, c)
    rows = [row(f"/query {args.behavior}, cached, {how}, {c} clients", *many),
            row(f"/query, {how}, 1 client", *burst(url, "/query", body, args.queries // 4, 1))]
    if floor:
        info = httpx.get(url + "info").json()
        family = next(iter(info["families"]))
        vector = np.random.default_rng(0).standard_normal(info["families"][family]["dim"]).tolist()
        rows.append(row(f"/search {family}, k 10, {c} clients",
                        *burst(url, "/search", {"vector": vector, "family": family, "k": 10}, args.queries, c)))
        rows.append(row(f"/health, {c} clients", *burst(url, "/health", None, args.queries, c)))
    return [*rows, many[0]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, help="the server's --workers (default: its own, one per CPU core)")
    ap.add_argument("--behavior", default="sycophancy")
    ap.add_argument("--hidden", type=int, default=64, help="the random Llama's width")
    ap.add_argument("--layers", type=int, default=4, help="its blocks (the index holds the default layers)")
    ap.add_argument("--work", default="/tmp/actindex-bench-serve")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, index_dir = build(work, args.rows, args.hidden, args.layers)
    shutil.rmtree(index_dir / "cache", ignore_errors=True)  # the first query forms the behaviour
    body = {"behavior": args.behavior, "k": 10}
    proc, url = start_server(index_dir, model_dir, args.workers, 256)
    try:
        started = time.perf_counter()
        first = httpx.post(url + "query", json=body, timeout=600).json()
        first_s = time.perf_counter() - started
        info = httpx.get(url + "info").json()
        *remembered, memo_latencies = measure(url, body, args, "remembered answer (default)", floor=False)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    proc, url = start_server(index_dir, model_dir, args.workers, 0)  # remembers no answer: every query computed
    try:
        *computed, latencies = measure(url, body, args, "computed (--answers 0)", floor=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    table = markdown_table(["request", "n", "p50 ms", "p99 ms", "max ms", "req/s", "errors"], remembered + computed)
    p50 = {name: statistics.median(x) * 1000 for name, x in (("remembered", memo_latencies), ("computed", latencies))}
    verdict = ", ".join(f"{name} {'met' if ms <= 20 else 'missed'} ({ms:.1f} ms)" for name, ms in p50.items())
    print(table)
    print(f"first query (forms the behaviour with the model): {first_s:.2f} s, timings {first['timings']}")
    print(f"target p50 <= 20 ms at {args.clients} clients: {verdict}")
    if not args.no_record:
        workers = f" --workers {args.workers}" if args.workers else ""
        body_md = (f"Index of {info['rows']} synthetic chat rows (`actindex.testing.chat_rows`), random Llama of width "
                   f"{args.hidden} with {args.layers} blocks (layers {info['layers']}, {len(info['families'])} "
                   f"families), served by `actindex serve{workers}` in its own process ("
                   f"{args.workers or os.cpu_count()} worker threads); "
                   f"{args.clients} client threads with keep-alive connections in the benchmark's process. The first "
                   f"`{args.behavior}` query (forms it with the model, {len(first['members'])} ensemble members): "
                   f"{first_s:.2f} s. Target p50 <= 20 ms at {args.clients} clients: {verdict}.\n\n{table}\n")
        append_section("Serve latency (cached behaviour, concurrent clients)", body_md,
                       packages=("torch", "faiss-cpu", "fastapi", "uvicorn", "httpx", "numpy", "h5py"))


if __name__ == "__main__":
    main()
