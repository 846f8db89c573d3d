"""Build throughput over the same model's forward-only and training-step throughput, same batches.

    python bench/throughput.py --rows 48 --batch-size 8

Prints a table and appends a dated section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from actindex.data import encode_row, load_rows
from actindex.models import DEFAULT_MODEL, default_layers, load_model
from actindex.vectors import Batch, RademacherProjector, VectorSpec, compute_vectors, select_grad_modules

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rept-factual-ag" / "pool.jsonl"


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-record", action="store_true", help="Do not append to bench/RESULTS.md.")
    args = parser.parse_args()

    lm = load_model(args.model)
    rows = load_rows(args.data, args.rows)
    encoded = sorted((encode_row(lm.tokenizer, r, args.max_length) for r in rows), key=lambda e: -len(e.input_ids))
    groups = [encoded[i : i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    tokens = sum(len(e.input_ids) for e in encoded)
    pad = lm.tokenizer.pad_token_id
    model = lm.model
    layer = default_layers(lm.num_layers)
    modules = select_grad_modules(model)
    projector = RademacherProjector(0, 8)

    def forward(group):
        b = Batch.collate(group, pad, lm.device)
        with torch.no_grad():
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def train_step(group):
        b = Batch.collate(group, pad, lm.device)
        labels = b.input_ids.masked_fill(~b.loss_mask, -100)
        for p in model.parameters():
            p.requires_grad_(True)
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels).loss.backward()
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None

    rc_spec = VectorSpec(layers=layer)
    grad_spec = VectorSpec(layers=layer, grad_modules=modules, grad_k=8)
    modes = {
        "forward only (HF, no grad)": forward,
        "training step (fwd+bwd, all params)": train_step,
        f"build: residual-change + mean act. @ {layer}": lambda g: compute_vectors(model, g, rc_spec, pad),
        f"build: + --grad ({len(modules)} modules, k=8)": (
            lambda g: compute_vectors(model, g, grad_spec, pad, projector)
        ),
    }
    timed(forward, groups[:1])  # warm-up
    rates = {name: tokens / timed(fn, groups) for name, fn in modes.items()}
    fwd, step = rates["forward only (HF, no grad)"], rates["training step (fwd+bwd, all params)"]
    lines = [
        "| mode | tokens/s | / forward | / training step |",
        "|---|---|---|---|",
        *[f"| {n} | {r:.0f} | {r / fwd:.2f} | {r / step:.2f} |" for n, r in rates.items()],
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        header = (
            f"\n## Build throughput — {datetime.date.today()} — {platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, {lm.name}\n\n"
            f"`python bench/throughput.py --rows {args.rows} --batch-size {args.batch_size} "
            f"--max-length {args.max_length}`: {len(rows)} rows of rept-factual-ag, {tokens} tokens, same batches "
            "for every mode, measured one after another in one run.\n\n"
        )
        with open(Path(__file__).with_name("RESULTS.md"), "a") as handle:
            handle.write(header + table + "\n")


if __name__ == "__main__":
    main()
