"""Build throughput over the same model's forward-only and training-step throughput, same batches.

    python bench/throughput.py --rows 48 --batch-size 8
    python bench/throughput.py --random-config llama-8b --dtype bfloat16 --device cuda --rows 512 --batch-size 16

``--random-config`` replaces the model by a randomly initialised Llama of a named shape (``llama-8b``:
Llama-3.1-8B's 32 blocks of width 4096; ``tiny``: 2 blocks of width 64, to check the code path on a
CPU) with the default model's tokenizer (``--tokenizer offline``: the word-level tokenizer of
``actindex.testing``, nothing to load): throughput ratios depend on shapes, not on trained weights.
``--data synthetic`` uses synthetic chat rows of 120-180 prompt and 60-100 answer words instead of a data
file (what bench/gpu.sh runs, on a machine without ../shared/data); ``--json PATH`` also writes the rates.

Prints a table and appends a dated section to bench/runs/throughput.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from record import run_log

from actindex.core.encode import encode_row
from actindex.core.families import GRADIENT, VectorSpec
from actindex.core.models import DEFAULT_MODEL, LoadedModel, load_model, resolve_device, resolve_dtype, wrap_model
from actindex.core.readers import load_rows
from actindex.core.vectors import Batch, RademacherProjector, compute_many, select_grad_modules
from actindex.index.build import vector_spec
from actindex.index.config import BuildConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rept-factual-ag" / "pool.jsonl"


#: Llama shapes for --random-config (Llama-3.1-8B's published config; a tiny one for CPU checks)
SHAPES = {
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152),
}


def random_model(shape: str, device: str | None, dtype: str | None, tokenizer: str = "default") -> LoadedModel:
    """A randomly initialised Llama of a named shape, built directly on the device in the given dtype,
    with the default model's tokenizer or the offline one (their ids fit every shape's vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from actindex.testing import make_tokenizer

    tokenizer = make_tokenizer() if tokenizer == "offline" else load_model().tokenizer
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(torch_device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return wrap_model(model.eval(), tokenizer, f"random-{shape}")


def synthetic_rows(n: int) -> list:
    """``n`` synthetic chat rows of 120-180 prompt words and 60-100 answer words, validated as a file's rows."""
    import tempfile

    from actindex.testing import chat_rows, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(Path(tmp) / "rows.jsonl", chat_rows(n, prompt_words=(120, 180), answer_words=(60, 100)))
        return load_rows(path)


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--random-config", choices=sorted(SHAPES), help="a randomly initialised Llama of this shape")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: fp32 CPU, bf16 GPU)")
    parser.add_argument("--tokenizer", choices=["default", "offline"], default="default",
                        help="with --random-config: the default model's tokenizer or the offline word-level one")
    parser.add_argument("--json", help="also write {mode: tokens/s} and the token count to this file")
    parser.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    args = parser.parse_args()

    if args.random_config:
        lm = random_model(args.random_config, args.device, args.dtype, args.tokenizer)
    else:
        lm = load_model(args.model, args.device, args.dtype)
    rows = synthetic_rows(args.rows) if args.data == "synthetic" else load_rows(args.data, args.rows)
    encoded = sorted((encode_row(lm.tokenizer, r, args.max_length) for r in rows), key=lambda e: -len(e.input_ids))
    empty = sum(e.n_response == 0 for e in encoded)
    if empty:  # the build skips them: its modes would time no work
        parser.error(f"{empty} of {len(encoded)} rows keep no response token at --max-length {args.max_length}; "
                     "raise --max-length")
    groups = [encoded[i : i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    tokens = sum(len(e.input_ids) for e in encoded)
    pad = lm.tokenizer.pad_token_id
    model = lm.model
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

    def spec_of(**options) -> VectorSpec:  # the build's own spec: families, layers, storage projection
        return vector_spec(BuildConfig(data="-", out="-", **options), lm)

    default = spec_of()
    width = default.reduction.width if default.reduction is not None else "as computed"
    specs = {
        f"build (default): {len(default.kinds)} kinds @ {default.layers}, width {width}": default,
        "build --full-width (the earlier default: 7 kinds, full width)": spec_of(full_width=True),
        "build --no-opening": spec_of(opening=False),
        f"build: + --grad ({len(modules)} modules, k=8)": replace(default, kinds=[*default.kinds, GRADIENT],
                                                                 grad_modules=modules, grad_k=8),
    }
    modes = {
        "forward only (HF, no grad)": forward,
        "training step (fwd+bwd, all params)": train_step,
        # compute_many: the build's own loop over a batch (the openings' second pass over longer rows included)
        **{name: (lambda g, spec=spec: compute_many(model, g, spec, pad, projector, batch_size=len(g)))
           for name, spec in specs.items()},
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
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": tokens, "rows": len(rows), "rates": rates}))
    if not args.no_record:
        device = torch.cuda.get_device_name() if lm.device.type == "cuda" else f"{torch.get_num_threads()} threads"
        header = (
            f"\n## Build throughput — {datetime.date.today()} — {platform.machine()}, "
            f"{device}, torch {torch.__version__}, {lm.name}, {next(lm.model.parameters()).dtype}\n\n"
            f"`python {' '.join(sys.argv)}`: {len(rows)} rows of {Path(args.data).parent.name or args.data}, "
            f"{tokens} tokens, same batches "
            "for every mode, measured one after another in one run.\n\n"
        )
        with open(run_log(), "a") as handle:
            handle.write(header + table + "\n")


if __name__ == "__main__":
    main()
