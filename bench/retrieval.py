"""Retrieval quality of every query method on the labelled sets in ../shared/data.

For each set: build an index of the (subsampled) pool with the default model, query the set's
behaviour pairs with every method and layer, and score how high the planted rows rank (AUROC,
average precision, precision@n with n = planted rows, recall@100), next to a TF-IDF baseline
(treatment-minus-control TF-IDF direction, cosine) and a random ranking. Labels are read here
only, never by actindex. Prints a table and appends it to its run log, bench/runs/retrieval.md.

    python bench/retrieval.py --sets demo,fif-mixeds,rept-factual-ag,rept-backdoor --clean 300 --planted 80

``ensemble`` (reciprocal rank fusion of residual-change and its pooled variant over every built
layer) is scored once per set, with layer "-".

The pair vectors of a behaviour are computed once per family kind for all layers (the index's
query cache), so the first query of a kind carries the model time and later layers cost a search.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from record import run_log
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import average_precision_score, roc_auc_score

import actindex
from actindex.core.readers import resolve_data_path
from actindex.query.behaviors import Behavior, Pair, load_behavior

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ["residual-change", "residual-change-pooled", "residual-difference", "activation", "gradient", "ensemble"]
#: methods that use every indexed layer at once (shown with layer "-")
ALL_LAYERS = ("gradient", "ensemble")


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")
    n = int(labels.sum())
    return {
        "auroc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "p@n": labels[order[:n]].mean(),
        "r@100": labels[order[:100]].sum() / n,
    }


def subsample(pool: Path, clean: int, planted: int | None, out: Path, seed: int = 0) -> Path:
    rows = [json.loads(x) for x in pool.read_text().splitlines() if x.strip()]
    rng = random.Random(seed)
    c = [r for r in rows if r["label"] == "clean"]
    p = [r for r in rows if r["label"] != "clean"]
    keep = rng.sample(c, min(clean, len(c))) + (p if planted is None else rng.sample(p, min(planted, len(p))))
    rng.shuffle(keep)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


def load_set(name: str, work: Path, clean: int, planted: int) -> tuple[Path, Behavior]:
    """The pool file (large pools subsampled into ``work`` with seed 0) and the behaviour of a set."""
    if name == "demo":
        return resolve_data_path("demo"), load_behavior("hallucination")
    src = SHARED / name / "pool.jsonl"
    big = sum(1 for _ in open(src)) > 200
    pool = subsample(src, clean, planted, work / f"{name}.jsonl") if big else src
    rows = map(json.loads, open(SHARED / name / "behavior.jsonl"))
    pairs = [Pair(r["prompt"], r["treatment"], r["control"]) for r in rows]
    return pool, Behavior(name=name, pairs=pairs)


def timed_scores(idx: actindex.Index, behavior: Behavior, method: str, layer: int | None) -> tuple[np.ndarray, float]:
    """Every row's query score (-inf for rows the search skips) and the seconds the query took."""
    t = time.perf_counter()
    res = idx.query(behavior, method=method, layer=layer, k=0)
    secs = time.perf_counter() - t
    scores = np.full(len(idx), -np.inf)
    for hit in res.top:
        scores[hit.row] = hit.score
    return scores, secs


def text_of(record: dict) -> str:
    return " ".join(m["content"] for m in record["messages"])


def tfidf_scores(records: list[dict], behavior: Behavior) -> np.ndarray:
    vec = TfidfVectorizer().fit([text_of(r) for r in records])
    pool = vec.transform([text_of(r) for r in records])
    t = vec.transform([p.prompt + " " + p.treatment for p in behavior.pairs]).mean(axis=0)
    c = vec.transform([p.prompt + " " + (p.control or "") for p in behavior.pairs]).mean(axis=0)
    q = np.asarray(t - c).ravel()
    return np.asarray(pool @ q).ravel() / (np.linalg.norm(q) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="demo,fif-mixeds,rept-factual-ag,rept-backdoor")
    ap.add_argument("--clean", type=int, default=300, help="clean rows kept per large set (fixed seed)")
    ap.add_argument("--planted", type=int, default=80, help="planted rows kept per large set")
    ap.add_argument("--layers", default="12,18,24,27")
    ap.add_argument("--methods", default=",".join(METHODS), help="query methods to score (comma-separated)")
    ap.add_argument("--grad-sets", default="demo,fif-mixeds,rept-factual-ag,rept-backdoor",
                    help="sets also built with --grad")
    ap.add_argument("--work", default=None, help="where indexes go (default: a temp dir)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="actindex-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in args.layers.split(",")]
    lm = actindex.load_model()
    lines = ["| set | rows (planted) | method | layer | AUROC | AP | P@n | R@100 | s/query |", "|" + "---|" * 9]
    for name in args.sets.split(","):
        pool, behavior = load_set(name, work, args.clean, args.planted)
        out = work / f"{name}.idx"
        grad = name in args.grad_sets.split(",")
        if not (out / "manifest.json").exists():
            t = time.perf_counter()
            actindex.build(data=str(pool), out=str(out), layers=layers, grad=grad, pooled=True, model=lm,
                           progress=False, overwrite=True)
            print(f"built {name}: {time.perf_counter() - t:.0f} s", flush=True)
        idx = actindex.Index.open(out).use_model(lm)
        records = idx.records(range(len(idx)))
        labels = np.array([r.get("label", "clean") != "clean" for r in records])
        size = f"{len(idx)} ({labels.sum()})"
        for method in args.methods.split(","):
            if method == "gradient" and not grad:
                continue
            for layer in ([layers[0]] if method in ALL_LAYERS else layers):
                scores, secs = timed_scores(idx, behavior, method, layer)
                m = metrics(scores, labels)
                shown = "-" if method in ALL_LAYERS else layer
                lines.append(f"| {name} | {size} | {method} | {shown} | {m['auroc']:.3f} | {m['ap']:.3f} | "
                             f"{m['p@n']:.3f} | {m['r@100']:.3f} | {secs:.2f} |")
                print(lines[-1], flush=True)
        for base, scores in (("tfidf", tfidf_scores(records, behavior)),
                             ("random", np.random.default_rng(0).random(len(idx)))):
            m = metrics(scores, labels)
            lines.append(f"| {name} | {size} | {base} | - | {m['auroc']:.3f} | {m['ap']:.3f} | {m['p@n']:.3f} | "
                         f"{m['r@100']:.3f} | - |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    if not args.no_record:
        with open(run_log(), "a") as handle:
            handle.write(
                f"\n## Retrieval — {datetime.date.today()} — {platform.machine()} CPU, {lm.name}\n\n"
                f"`python bench/retrieval.py --sets {args.sets} --clean {args.clean} --planted {args.planted} "
                f"--layers {args.layers} --methods {args.methods}`. Large pools subsampled with seed 0 (clean "
                "rows, planted rows kept as labelled). s/query includes forming the query vector with the model "
                "(one forward+backward per pair row, once per family kind: later layers and methods of that kind "
                "reuse the cached pair vectors) and the search.\n\n" + table + "\n"
            )


if __name__ == "__main__":
    main()
