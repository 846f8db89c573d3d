"""Peak memory of a build against the number of rows: a streamed build should stay flat.

    nice -n 5 python bench/memory.py --rows 500,4000,16000

A randomly initialised Llama with SmolLM2-135M's hidden width (576, so vectors have the real
size) but 2 small blocks, and the offline word-level tokenizer of ``actindex.testing``, is saved to
a temporary directory; synthetic chat rows (``actindex.testing.chat_rows``) are written for each
size. Each build runs ``actindex.build`` in a fresh child process; the child's peak resident set size is
``ru_maxrss`` of its ``wait4`` rusage (children run with ``OMP_NUM_THREADS=1`` unless set: memory,
not speed, is measured). The child also reports its resident size just before the
build (imports and model loaded), so ``build peak - before`` is what the build itself adds: rows
are read part by part, vectors are written part by part, and a flat-coded FAISS index (``Flat``,
``--faiss-factory SQ8``, ``PQ``) is written to disk block by block (``actindex.index.faiss_stream``), so
what is held is one block plus, for a factory that needs training, its training sample (at most
``--faiss-train-rows`` rows). An IVF or HNSW factory is still built in memory, one family at a time.

A build that streams its output keeps ``build peak - before`` constant in the number of rows; a
slope shows memory proportional to rows (the table gives it in bytes per row).
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

from record import append_section, markdown_table

from actindex.testing import chat_rows, make_tokenizer, write_jsonl


def rss_now_kib() -> int:
    """Current resident set size (``VmRSS`` of /proc/self/status), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_model(directory: Path, hidden: int, layers: int, vocab_words: bool = True,
               head_dim: int | None = None) -> None:
    """Save a random Llama (``hidden`` wide, ``layers`` blocks, attention heads of ``head_dim``: default
    ``hidden / 4``) with the tests' tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from actindex.core.models import save_weights

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True,
        **({} if head_dim is None else {"head_dim": head_dim}),
    )
    save_weights(LlamaForCausalLM(config).eval(), tok, directory)


def child(args: argparse.Namespace) -> None:
    """Load model and rows, note RSS, build, print a JSON line."""
    import actindex
    from actindex.core.models import load_model

    lm = load_model(args.model, device="cpu")
    before = rss_now_kib()
    t = time.perf_counter()
    manifest = actindex.build(data=args.data, out=args.out, model=lm, grad=args.grad, progress=False,
                              overwrite=True, part_size=args.part_size, faiss_factory=args.faiss_factory,
                              faiss_train_rows=args.faiss_train_rows)
    seconds = time.perf_counter() - t
    summary = manifest.summary
    print(json.dumps({"before_kib": before, "seconds": seconds, "tokens": summary["tokens"],
                      "disk_bytes_per_row": summary["disk_bytes_per_row"]}))


def run_child(argv: list[str]) -> tuple[dict, int]:
    """Run this script as a child; its JSON line and its peak RSS (KiB) from ``wait4``."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))  # no spin-waits on a busy machine
    proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child build failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="500,4000,16000")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--grad", action="store_true", help="also cache projected gradients")
    ap.add_argument("--part-size", type=int, default=256)
    ap.add_argument("--faiss-factory", default="Flat", help="FAISS factory of every family (e.g. SQ8)")
    ap.add_argument("--faiss-train-rows", type=int, default=100_000,
                    help="rows sampled to train a factory that needs training (held in memory while it trains)")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    table, points = [], []
    with tempfile.TemporaryDirectory(prefix="actindex-mem-") as tmp:
        work = Path(tmp)
        make_model(work / "model", args.hidden, args.layers)
        for n in [int(x) for x in args.rows.split(",")]:
            data = write_jsonl(work / f"rows-{n}.jsonl", chat_rows(n, seed=n))
            argv = ["--model", str(work / "model"), "--data", str(data), "--out", str(work / f"idx-{n}"),
                    "--part-size", str(args.part_size), "--faiss-factory", args.faiss_factory,
                    "--faiss-train-rows", str(args.faiss_train_rows)]
            argv += ["--grad"] if args.grad else []
            info, peak = run_child(argv)
            added = peak - info["before_kib"]
            points.append((n, peak, added))
            table.append([f"{n:,}", f"{info['tokens']:,}", f"{info['seconds']:.1f}", f"{info['before_kib'] / 1024:.0f}",
                          f"{peak / 1024:.0f}", f"{added / 1024:.1f}", f"{info['disk_bytes_per_row']:,}"])
            print(" | ".join(table[-1]), flush=True)
    (n0, p0, a0), (n1, p1, a1) = points[0], points[-1]
    slope = (a1 - a0) * 1024 / max(n1 - n0, 1)
    columns = ["rows", "tokens", "build s", "RSS before build MiB", "peak RSS MiB", "build adds MiB",
               "disk bytes/row"]
    body = markdown_table(columns, table)
    verdict = (f"From {n0:,} to {n1:,} rows the memory the build adds changes by {(a1 - a0) / 1024:+.1f} MiB, "
               f"{slope:.0f} bytes per extra row (peak RSS {p0 / 1024:.0f} -> {p1 / 1024:.0f} MiB).")
    print(body)
    print(verdict)
    if not args.no_record:
        intro = (f"Random Llama, hidden {args.hidden}, {args.layers} blocks, tests' word-level tokenizer; "
                 f"synthetic chat rows; one child process per build; part size {args.part_size}; "
                 f"{'residual change + mean activation + projected gradients' if args.grad else 'default families'} "
                 f"at the default layer; FAISS factory {args.faiss_factory} (trained on at most "
                 f"{args.faiss_train_rows:,} rows).\n\n")
        append_section("Build memory against rows", intro + body + "\n\n" + verdict)


if __name__ == "__main__":
    main()
