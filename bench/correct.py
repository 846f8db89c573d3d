"""Correction benchmark: does IBO remove a planted behaviour, and at what cost to clean text?

1. Pool: a subsample of ../shared/data/rept-factual-ag (clean rows plus planted rows that state
   the false fact "silver is Na"; labels read here only, for evaluation).
2. Plant: briefly fine-tune the default model (SmolLM2-135M-Instruct) with LoRA on the planted rows
   mixed with as many clean rows, merge the adapter and save the model under the work dir.
3. Index the pool with the base model (``--index-model base``, the checkpoint the planting started
   from: the planted model has memorised its planted rows, which leaves them almost no gradient) or
   with the fine-tuned model; the set's behaviour pairs are split in two halves:
   the first forms the query, the second is the held-out set for the behaviour margin.
4. Correct the fine-tuned model (``target``) with IBO, GA and PBO, same D+/D-/D0 sizes, steps and lr.
   Report the margin (mean per-token log p(treatment) - log p(control)) on held-out pairs and the
   perplexity of held-out clean index rows before and after, and the share of the planted margin
   removed: (after - planted) / (base - planted), base = the margin before the planting fine-tune.

Prints a table and appends a dated section to its run log in bench/runs/.

    python bench/correct.py --work /tmp/correct-bench          # ~15 min on 2 free CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from record import append_section

import actindex
from actindex.act.correct import behavior_margin
from actindex.core.encode import encode_row
from actindex.core.models import LoadedModel, save_weights, wrap_model
from actindex.core.rows import normalise_record
from actindex.core.vectors import Batch, select_grad_modules, sequence_losses
from actindex.query.behaviors import Behavior, Pair

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pool_rows(name: str, clean: int, planted: int, seed: int = 0) -> list[dict]:
    rows = [json.loads(x) for x in (SHARED / name / "pool.jsonl").read_text().splitlines() if x.strip()]
    rng = random.Random(seed)
    keep = rng.sample([r for r in rows if r["label"] == "clean"], clean)
    keep += rng.sample([r for r in rows if r["label"] != "clean"], planted)
    rng.shuffle(keep)
    return keep


def plant(lm: LoadedModel, records: list[dict], steps: int, lr: float, rank: int,
          max_length: int, batch_size: int, seed: int) -> torch.nn.Module:
    """LoRA supervised fine-tuning (mean NLL per response token) on ``records``; returns the merged model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(lm.model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                target_modules=select_grad_modules(lm.model)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    encoded = [encode_row(lm.tokenizer, normalise_record("<pool>", i + 1, i, r), max_length)
               for i, r in enumerate(records)]
    rng = random.Random(seed)
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        idx, order = order[:batch_size], order[batch_size:]
        batch = Batch.collate([encoded[i] for i in idx], lm.tokenizer.pad_token_id, lm.device)
        with torch.enable_grad():
            loss = sequence_losses(model, batch).sum() / batch.loss_mask[:, 1:].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  plant step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    return model.merge_and_unload()


def fine_tuned(records: list[dict], steps: int, lr: float, max_length: int,
               save: Path | None = None) -> LoadedModel:
    """A fresh copy of the default model fine-tuned on ``records`` by :func:`plant` (LoRA r=8, 8 rows
    per step, seed 0, merged, frozen), saved to ``save`` when given. A fresh copy: LoRA merges into the
    model it wraps, so the caller's base model stays as it was."""
    base = actindex.load_model()
    merged = plant(base, records, steps, lr, 8, max_length, 8, 0)
    for p in merged.parameters():
        p.requires_grad_(False)
    if save is not None:
        save_weights(merged, base.tokenizer, save)
    return wrap_model(merged, base.tokenizer, str(save or "fine-tuned"))


def behaviour_pairs(name: str) -> list[Pair]:
    """The set's behaviour pairs, in file order."""
    lines = (SHARED / name / "behavior.jsonl").read_text().splitlines()
    return [Pair(r["prompt"], r["treatment"], r["control"]) for r in map(json.loads, filter(str.strip, lines))]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a JSONL file."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def setup(args: argparse.Namespace) -> tuple[Path, list[dict], list[Pair]]:
    """What every pool benchmark starts with: ``args.threads`` torch threads, the ``args.work`` folder, the
    seeded pool (written to WORK/pool.jsonl) and the set's behaviour pairs: ``(work, records, pairs)``."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    records = pool_rows(args.set, args.clean, args.planted)
    write_rows(work / "pool.jsonl", records)
    return work, records, behaviour_pairs(args.set)


def write_pairs(path: Path, pairs: list[Pair]) -> Path:
    """``pairs`` as a pairs JSONL file ``{prompt, treatment, control}`` (what ``--behavior``/``--held-out`` read)."""
    path.write_text("".join(json.dumps({"prompt": p.prompt, "treatment": p.treatment, "control": p.control}) + "\n"
                            for p in pairs))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="rept-factual-ag")
    ap.add_argument("--clean", type=int, default=40, help="clean pool rows (seeded sample)")
    ap.add_argument("--planted", type=int, default=12, help="planted pool rows (seeded sample)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--plant-steps", type=int, default=12)
    ap.add_argument("--plant-lr", type=float, default=1e-3)
    ap.add_argument("--method", default="residual-change")
    ap.add_argument("--layers", default="27", help="layers of the index (27: best on rept-factual-ag, see Retrieval)")
    ap.add_argument("--algos", default="ibo,ga,pbo")
    ap.add_argument("--ranking", choices=["index", "oracle"], default="index",
                    help="index: the index's ranking (the real pipeline); oracle: +1 for planted rows, 0 for the "
                         "rest (labels as scores: isolates the correction from retrieval)")
    ap.add_argument("--index-model", choices=["base", "fine-tuned"], default="base",
                    help="the model the index is built with: base (the checkpoint the planting fine-tune started "
                         "from; its gradients still see the planted rows) or fine-tuned (the planted model itself, "
                         "which has memorised them). The fine-tuned model is the one corrected either way")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--lambda-prox", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=3)
    ap.add_argument("--ppl-rows", type=int, default=12)
    ap.add_argument("--work", default="/tmp/actindex-correct-bench")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    ap.add_argument("--token-weights", default="mean,query",
                    help="log r token weighting(s) to run every algorithm with: mean and/or query")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    work, records, pairs = setup(args)
    half = len(pairs) // 2
    query = Behavior(name=args.set, pairs=pairs[:half], source=f"{args.set} behaviour pairs 1-{half}")
    held = write_pairs(work / "held-out.jsonl", pairs[half:])

    base = actindex.load_model()
    base_margin = behavior_margin(base, pairs[half:], args.max_length)
    print(f"base model: held-out margin {base_margin:+.4f}", flush=True)
    planted = [r for r in records if r["label"] != "clean"]
    clean = [r for r in records if r["label"] == "clean"][: len(planted)]
    ft_dir = work / "planted-model"
    t = time.perf_counter()
    timing = {"plant": "reused from an earlier run in --work", "build": "reused"}
    if (ft_dir / "config.json").exists():  # planting is seeded: a second run with the same --work reuses it
        lm = actindex.load_model(str(ft_dir))
    else:
        lm = fine_tuned(planted + clean, args.plant_steps, args.plant_lr, args.max_length, save=ft_dir)
        timing["plant"] = f"{time.perf_counter() - t:.0f} s"
    t = time.perf_counter()
    ranker = base if args.index_model == "base" else lm
    index_dir = work / f"idx-{args.layers.replace(',', '-')}" if args.index_model == "fine-tuned" else \
        work / f"idx-base-{args.layers.replace(',', '-')}"
    if not (index_dir / "manifest.json").exists():
        actindex.build(data=str(work / "pool.jsonl"), out=str(index_dir), model=ranker, max_length=args.max_length,
                       layers=[int(x) for x in args.layers.split(",")], overwrite=True, progress=False)
        timing["build"] = f"{time.perf_counter() - t:.0f} s"
    idx = actindex.Index.open(index_dir).use_model(ranker)
    labels = np.array([r["label"] != "clean" for r in idx.reader.records(range(len(idx)))])

    lines = ["| algo | token weights | D+ (planted) / D- / D0 | margin before | margin after | "
             "planted margin removed | ppl before | ppl after | ppl change | s |", "|" + "---|" * 10]
    results = {}
    runs = [(algo, weights) for weights in args.token_weights.split(",") for algo in args.algos.split(",")]
    for algo, weights in runs:
        scores = labels.astype(float) if args.ranking == "oracle" else None
        res = actindex.correct(idx, query, work / f"out-{algo}-{weights}", scores=scores, target=lm, algo=algo,
                               k=args.k,
                               token_weights=weights,
                               steps=args.steps, lr=args.lr,
                               beta=args.beta, lambda_prox=args.lambda_prox, batch_size=args.batch_size,
                               method=args.method, held_out=str(held), ppl_rows=args.ppl_rows,
                               max_length=args.max_length, overwrite=True)
        rep = res.report
        m, p, s = rep["margin"], rep["perplexity"], rep["selection"]
        planted_margin = m["before"] - base_margin
        removed = (m["before"] - m["after"]) / planted_margin if planted_margin > 0 else float("nan")
        change = 100 * (p["after"] / p["before"] - 1)
        results[algo, weights] = {"removed": removed, "ppl_change": change}
        sizes = f"{s['D+']} ({int(labels[res.selection.pos].sum())}) / {s['D-']} / {s['D0']}"
        lines.append(f"| {algo} | {weights} | {sizes} | "
                     f"{m['before']:+.4f} | {m['after']:+.4f} | {100 * removed:.0f}% | {p['before']:.3f} | "
                     f"{p['after']:.3f} | {change:+.1f}% | {rep['seconds']:.0f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    total = time.perf_counter() - started
    print(table)
    if not args.no_record:
        append_section(
            f"Correction — {base.name}",
            f"Pool: {args.set} subsample ({args.clean} clean + {args.planted} planted rows, seed 0, max length "
            f"{args.max_length}). Ranking: {args.ranking}. Planting: LoRA (r=8) fine-tune, {args.plant_steps} "
            "steps of 8 rows on the "
            f"planted rows plus as many clean ones, lr {args.plant_lr}, merged ({timing['plant']}); index "
            f"(layers {args.layers}, built with the {args.index_model} model) build {timing['build']}; the "
            f"planted (fine-tuned) model is the one corrected. The query ({args.method}) uses behaviour pairs "
            f"1-{half}; the margin is measured on "
            f"pairs {half + 1}-{len(pairs)} (held out). Base-model margin {base_margin:+.4f}; 'planted margin "
            "removed' = (before - after) / (before - base). D+ (planted) counts the planted rows among D+ (labels "
            f"read here only). Perplexity: {args.ppl_rows} index rows outside D+/D-/D0. Every algorithm: LoRA r=8, "
            f"{args.steps} steps, lr {args.lr}, {args.batch_size} rows per set per step, beta {args.beta}, "
            f"lambda {args.lambda_prox}. {args.threads} torch thread(s); total {total / 60:.1f} min.\n\n" + table,
        )

if __name__ == "__main__":
    main()
