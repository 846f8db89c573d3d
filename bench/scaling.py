"""CPU data-parallel build: one process vs ``torchrun --nproc-per-node N``, same rows, same result.

    python bench/scaling.py --rows 64 --procs 2

Each build runs as its own command (`actindex build` and `python -m torch.distributed.run ... -m
actindex build`), timed end to end: interpreter start, model load, the pass, the merge. The
single process keeps torch's default thread count; each torchrun rank gets
``OMP_NUM_THREADS = cores // procs`` so both use the same cores. The two indexes are compared
row by row. Prints a table and appends a dated "Scaling (CPU)" section to bench/runs/scaling.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from record import run_log

from actindex.api import Index
from actindex.index.manifest import VECTORS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rept-factual-ag" / "pool.jsonl"


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    common = ["build", "--model", args.model, "--data", args.data, "--limit", str(args.rows),
              "--max-length", str(args.max_length), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    env_n = dict(env, OMP_NUM_THREADS=str(max(1, cores // args.procs)))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        single, multi, again = Path(tmp) / "single", Path(tmp) / "multi", Path(tmp) / "again"
        # 1 process, N processes, 1 process again: the two single runs bracket the torchrun run, so a
        # change in the load of a shared machine shows up as a gap between them
        t1 = run([sys.executable, "-m", "actindex", *common, "--out", str(single)], env)
        tn = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.procs),
                  "-m", "actindex", *common, "--out", str(multi)], env_n)
        t1b = run([sys.executable, "-m", "actindex", *common, "--out", str(again)], env)
        a, b = Index.open(single), Index.open(multi)
        with h5py.File(single / VECTORS, "r") as f:
            tokens = int(f["n_tokens"][()].sum())
        worst = max(
            float(np.abs(a.reader.vectors(f) - b.reader.vectors(f)).max()
                  / max(np.abs(a.reader.vectors(f)).max(), 1e-30))
            for f in a.families
        )
        same_ids = a.reader.ids() == b.reader.ids()
    load_after = os.getloadavg()[0]
    base = (t1 + t1b) / 2
    rows = [("1 process", t1), (f"torchrun, {args.procs} processes", tn), ("1 process, again", t1b)]
    lines = [
        "| build | wall s | rows/s | tokens/s | speed-up over mean 1-process |",
        "|---|---|---|---|---|",
        *[f"| {name} | {t:.1f} | {args.rows / t:.2f} | {tokens / t:.0f} | {base / t:.2f}x |" for name, t in rows],
    ]
    note = (f"Same rows and order: {same_ids}; largest vector difference {worst:.1e} of the family's largest "
            f"value (other batch compositions, float32). Load average {load_before:.1f} before, "
            f"{load_after:.1f} after.")
    print("\n".join(lines))
    print(note)
    if args.no_record:
        return
    header = (
        f"\n## Scaling (CPU) — {datetime.date.today().isoformat()}\n\n"
        f"`python bench/scaling.py --rows {args.rows} --procs {args.procs}`: {args.model}, {args.rows} rows of "
        f"{Path(args.data).parent.name} ({tokens} tokens, --max-length {args.max_length}), default layer, "
        f"{platform.processor() or platform.machine()}, {cores} cores shared with other jobs. Wall time end to end "
        "(start, model load, pass, merge).\n\n"
    )
    with open(run_log(), "a", encoding="utf-8") as handle:
        handle.write(header + "\n".join(lines) + "\n\n" + note + "\n")


if __name__ == "__main__":
    main()
