"""The GPU suite in one go (driven by bench/gpu.sh): every GPU figure of actindex from one command, in ~9 minutes.

    bench/gpu.sh                 # on one H100/H200: writes one section to bench/runs/gpu.md
    bench/gpu.sh --dry-run       # the same steps on the CPU with tiny shapes, in a few minutes (what CI runs)

Nothing is downloaded: every model is built from a config with random weights (throughput depends on shapes,
not on trained weights) and tokenised with the offline word-level tokenizer of ``actindex.testing``; the rows are
synthetic. Steps, each printed as ``step i/6 <name>: ...`` when it ends:

1. ``environment``: torch, CUDA device, FAISS build and how many GPUs it sees;
2. ``throughput``: ``bench/throughput.py`` on a Llama-3.1-8B-shaped random model in bf16 built directly on the
   GPU (32 blocks of width 4096): forward, training step, the default build and the ``--grad`` build, tokens/s
   and their ratios, on the same batches (dry run: the ``tiny`` shape in float32 on the CPU);
3. ``torchrun``: a one-process ``torchrun`` build (nccl on the GPU, gloo on the CPU) of a tiny model, compared
   with the single-process build of the same rows: same ids in the same order, vectors equal up to float32
   rounding;
4. ``device-map``: ``build --device map`` (accelerate's ``device_map="auto"``) compared the same way;
5. ``faiss``: search latency of the IVF index ``auto`` builds (``IVF<2 sqrt N>,Flat``, nprobe 16) at 1M and 10M
   synthetic unit rows of width 576, one query at a time (p50/p99) and 1,000 at once, with recall@100 against
   exact search, on the GPU when FAISS sees one (a faiss-gpu wheel carried in ``bench/.wheels`` is installed
   into a private folder by gpu.sh); without GPU FAISS this step says so and is skipped (dry run: 10k and 50k
   rows of width 64 on the CPU);
6. ``record``: one section with every figure appended to bench/runs/gpu.md (not on a dry run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
STEPS = ("environment", "throughput", "torchrun", "device-map", "faiss", "record")
#: seconds a dry-run step may take: minutes of CPU at most, but a shared 2-core machine can stretch them many-fold
DRY_STEP_TIMEOUT = 600


def say(step: str, text: str) -> None:
    print(f"step {STEPS.index(step) + 1}/{len(STEPS)} {step}: {text}", flush=True)


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def environment(gpu: bool) -> dict:
    import faiss
    import torch

    out = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "faiss": faiss.__version__,
           "faiss_gpus": int(getattr(faiss, "get_num_gpus", lambda: 0)())}
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
    if gpu and not out["cuda"]:
        raise SystemExit("gpu.sh: torch sees no CUDA device; run `bench/gpu.sh --dry-run` on a CPU machine")
    return out


def throughput(gpu: bool, work: Path) -> dict:
    shape = ["--random-config", "llama-8b", "--dtype", "bfloat16", "--device", "cuda", "--rows", "256",
             "--batch-size", "16", "--max-length", "256"] if gpu else [
        "--random-config", "tiny", "--dtype", "float32", "--device", "cpu", "--rows", "4", "--batch-size", "4",
        "--max-length", "256"]  # the synthetic rows' prompts run to ~190 tokens: every row keeps its answer
    out = work / "throughput.json"
    run([sys.executable, str(BENCH / "throughput.py"), *shape, "--data", "synthetic", "--tokenizer", "offline",
         "--no-record", "--json", str(out)], timeout=420 if gpu else DRY_STEP_TIMEOUT)
    return json.loads(out.read_text())


def tiny_setup(work: Path) -> tuple[Path, Path]:
    """A tiny random Llama (saved with the offline tokenizer) and 64 synthetic rows."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from actindex.testing import chat_rows, make_tokenizer, write_jsonl

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3, tie_word_embeddings=True)
    model_dir = work / "tiny-model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, write_jsonl(work / "rows.jsonl", chat_rows(64, seed=3))


def dataset_names(group: Any) -> list[str]:
    """The paths of every dataset under an HDF5 group, in visiting order."""
    import h5py

    names: list[str] = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def same_index(a: Path, b: Path) -> dict:
    """Whether two indexes hold the same ids in the same order, and the largest relative vector difference."""
    import h5py

    with h5py.File(a / "vectors.h5", "r") as fa, h5py.File(b / "vectors.h5", "r") as fb:
        same_ids = bool((fa["ids"][()] == fb["ids"][()]).all())
        names = dataset_names(fa["vectors"])  # family datasets sit in groups (``vectors/residual_change/1``)
        same_ids = same_ids and bool(names) and names == dataset_names(fb["vectors"])
        worst = 0.0
        for name in names:
            va, vb = fa[f"vectors/{name}"][()].astype(np.float64), fb[f"vectors/{name}"][()].astype(np.float64)
            worst = max(worst, float(np.abs(va - vb).max() / max(np.abs(va).max(), 1e-30)))
    return {"same_ids": same_ids, "max_relative_difference": worst, "equal": same_ids and worst < 1e-3}


def builds(gpu: bool, work: Path, model_dir: Path, data: Path, variant: str) -> dict:
    """A single-process build (once) and ``variant`` (``torchrun`` or ``device-map``), compared."""
    device = "cuda" if gpu else "cpu"
    common = ["build", "--model", str(model_dir), "--data", str(data), "--layers", "1,2", "--dtype", "float32",
              "--part-size", "16", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    single, limit = work / "single", 240 if gpu else DRY_STEP_TIMEOUT
    if not (single / "manifest.json").exists():
        run([sys.executable, "-m", "actindex", *common, "--device", device, "--out", str(single)], limit, env)
    out = work / variant
    started = time.perf_counter()
    if variant == "torchrun":
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "actindex",
             *common, "--device", device, "--out", str(out)], limit, env)
    else:
        run([sys.executable, "-m", "actindex", *common, "--device", "map", "--out", str(out)], limit, env)
    backend = ("nccl" if gpu else "gloo") if variant == "torchrun" else "accelerate device_map=auto"
    return {"backend": backend, "seconds": round(time.perf_counter() - started, 1), **same_index(single, out)}


def faiss_latency(gpu: bool, rows: int, dim: int, queries: int = 200, batch: int = 1000) -> dict:
    """The ``auto`` IVF index over ``rows`` clustered unit rows (generated with torch, on the GPU when there is
    one), nprobe 16: single-query p50/p99, batched queries/s, recall@100 against exact (Flat) search."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401 - lets FAISS take torch tensors, on the GPU too
    import torch

    from actindex.index.search import resolve_factory, set_search_params

    device = "cuda" if gpu else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    centres = torch.randn(256, dim, generator=g, device=device) / dim**0.5

    def draw(n: int) -> torch.Tensor:
        x = centres[torch.randint(0, 256, (n,), generator=g, device=device)]
        x += 0.5 * torch.randn(n, dim, generator=g, device=device) / dim**0.5
        return x / x.norm(dim=1, keepdim=True)

    factory = resolve_factory("auto", rows) if rows > 200_000 else f"IVF{2 ** round(np.log2(2 * rows**0.5))},Flat"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    exact = faiss.IndexFlatIP(dim)
    if gpu:  # pragma: no cover - needs faiss-gpu
        res = faiss.StandardGpuResources()
        index, exact = faiss.index_cpu_to_gpu(res, 0, index), faiss.index_cpu_to_gpu(res, 0, exact)
    started = time.perf_counter()
    index.train(draw(min(rows, 200_000)))
    for a in range(0, rows, 1_000_000):
        block = draw(min(1_000_000, rows - a))
        index.add(block)
        exact.add(block)
    build_s = time.perf_counter() - started
    if gpu:  # pragma: no cover
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", 16)
    else:
        set_search_params(index, nprobe=16)
    q = draw(queries)
    times = []
    for i in range(queries):
        t = time.perf_counter()
        index.search(q[i : i + 1], 100)
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    _, found = index.search(q, 100)
    _, truth = exact.search(q, 100)
    found, truth = found.cpu().numpy(), truth.cpu().numpy()
    recall = float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found.tolist(), truth.tolist())]))
    many = draw(batch)
    t = time.perf_counter()
    index.search(many, 100)
    if gpu:
        torch.cuda.synchronize()
    batched = batch / (time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"rows": rows, "dim": dim, "factory": factory, "nprobe": 16, "build_s": round(build_s, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "batched_queries_per_s": round(batched), "recall_at_100": round(recall, 3),
            "on": "GPU" if gpu else "CPU"}


def record(results: dict) -> None:
    from record import append_section, markdown_table

    env, tp = results["environment"], results["throughput"]
    rates = tp["rates"]
    fwd = next(v for k, v in rates.items() if k.startswith("forward"))
    step = next(v for k, v in rates.items() if k.startswith("training"))
    body = (f"{env.get('device', 'no GPU')}, torch {env['torch']}, faiss {env['faiss']} ({env['faiss_gpus']} GPU(s) "
            f"seen). Llama-3.1-8B-shaped random model, bf16, {tp['rows']} synthetic rows, {tp['tokens']:,} tokens.\n\n")
    body += markdown_table(["mode", "tokens/s", "/ forward", "/ training step"],
                           [[k, f"{v:,.0f}", f"{v / fwd:.2f}", f"{v / step:.2f}"] for k, v in rates.items()])
    for variant in ("torchrun", "device-map"):
        r = results[variant]
        body += (f"\n\n{variant} ({r['backend']}): same ids {r['same_ids']}, largest relative vector difference "
                 f"{r['max_relative_difference']:.1e}, {r['seconds']} s.")
    faiss_rows = results.get("faiss")
    if isinstance(faiss_rows, list):
        body += "\n\n" + markdown_table(
            ["rows", "factory", "nprobe", "build s", "p50 ms", "p99 ms", "queries/s (1,000 at once)", "recall@100"],
            [[f"{r['rows']:,}", r["factory"], r["nprobe"], r["build_s"], r["p50_ms"], r["p99_ms"],
              f"{r['batched_queries_per_s']:,}", r["recall_at_100"]] for r in faiss_rows])
    else:
        body += f"\n\nGPU FAISS: {faiss_rows}"
    append_section("GPU suite", body, name="gpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/runs/gpu.md")
    ap.add_argument("--faiss-rows", default=None, help="comma-separated row counts of the FAISS step")
    args = ap.parse_args()
    gpu = not args.dry_run
    started = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="actindex-gpu-") as tmp:
        work = Path(tmp)
        results["environment"] = environment(gpu)
        say("environment", json.dumps(results["environment"]))
        results["throughput"] = throughput(gpu, work)
        say("throughput", ", ".join(f"{k}: {v:,.0f} tok/s" for k, v in results["throughput"]["rates"].items()))
        model_dir, data = tiny_setup(work)
        for variant in ("torchrun", "device-map"):
            results[variant] = builds(gpu, work, model_dir, data, variant)
            say(variant, json.dumps(results[variant]))
        faiss_gpu = results["environment"]["faiss_gpus"] > 0
        if gpu and not faiss_gpu:
            results["faiss"] = ("skipped: this FAISS build sees no GPU (faiss-cpu); carry a faiss-gpu-cu12 wheel in "
                                "bench/.wheels (see bench/README.md) to measure it")
            say("faiss", results["faiss"])
        else:
            sizes = args.faiss_rows or ("1000000,10000000" if gpu else "10000,50000")
            results["faiss"] = [faiss_latency(gpu, int(n), 576 if gpu else 64) for n in sizes.split(",")]
            say("faiss", "; ".join(f"{r['rows']:,} rows {r['factory']}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                                   f"recall@100 {r['recall_at_100']}" for r in results["faiss"]))
    if gpu and not args.no_record:
        record(results)
        say("record", "appended to bench/runs/gpu.md")
    else:
        say("record", "dry run: nothing recorded" if args.dry_run else "--no-record: nothing recorded")
    print(f"gpu suite done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
