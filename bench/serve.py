"""Latency and throughput of `actindex serve` at 1, 4 and 8 concurrent clients, at 10k and at 1M rows.

    nice -n 5 python bench/serve.py --rows 10000,1000000 --queries 192 --clients 1,4,8 [--baseline-src OLD/src]

Builds (once, in ``--work``) a tiny random Llama saved to a directory (no download; the offline tokenizer of
:mod:`actindex.testing`) and an index of the first ``--rows`` size of synthetic chat rows
(:func:`actindex.testing.chat_rows`) with the default layers and families. Each larger size is made from it
without the model (:func:`synthetic`, minutes instead of the hours a model pass over a million rows takes on
two cores): every built row repeated, its vectors moved by Gaussian noise, in the families of
``--synthetic-families`` only (a served million rows of every default family would not fit a few GB of RAM), and
FAISS files as a build makes them (``IVF<2 sqrt N>,Flat`` beyond 200k rows). Each size is then served by
``actindex serve`` in its own process on a free port of 127.0.0.1, as a user would, one size at a time; the
first query of the behaviour forms it with the model and stores it in the behaviour cache. Then, for each number
of clients, that many client *processes* (each with its own keep-alive connection, so the clients' own Python
does not share one interpreter lock) send ``--queries`` requests in all, started together, of three kinds:

    /query, same request     the behaviour, k = 10: answered from the server's memory of answers
    /query, varying k        the behaviour, k = 5..24, bottom_k = 0..4 and offset 0, 1, ...: no request sent twice
                             to a server, so each is computed from the behaviour cache (no model pass), never
                             answered from the memory of answers
    /search, varying k       a raw vector, k = 5..24 in one family

(the default method, the adaptive fusion of the members the behaviour's held-out pairs choose; records in every
answer). The clients speak HTTP through the standard library's ``http.client`` with each body encoded once: a
request costs a client about a quarter of the CPU it costs through httpx, which on a two-core machine would
otherwise take a core from the server it measures. Latency is the wall time of each request at the client; p50,
p95, the throughput (requests over the wall time of the slowest client) and the errors (any non-200 answer) are
printed and appended to bench/runs/serve.md, with the ratio of each kind's throughput at 4 clients to 1
client's, each server's peak memory and the load average before the run. ``--baseline-src`` serves the same
requests from another source tree first (``PYTHONPATH``; e.g. ``git archive`` of an older commit), side by side.
Targets (issue 38): 4 clients at p50 <= 20 ms on a cached 10k-row query on an idle machine, and throughput at 4
clients above 1 client's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from record import append_section, markdown_table

from actindex.testing import chat_rows, make_tokenizer, write_jsonl

#: ``k`` and ``bottom_k`` of the varying requests: every pair once (100 requests) before the offset moves on
KS, BOTTOM_KS = tuple(range(5, 25)), tuple(range(5))
#: rows a synthetic index is written in at a time
BLOCK = 50_000
#: the families a synthetic index holds by default: the members the adaptive default fuses for the behaviour on
#: the 10k-row index (residual change and its response opening at both layers) and the family /search asks
SYNTHETIC_FAMILIES = ("mean_activation_start/2,residual_change/2,residual_change/3,residual_change_opening/2,"
                      "residual_change_opening/3")


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


def synthetic(built: Path, rows: int, out: Path, families: list[str], noise: float) -> Path:
    """An index of ``rows`` rows made without the model from the index ``built`` (``out``, made when missing): row
    ``i`` is built row ``i mod n``, its id with ``~copy`` appended, its record and metadata as they are, and its
    vectors of ``families`` (those the built index holds) that row's plus Gaussian noise,
    ``v + noise * ||v|| / sqrt(d) * z``, so that copies are distinct points near the built rows. Written through
    the index writer (one part, FAISS as a build makes it: ``IVF<2 sqrt N>,Flat`` beyond 200k rows), in blocks of
    :data:`BLOCK` rows."""
    import h5py

    from actindex.index.manifest import read_manifest
    from actindex.index.precision import StoredRows
    from actindex.index.writer import META_FIELDS, Part, write_index

    if (out / "manifest.json").exists():
        return out
    manifest = read_manifest(built)
    families = [family for family in families if family in manifest.families]
    if not families:
        raise SystemExit(f"--synthetic-families: {built} holds none of them (it holds {', '.join(manifest.families)})")
    out.mkdir(parents=True, exist_ok=True)
    part, started = out / "part.h5", time.perf_counter()
    rng = np.random.default_rng(0)
    with h5py.File(built / "vectors.h5", "r") as src, h5py.File(part, "w") as f:
        n = len(src["ids"])
        meta = {key: src[key][()] for key in META_FIELDS}
        stored = {family: StoredRows.of(src, family, manifest.families[family].dim)[:] for family in families}
        matrix = src[manifest.reduction.dataset][()] if manifest.reduction is not None else None
        for key, dtype in META_FIELDS.items():
            f.create_dataset(key, shape=(rows,), dtype=dtype)
        for family, v in stored.items():
            f.create_dataset(f"vectors/{family}", shape=(rows, v.shape[1]), dtype=np.float32)
        for a in range(0, rows, BLOCK):
            b = min(a + BLOCK, rows)
            source = np.arange(a, b) % n
            for key in META_FIELDS:
                values = meta[key][source]
                if key == "ids":
                    values = np.array([f"{i.decode() if isinstance(i, bytes) else i}~{r // n}"
                                       for i, r in zip(values, range(a, b))], dtype=object)
                f[key][a:b] = values
            for family, v in stored.items():
                block = v[source]
                scale = noise * np.linalg.norm(block, axis=1, keepdims=True) / np.sqrt(block.shape[1])
                f[f"vectors/{family}"][a:b] = block + scale * rng.standard_normal(block.shape, dtype=np.float32)
    dims = {family: stored[family].shape[1] for family in families}
    write_index(out, [Part(0, rows, part)], replace(manifest, families={}), dims, "float32", "auto", 100_000,
                matrix=matrix)
    part.unlink()
    print(f"made {out} ({rows} rows, {len(families)} families) in {time.perf_counter() - started:.0f} s")
    return out


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
            request(url, "GET", "/health")
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not answer")


def request(url: str, method: str, path: str, body: dict | None = None, timeout: float = 900) -> tuple[int, dict]:
    """One request on a connection of its own: ``(status, JSON answer)``."""
    conn = Connection(url, timeout)
    try:
        status, data = conn.send(method, path, json.dumps(body).encode() if body is not None else None)
        return status, json.loads(data)
    finally:
        conn.close()


class Connection:
    """A keep-alive HTTP/1.1 connection to the server (``http.client``)."""

    def __init__(self, url: str, timeout: float = 300):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def send(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()  # read whole: the connection is used again

    def close(self) -> None:
        self.conn.close()


def client(job: tuple[str, str, list[bytes], float]) -> tuple[list[float], int]:
    """One client process: its requests (``path``, the encoded bodies) on one keep-alive connection, from ``start``
    (wall clock) on; ``(latencies in s, errors)``."""
    url, path, bodies, start = job
    latencies, errors = [], 0
    conn = Connection(url)
    try:
        conn.send("GET", "/health")  # connected before the clock starts
        time.sleep(max(0.0, start - time.time()))
        for body in bodies:
            started = time.perf_counter()
            status, _ = conn.send("POST", path, body)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
    finally:
        conn.close()
    return latencies, errors


def burst(pool: multiprocessing.pool.Pool, url: str, path: str, bodies: list[bytes], clients: int
          ) -> tuple[list[float], int, float]:
    """``(latencies, errors, wall s)`` of ``bodies`` sent by ``clients`` processes (dealt round-robin)."""
    start = time.time() + 1.0
    jobs = [(url, path, bodies[i::clients], start) for i in range(clients)]
    results = pool.map(client, jobs)
    latencies = [x for r, _ in results for x in r]
    return latencies, sum(e for _, e in results), max(sum(r) for r, _ in results)


def kinds(info: dict, behavior: str, n: int, burst_number: int) -> list[tuple[str, str, list[bytes]]]:
    """``(name, path, encoded bodies)`` of the three kinds of request (see the module docstring) for the
    ``burst_number``-th burst of a server: its varying queries are none an earlier burst sent."""
    family = next(iter(info["families"]))
    vector = np.random.default_rng(0).standard_normal(info["families"][family]["dim"]).tolist()
    first = burst_number * n
    varying = [{"behavior": behavior, "k": KS[j % len(KS)], "bottom_k": BOTTOM_KS[j // len(KS) % len(BOTTOM_KS)],
                "offset": j // (len(KS) * len(BOTTOM_KS))} for j in range(first, first + n)]
    searches = [{"vector": vector, "family": family, "k": KS[i % len(KS)]} for i in range(n)]
    encoded = [[json.dumps(b).encode() for b in bodies]
               for bodies in ([{"behavior": behavior, "k": 10}] * n, varying, searches)]
    return [("/query, same request", "/query", encoded[0]), ("/query, varying k", "/query", encoded[1]),
            (f"/search {family}, varying k", "/search", encoded[2])]


def measure(urls: dict[str, str], behavior: str, args: argparse.Namespace) -> list[dict]:
    """Every kind of request at every number of clients against every server (``name -> url``), ``--rounds``
    times, the servers taking turns for each cell (so a load that comes and goes on a shared machine falls on
    them alike); each cell's figures are the median over the rounds."""
    _, info = request(next(iter(urls.values())), "GET", "/info")
    samples: dict[tuple[str, str, int], list[dict]] = {}
    bursts = 0
    with multiprocessing.get_context("spawn").Pool(max(args.clients)) as pool:
        for _ in range(args.rounds):
            for clients in args.clients:
                for name, path, bodies in kinds(info, behavior, args.queries, bursts):
                    for server, url in urls.items():
                        latencies, errors, wall = burst(pool, url, path, bodies, clients)
                        ms = np.array(latencies) * 1000
                        samples.setdefault((server, name, clients), []).append(
                            {"n": len(ms), "p50": float(np.percentile(ms, 50)),
                             "p95": float(np.percentile(ms, 95)), "rate": len(ms) / wall, "errors": errors})
                        last = samples[server, name, clients][-1]
                        print(f"{server}: {name}, {clients} clients: p50 {last['p50']:.1f} ms, "
                              f"{last['rate']:.0f} req/s")
                bursts += 1
    return [{"server": server, "request": name, "clients": clients, "n": sum(x["n"] for x in got),
             "errors": sum(x["errors"] for x in got),
             **{key: float(np.median([x[key] for x in got])) for key in ("p50", "p95", "rate")}}
            for (server, name, clients), got in sorted(samples.items(), key=lambda item: item[0])]


def started(index_dir: Path, model_dir: Path, args: argparse.Namespace, src: str | None
            ) -> tuple[subprocess.Popen, str, float]:
    """A server (from ``src``) with the behaviour formed by its first query: ``(process, url, first query s)``."""
    proc, url = start_server(index_dir, model_dir, args.workers, src)
    began = time.perf_counter()
    status, answer = request(url, "POST", "/query", {"behavior": args.behavior, "k": 10})
    if status != 200:
        raise RuntimeError(f"the first query failed: {answer}")
    return proc, url, time.perf_counter() - began


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (``VmHWM``), in MiB; NaN where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def serve_size(index_dir: Path, model_dir: Path, args: argparse.Namespace, servers: list[tuple[str, str | None]]
               ) -> tuple[list[dict], dict[str, float], dict[str, float]]:
    """Every server over one index: ``(rows of the table, first query s, peak RSS MiB)`` by server."""
    shutil.rmtree(index_dir / "cache", ignore_errors=True)  # the first query forms the behaviour
    running, firsts, memory = {}, {}, {}
    try:
        for server, src in servers:
            proc, url, firsts[server] = started(index_dir, model_dir, args, src)
            running[server] = (proc, url)
        rows = measure({server: url for server, (_, url) in running.items()}, args.behavior, args)
    finally:
        for server, (proc, _) in running.items():
            memory[server] = peak_rss_mib(proc.pid)
            proc.terminate()
            proc.wait(timeout=60)
    return rows, firsts, memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="10000", help="index sizes, comma-separated: the first is built with the "
                                                    "model, each larger one made from it (synthetic)")
    ap.add_argument("--synthetic-families", default=SYNTHETIC_FAMILIES,
                    help="the families a synthetic index holds, comma-separated")
    ap.add_argument("--queries", type=int, default=192, help="requests of each kind at each number of clients")
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
    sizes = sorted(int(r) for r in args.rows.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_before = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    model_dir, built = build(work, sizes[0], args.hidden, args.layers)
    families = args.synthetic_families.split(",")
    indexes = [built] + [synthetic(built, rows, work / f"synthetic-{rows}", families, noise=0.5)
                         for rows in sizes[1:]]
    servers = ([("baseline", args.baseline_src)] if args.baseline_src else []) + [("this tree", None)]
    rows, notes, ratios = [], [], []
    for size, index_dir in zip(sizes, indexes):
        got, firsts, memory = serve_size(index_dir, model_dir, args, servers)
        rows += [{**r, "rows": size} for r in got]
        notes.append(f"{size} rows: the first `{args.behavior}` query "
                     f"({', '.join(f'{server} {s:.2f} s' for server, s in firsts.items())}; the first server forms "
                     f"it with the model), the server's peak RSS "
                     f"{', '.join(f'{server} {m:.0f} MiB' for server, m in memory.items())}")
        for server, _ in servers:
            for name in dict.fromkeys(r["request"] for r in got):
                rate = {r["clients"]: r["rate"] for r in got if r["server"] == server and r["request"] == name}
                if 1 in rate and 4 in rate:
                    ratios.append(f"{server}, {size} rows, {name}: {rate[4] / rate[1]:.2f}x")
    table = markdown_table(["server", "rows", "request", "clients", "n", "p50 ms", "p95 ms", "req/s", "errors"],
                           [[r["server"], r["rows"], r["request"], r["clients"], r["n"], f"{r['p50']:.1f}",
                             f"{r['p95']:.1f}", f"{r['rate']:.0f}", r["errors"]] for r in rows])
    print(table)
    print("throughput at 4 clients / 1 client: " + "; ".join(ratios))
    if not args.no_record:
        workers = f" --workers {args.workers}" if args.workers else ""
        synthetic_note = (f" Larger sizes are made from it without the model (every row repeated, its vectors "
                          f"moved by Gaussian noise of 0.5 of their norm, the families {', '.join(families)}; "
                          "FAISS as a build makes it)." if len(sizes) > 1 else "")
        body_md = (f"Index of {sizes[0]} synthetic chat rows (`actindex.testing.chat_rows`), random Llama of width "
                   f"{args.hidden} with {args.layers} blocks.{synthetic_note} Each served by "
                   f"`actindex serve{workers}` in its own process ({args.workers or os.cpu_count()} worker threads), "
                   f"one size at a time; each client a process of its own with a keep-alive `http.client` "
                   f"connection; the default method (adaptive); median of {args.rounds} rounds, the servers taking "
                   f"turns for each cell. Load average before the run: {load_before}. "
                   + "; ".join(notes) + f". Throughput at 4 clients / 1 client: {'; '.join(ratios)}.\n\n{table}\n")
        append_section("Serve latency and throughput at 1, 4 and 8 clients, 10k and 1M rows", body_md,
                       packages=("torch", "faiss-cpu", "fastapi", "uvicorn", "numpy", "h5py"))


if __name__ == "__main__":
    main()
