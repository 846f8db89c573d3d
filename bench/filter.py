"""Filtering, the counterfactual check: does removing the index's top-k rows remove the behaviour?

1. Pool: a subsample of ../shared/data/rept-factual-ag (clean rows plus planted rows that state the
   false fact "silver is Na"; labels read here only, for evaluation), as bench/correct.py draws it.
2. The user's model: the default model (SmolLM2-135M-Instruct) fine-tuned with LoRA on the whole
   pool (merged). The behaviour shows in it. The pool is indexed with it and, separately, with the
   base model that fine-tune started from (``--index-models``).
3. ``actindex.filter_dataset`` writes the pool without its top-k rows for the behaviour (the set's
   behaviour pairs, first half, as a pairs file), once per index. Alongside: ``--random`` pools without k rows drawn
   at random (seeds 1..R).
4. The default model is fine-tuned again from scratch, same seed, steps and lr, on each filtered
   pool. The behaviour margin (mean per-token log p(treatment) - log p(control)) is measured on the
   held-out pairs (second half) for: the base model, the model trained on the whole pool, on the
   pool without the top-k and on the pools without k random rows. "Planted margin removed" is
   (full - filtered) / (full - base).

Prints a table and appends a dated section to its run log in bench/runs/.

    python bench/filter.py --work /tmp/filter-bench        # ~10 min on 2 free CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from correct import fine_tuned, setup, write_pairs
from record import append_section

import actindex
from actindex.act.correct import behavior_margin
from actindex.configs import DEFAULT_MODEL
from actindex.query.behaviors import Pair


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def trained_margin(records: list[dict], pairs: list[Pair], args: argparse.Namespace, save: Path | None = None) -> float:
    """The held-out margin of the default model fine-tuned on ``records`` (saved to ``save`` if given)."""
    return behavior_margin(fine_tuned(records, args.steps, args.lr, args.max_length, save), pairs, args.max_length)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="rept-factual-ag")
    ap.add_argument("--clean", type=int, default=40, help="clean pool rows (seeded sample)")
    ap.add_argument("--planted", type=int, default=12, help="planted pool rows (seeded sample)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24, help="LoRA fine-tuning steps of 8 rows (every training run)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--method", default="ensemble", help="the filter's ranking method (default: the filter's own)")
    ap.add_argument("--layers", default="18,27", help="layers of each index")
    ap.add_argument("--index-models", default="fine-tuned,base",
                    help="which model each index is built with: fine-tuned (the model trained on the whole pool, "
                         "where the behaviour shows) and/or base (the model that fine-tune started from)")
    ap.add_argument("--k", type=int, default=12, help="rows removed (default: as many as are planted)")
    ap.add_argument("--random", type=int, default=3, help="random removals to compare with (seeds 1..R)")
    ap.add_argument("--work", default="/tmp/actindex-filter-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    work, records, pairs = setup(args)
    pool = work / "pool.jsonl"
    half = len(pairs) // 2
    behavior = write_pairs(work / "behavior.jsonl", pairs[:half])
    held = pairs[half:]
    planted = lambda rows: sum(r["label"] != "clean" for r in rows)  # noqa: E731

    base = actindex.load_model()
    margins = {"base model": (behavior_margin(base, held, args.max_length), None, None)}
    del base
    print(f"base: held-out margin {margins['base model'][0]:+.4f}", flush=True)

    t = time.perf_counter()
    user_dir = work / "user-model"
    full = trained_margin(records, held, args, save=user_dir)
    margins["whole pool"] = (full, len(records), planted(records))
    print(f"whole pool: margin {full:+.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    index_models = {"fine-tuned": str(user_dir), "base": DEFAULT_MODEL}
    filter_s = {}
    for which in args.index_models.split(","):
        t = time.perf_counter()
        lm = actindex.load_model(index_models[which])
        index_dir = work / f"idx-{which}"
        actindex.build(data=str(pool), out=str(index_dir), model=lm, max_length=args.max_length,
                       layers=[int(x) for x in args.layers.split(",")], overwrite=True, progress=False)
        idx = actindex.Index.open(index_dir).use_model(lm)
        out = work / f"filtered-{which}.jsonl"
        res = actindex.filter_dataset(idx, behavior=str(behavior), remove_top=args.k, out=out,
                                      method=args.method, overwrite=True)
        filter_s[which] = time.perf_counter() - t
        kept = read(out)
        print(f"filter ({which} model index): removed {len(res.removed)} rows "
              f"({planted([r['record'] for r in res.removed])} planted), index + filter {filter_s[which]:.0f} s",
              flush=True)
        margins[f"without the top {args.k} (actindex filter, {which}-model index)"] = (
            trained_margin(kept, held, args), len(kept), planted(kept))
    randoms = []
    for seed in range(1, args.random + 1):
        drop = set(random.Random(seed).sample(range(len(records)), args.k))
        rows = [r for i, r in enumerate(records) if i not in drop]
        m = trained_margin(rows, held, args)
        randoms.append(m)
        margins[f"without {args.k} random rows (seed {seed})"] = (m, len(rows), planted(rows))
        print(f"random seed {seed}: margin {m:+.4f}", flush=True)

    base_m = margins["base model"][0]
    lines = ["| trained on | rows (planted) | held-out margin | planted margin removed |", "|---|---|---|---|"]
    for name, (m, n, p) in margins.items():
        rows = "—" if n is None else f"{n} ({p})"
        removed = "—" if n is None else f"{100 * (full - m) / (full - base_m):.0f}%"
        lines.append(f"| {name} | {rows} | {m:+.4f} | {removed} |")
    if randoms:
        m = float(np.mean(randoms))
        lines.append(f"| without {args.k} random rows (mean of {len(randoms)}) | — | {m:+.4f} | "
                     f"{100 * (full - m) / (full - base_m):.0f}% |")
    table = "\n".join(lines)
    total = time.perf_counter() - started
    print(table)
    if not args.no_record:
        append_section(
            f"Filtering counterfactual — {DEFAULT_MODEL}",
            f"Pool: {args.set} subsample ({args.clean} clean + {args.planted} planted rows, seed 0, max length "
            f"{args.max_length}). Every model: the default model fine-tuned from scratch with LoRA (r=8, merged), "
            f"{args.steps} steps of 8 rows, lr {args.lr}, seed 0. The ranking: `actindex.filter_dataset` with "
            f"`--method {args.method}` on an index (layers {args.layers}) built with the whole-pool model and/or the "
            f"base model (index + filter: {', '.join(f'{k} {v:.0f} s' for k, v in filter_s.items())}), query = "
            f"behaviour pairs 1-{half}; margin on pairs {half + 1}-{len(pairs)} (held out). 'Planted margin removed' "
            f"= (whole pool - filtered) / (whole pool - base). {args.threads} torch thread(s); total "
            f"{total / 60:.1f} min.\n\n" + table,
        )


if __name__ == "__main__":
    main()
