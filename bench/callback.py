"""The training-loop callback: indexes of the starting, a middle and the final checkpoint of a real fine-tune.

1. Pool: a seeded subsample of ../shared/data/rept-factual-ag (clean rows plus planted rows stating the false
   fact "silver is Na"; labels read here only, for evaluation), as TRL conversational prompt + completion rows;
   32 other clean rows are the evaluation set (the memorisation check's held-out rows).
2. The default model (SmolLM2-135M-Instruct) fine-tuned with LoRA (r=8 on every attention and MLP projection)
   by TRL's ``SFTTrainer`` (loss on the completions), with ``ActindexCallback`` indexing the pool at step 0
   (the starting checkpoint), mid-training and the final step (default layers and families).
3. Each checkpoint's index is queried with the set's behaviour (behavior.jsonl, every pair; its default
   ``ensemble``, every row ranked), and the three are queried together with each checkpoint-fusion rule
   (``tracin``, ``tracin-cosine``, ``rrf``). AUROC / AP / precision@n of each ranking (rows in the order shown)
   against the planted labels; the memorisation check's figures per checkpoint; the callback's overhead:
   the seconds it spent (rows, weights, three indexes) over the training time without them.

Prints a table and appends a dated section to its run log in bench/runs/.

    python bench/callback.py --work /tmp/callback-bench          # ~15 min on 2 free CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from correct import SHARED, pool_rows, write_rows
from record import append_section, markdown_table

import actindex
from actindex.query.checkpoints import CheckpointSet
from actindex.report.metrics import label_metrics

RULES = ("tracin", "tracin-cosine", "rrf")


def prompt_completion(record: dict) -> dict:
    """A pool row as TRL's conversational prompt + completion (the loss on the completion)."""
    *prompt, answer = record["messages"]
    return {"id": record["id"], "prompt": prompt, "completion": [answer], "label": record["label"]}


def heldout_rows(name: str, pool: list[dict], n: int, seed: int = 1) -> list[dict]:
    """``n`` clean rows of the set that are not in the pool (seeded)."""
    taken = {r["id"] for r in pool}
    rows = [json.loads(x) for x in (SHARED / name / "pool.jsonl").read_text().splitlines() if x.strip()]
    return random.Random(seed).sample([r for r in rows if r["label"] == "clean" and r["id"] not in taken], n)


def ranked_metrics(result: actindex.QueryResult, labels: np.ndarray) -> dict:
    """AUROC / AP / precision@n of the rows in the order the result shows them (rows it does not rank, with no
    response token left at the max length, last)."""
    scores = np.full(len(labels), -float(len(labels)))
    for position, hit in enumerate(result.top):
        scores[hit.row] = -position
    return label_metrics(scores, labels)


def loss_by_label(idx: actindex.Index, labels: np.ndarray) -> tuple[float, float]:
    """Median response loss per token of the planted and of the clean rows."""
    t = idx.reader.table
    per_token = np.where(t.valid & (t.n_response > 0), t.loss / np.maximum(t.n_response, 1), np.nan)
    return float(np.nanmedian(per_token[labels])), float(np.nanmedian(per_token[~labels]))


def evaluate(out: Path, behavior: Path, planted: dict[str, bool]) -> tuple[list[list[str]], list[list[str]]]:
    """The table rows of each checkpoint's ranking and of the fused rankings, and of the memorisation check;
    ``planted`` maps a row id to its label (the trainer drops rows left with no completion token, so the
    indexes hold its rows, not necessarily every pool row)."""
    listed = json.loads((out / "checkpoints.json").read_text())
    cset = CheckpointSet.open(out, progress=False)
    labels = np.array([planted[i] for i in cset.indexes[0].ids()])
    rows, memo = [], []
    for idx, entry in zip(cset, listed["checkpoints"]):
        res = idx.query(str(behavior), k=0)
        m = ranked_metrics(res, labels)
        check = idx.memorisation
        planted_loss, clean_loss = loss_by_label(idx, labels)
        rows.append([f"step {entry['step']}", f"{m['auroc']:.3f}", f"{m['ap']:.3f}", f"{m['precision_at_n']:.3f}"])
        memo.append([f"step {entry['step']}", f"{planted_loss:.3f}", f"{clean_loss:.3f}",
                     f"{check.heldout.loss_per_token:.3f}", f"{check.ratio:.2f}", "yes" if check.memorised else "no",
                     f"{entry['seconds']:.0f}"])
        print(rows[-1], memo[-1], flush=True)
    for rule in RULES:
        res = cset.query(str(behavior), k=0, checkpoint_fusion=rule)
        m = ranked_metrics(res, labels)
        rows.append([f"fused ({rule}, {len(cset)} checkpoints)", f"{m['auroc']:.3f}", f"{m['ap']:.3f}",
                     f"{m['precision_at_n']:.3f}"])
        print(rows[-1], flush=True)
    return rows, memo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="rept-factual-ag")
    ap.add_argument("--clean", type=int, default=108, help="clean pool rows (seeded sample)")
    ap.add_argument("--planted", type=int, default=12, help="planted pool rows (seeded sample)")
    ap.add_argument("--heldout", type=int, default=32, help="held-out clean rows (the evaluation set)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (constant)")
    ap.add_argument("--work", default="/tmp/actindex-callback-bench")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a 2-core machine shared with other jobs, 2 threads ran slower)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    records = pool_rows(args.set, args.clean, args.planted)
    held = heldout_rows(args.set, records, args.heldout)
    behavior = work / "behavior.jsonl"
    behavior.write_text((SHARED / args.set / "behavior.jsonl").read_text())
    write_rows(work / "pool.jsonl", records)

    base = actindex.load_model()
    steps = args.epochs * math.ceil(len(records) / args.batch_size)
    config = SFTConfig(output_dir=str(work / "trainer"), max_steps=steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.lr, lr_scheduler_type="constant", max_length=args.max_length,
                       use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
                       logging_steps=max(1, steps // 6), disable_tqdm=True, seed=0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = SFTTrainer(model=base.model, args=config, processing_class=base.tokenizer, peft_config=lora,
                         train_dataset=Dataset.from_list([prompt_completion(r) for r in records]),
                         eval_dataset=Dataset.from_list([prompt_completion(r) for r in held]))
    out = work / "ckpt"
    callback = actindex.ActindexCallback(out, steps=[0, steps // 2], final=True, max_length=args.max_length,
                                         batch_size=args.batch_size, progress=True).attach(trainer)
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    training_only = train_s - callback.seconds
    print(f"training {train_s:.0f} s, of which the callback {callback.seconds:.0f} s", flush=True)
    del trainer, base

    rows, memo = evaluate(out, behavior, {r["id"]: r["label"] != "clean" for r in records})
    overhead = 100 * callback.seconds / training_only
    table = markdown_table(["index", "AUROC", "AP", "precision@n"], rows)
    memo_table = markdown_table(["checkpoint", "planted rows' loss/token", "clean rows'", "held-out rows'",
                                 "ratio (rows / held-out)", "warned", "callback s"], memo)
    total = time.perf_counter() - started
    print(table, memo_table, f"overhead {overhead:.0f}%", sep="\n\n")
    if not args.no_record:
        append_section(
            "Training-loop callback — smollm2-135m-instruct",
            f"Pool: {args.set} subsample ({args.clean} clean + {args.planted} planted rows, seed 0) as conversational "
            f"prompt + completion rows; evaluation set (the held-out rows of the memorisation check): {args.heldout} "
            f"other clean rows. TRL {__import__('trl').__version__} `SFTTrainer`, LoRA r=8 on every projection, "
            f"{steps} steps of {args.batch_size} rows ({args.epochs} epochs), constant lr {args.lr}, max length "
            f"{args.max_length}, loss on the completions, fp32, {args.threads} torch thread(s). `ActindexCallback` at "
            f"steps 0, {steps // 2} and {steps} (default layers and families, batch {args.batch_size}). Each ranking: "
            f"the behaviour's {sum(1 for _ in open(behavior))} pairs, default `ensemble`, every row, in the order "
            "shown; fused = the three indexes queried together (`--checkpoint-fusion`).\n\n"
            f"Training {train_s / 60:.1f} min wall, of which the callback {callback.seconds / 60:.1f} min: overhead "
            f"**{overhead:.0f}%** of the training time without it ({training_only / 60:.1f} min; three indexes of "
            f"{len(records)} rows, the rows file and the adapters). Total {total / 60:.1f} min.\n\n"
            + table + "\n\nThe memorisation check per checkpoint (median response loss per token, nats; warned when "
            "the rows' median is below 0.35 x the held-out rows'):\n\n" + memo_table,
        )


if __name__ == "__main__":
    main()
