"""Search, then exact influence on the candidates: does reranking improve the ranking (issue 4)?

For each set, the index that ``bench/retrieval.py`` built (same ``--work``, same subsampling) gets
EK-FAC factors fitted on a seeded sample of its rows; then, for each search method, a fresh index
(nothing cached) answers ``Index.query(..., rerank="ekfac", candidates=K)`` exactly as a user's
query does: the search's top and bottom ``K`` rows re-scored with exact EK-FAC influence. The
reranked order is: top candidates by influence, then the rows no candidate list holds by search
score, then the bottom candidates by influence. AUROC / AP of the planted rows are reported for
search only and search + rerank, with the seconds of each (a search alone, from a fresh index;
the whole reranked query, from another), fitting reported once per set.

With ``--kronfluence PYTHON`` (the peers' venv of bench/peers.py), kronfluence's EK-FAC is fitted
on the same rows (the ones the index's fit sampled, same tracked modules) and scores every row of
the set against the same behaviour (one aggregated query, ``sum_pairs log p(treatment) - log
p(control)``); its AUROC / AP and the seconds of its score pass sit next to search + rerank. A new
behaviour costs kronfluence a pass over every row, and actindex a search plus ``2K`` candidates,
so the speed ratio is also extrapolated to ``EXTRAPOLATE_ROWS`` rows: kronfluence's fixed cost plus
its per-row cost (from score passes over the rows and over them repeated 4 times) times the rows, against
actindex's measured time, which does not grow with the rows but for the milliseconds of the search.
``PEERS_THREADS`` sets kronfluence's OpenMP threads (default 1); match it to this process's.

    python bench/retrieval.py --work /tmp/bench-work --sets fif-mixeds      # builds the index
    python bench/rerank.py --work /tmp/bench-work --sets fif-mixeds --candidates 40 \
        --kronfluence .peers-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from peers import run_child
from record import append_section, markdown_table
from retrieval import load_set, metrics, ranked

import actindex

SEARCHES = [("ensemble", None), ("residual-change", 24), ("residual-difference", 18), ("gradient", None)]
EXTRAPOLATE_ROWS = 10_000
COLUMNS = ["set", "rows (planted)", "search", "layer", "K", "AUROC search", "AP search", "AUROC +rerank", "AP +rerank",
           "s search", "s search + rerank", "s fit"]


def reranked_scores(search: np.ndarray, top: np.ndarray, influence: dict[int, float]) -> np.ndarray:
    """Scores whose descending order is: the reranked rows of the search's ``top`` by influence, the
    rest by search, then the other reranked rows (the bottom candidates) by influence."""
    span = search[np.isfinite(search)]
    lo, hi = float(span.min()), float(span.max())
    out = search.copy()
    scale = max(float(np.abs(np.array(list(influence.values()))).max()), 1e-30)
    upper = set(top.tolist())
    for row, value in influence.items():
        out[row] = (hi + 2 if row in upper else lo - 2) + value / scale  # beyond every search score
    return out


def fresh(work: Path, name: str, lm) -> actindex.Index:
    """The set's index opened anew: no query vector or gradient cached, so a query pays its whole pass."""
    return actindex.Index.open(work / f"{name}.idx").use_model(lm)


def kronfluence_rows(args: argparse.Namespace, name: str, idx: actindex.Index, behavior, labels: np.ndarray,
                     ours: list[list], work: Path) -> list[list]:
    """kronfluence EK-FAC fitted on the index's fitted rows, then every row scored; one row of the
    comparison table against each of ``ours`` (the default search + rerank at each K: rows of the main table)."""
    out = work / f"{name}.kron"
    out.mkdir(exist_ok=True)
    pairs = out / "behavior.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "treatment": p.treatment, "control": p.control}) + "\n"
                             for p in behavior.pairs))
    fit_rows = idx.manifest.curvature["ekfac"].rows
    info, _, _, _ = run_child([args.kronfluence, str(Path(__file__).with_name("peers.py")), "--child", "kron-scores",
                               "--data", str(idx.manifest.data_path), "--behavior", str(pairs),
                               "--fit-rows", ",".join(map(str, fit_rows)), "--kron-modules", args.modules,
                               "--out", str(out), "--batch-size", "4"])
    # kronfluence's score is g_phi^T H^-1 g_L: upweighting a row changes phi by minus it
    m = metrics(-np.load(out / "scores.npy"), labels)
    at_scale = max(info["fixed_s"], 0.0) + info["per_row_s"] * EXTRAPOLATE_ROWS
    rows = []
    for row in ours:
        row = dict(zip(COLUMNS, row))
        answer = float(row["s search + rerank"])
        rows.append([name, f"{len(idx)} ({labels.sum()})", info["modules"], f"{m['auroc']:.3f} / {m['ap']:.3f}",
                     row["K"], f"{row['AUROC +rerank']} / {row['AP +rerank']}", f"{info['score_s']:.1f}",
                     f"{info['fixed_s']:.0f}", f"{info['per_row_s']:.2f}", f"{answer:.1f}",
                     f"{info['score_s'] / answer:.1f}x", f"{at_scale / answer:.0f}x",
                     f"{info['fit_s']:.0f} / {row['s fit']}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fif-mixeds")
    ap.add_argument("--work", required=True, help="the --work directory of bench/retrieval.py")
    ap.add_argument("--clean", type=int, default=300)
    ap.add_argument("--planted", type=int, default=80)
    ap.add_argument("--candidates", default="50", help="top-K and bottom-K rows reranked (comma-separated Ks: each)")
    ap.add_argument("--samples", type=int, default=64, help="rows sampled to fit EK-FAC")
    ap.add_argument("--modules", default="*.mlp.*", help="EK-FAC modules (fnmatch patterns, comma-separated)")
    ap.add_argument("--searches", default=",".join(m for m, _ in SEARCHES),
                    help="searches to rerank (comma-separated, of: " + ", ".join(m for m, _ in SEARCHES) + ")")
    ap.add_argument("--kronfluence", metavar="PYTHON", help="the peers' venv python: add kronfluence's all-rows scores")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    lm = actindex.load_model()
    table: list[list] = []
    peers: list[list] = []
    for name in args.sets.split(","):
        _, behavior = load_set(name, work, args.clean, args.planted)
        idx = actindex.Index.open(work / f"{name}.idx").use_model(lm)
        if "ekfac" not in idx.manifest.curvature:
            idx.fit_curvature(kind="ekfac", samples=args.samples, modules=args.modules.split(","))
            idx = actindex.Index.open(work / f"{name}.idx").use_model(lm)
        fit = idx.manifest.curvature["ekfac"].seconds  # as recorded by the fit (also a reused one)
        labels = np.array([r.get("label", "clean") != "clean" for r in idx.reader.records(range(len(idx)))])
        for method, layer in SEARCHES:
            if method not in args.searches.split(",") or (method == "gradient" and "gradient" not in idx.families):
                continue
            search, searched, _ = ranked(fresh(work, name, lm), behavior, method, layer)
            a = metrics(search, labels)
            for k in [min(int(c), len(idx)) for c in args.candidates.split(",")]:
                t = time.perf_counter()
                answer = fresh(work, name, lm).query(behavior, method=method, layer=layer, k=2 * k, rerank="ekfac",
                                                     candidates=k)
                reranked = time.perf_counter() - t
                influence = {hit.row: hit.influence for hit in answer.top}
                b = metrics(reranked_scores(search, np.argsort(-search, kind="stable")[:k], influence), labels)
                table.append([name, f"{len(idx)} ({labels.sum()})", method, layer or "-", k,
                              f"{a['auroc']:.3f}", f"{a['ap']:.3f}", f"{b['auroc']:.3f}", f"{b['ap']:.3f}",
                              f"{searched:.1f}", f"{reranked:.1f}", f"{fit:.0f}"])
                print(table[-1], flush=True)
        if args.kronfluence:  # against the default search (the ensemble) + rerank
            ours = [row for row in table if row[0] == name and row[2] == SEARCHES[0][0]]
            peers += kronfluence_rows(args, name, idx, behavior, labels, ours, work)
            print(peers[-len(ours):], flush=True)
    text = markdown_table(COLUMNS, table)
    if peers:
        text += "\n\nkronfluence's EK-FAC (same modules, fitted on the same rows) scoring every row, against " \
            f"actindex's default search ({SEARCHES[0][0]}) + EK-FAC rerank of the top and bottom K:\n\n"
        text += markdown_table(
            ["set", "rows (planted)", "modules", "kronfluence AUROC / AP", "K", "actindex search + rerank AUROC / AP",
             "s kronfluence scores", "s fixed", "s per row", "s actindex search + rerank", "speed-up here",
             f"speed-up at {EXTRAPOLATE_ROWS:,} rows", "s fit: kronfluence / actindex"], peers)
    print(text)
    if not args.no_record:
        append_section(
            "Search + EK-FAC rerank",
            f"EK-FAC on `{args.modules}` fitted on {args.samples} sampled rows (true Fisher, default damping); "
            f"top and bottom K ({args.candidates}) candidates of each search reranked by exact influence. s search "
            "is a search alone from a fresh index (its query vectors included); s search + rerank the whole "
            "`Index.query(..., rerank=\"ekfac\")` from another fresh index (one pass over the behaviour's pairs "
            "for its vectors and its gradient, then the candidates).\n\n" + text,
        )


if __name__ == "__main__":
    main()
