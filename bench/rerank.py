"""Search, then exact influence on the candidates: does reranking improve the ranking (issue 4)?

For each set, the index that ``bench/retrieval.py`` built (same ``--work``, same subsampling) gets
EK-FAC factors fitted on a seeded sample of its rows; then each search method's top and bottom
``--candidates`` rows are re-scored with exact EK-FAC influence (``Index.influence`` on those rows,
which equals ``Index.query(..., rerank="ekfac")``). The reranked order is: top candidates by
influence, then the rows no candidate list holds by search score, then the bottom candidates by
influence. AUROC / AP of the planted rows are reported for search only and search + rerank, with
the seconds each took (fitting reported once per set).

    python bench/retrieval.py --work /tmp/bench-work --sets fif-mixeds      # builds the index
    python bench/rerank.py --work /tmp/bench-work --sets fif-mixeds --candidates 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from record import append_section, markdown_table
from retrieval import load_set, metrics, timed_scores

import actindex

SEARCHES = [("residual-change", 24), ("residual-difference", 18), ("gradient", None)]


def reranked_scores(search: np.ndarray, top: np.ndarray, bottom: np.ndarray, influence: dict[int, float]) -> np.ndarray:
    """Scores whose descending order is: top candidates by influence, the rest by search, bottom ones."""
    span = search[np.isfinite(search)]
    lo, hi = float(span.min()), float(span.max())
    out = search.copy()
    values = np.array(list(influence.values()))
    scale = max(float(np.abs(values).max()), 1e-30)
    for row in top:
        out[row] = hi + 2 + influence[row] / scale  # above every search score
    for row in bottom:
        out[row] = lo - 2 + influence[row] / scale  # below every search score
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fif-mixeds")
    ap.add_argument("--work", required=True, help="the --work directory of bench/retrieval.py")
    ap.add_argument("--clean", type=int, default=300)
    ap.add_argument("--planted", type=int, default=80)
    ap.add_argument("--candidates", type=int, default=50, help="top-K and bottom-K rows reranked")
    ap.add_argument("--samples", type=int, default=64, help="rows sampled to fit EK-FAC")
    ap.add_argument("--modules", default="*.mlp.*", help="EK-FAC modules (fnmatch patterns, comma-separated)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    lm = actindex.load_model()
    table = []
    for name in args.sets.split(","):
        _, behavior = load_set(name, work, args.clean, args.planted)
        idx = actindex.Index.open(work / f"{name}.idx").use_model(lm)
        t = time.perf_counter()
        if "ekfac" not in idx.manifest.get("curvature", {}):
            idx.fit_curvature(kind="ekfac", samples=args.samples, modules=args.modules.split(","))
            idx = actindex.Index.open(work / f"{name}.idx").use_model(lm)
        fit = time.perf_counter() - t
        labels = np.array([r.get("label", "clean") != "clean" for r in idx.records(range(len(idx)))])
        k = min(args.candidates, len(idx))
        for method, layer in SEARCHES:
            if method == "gradient" and "gradient" not in idx.families:
                continue
            search, searched = timed_scores(idx, behavior, method, layer)
            order = np.argsort(-search, kind="stable")
            top, bottom = order[:k], order[::-1][: max(0, min(k, len(idx) - k))]
            t = time.perf_counter()
            rows = np.concatenate([top, bottom])
            scored = idx.influence(behavior, kind="ekfac", rows=rows)
            influence = dict(zip(scored.rows.tolist(), scored.influence.total.tolist()))
            reranked = time.perf_counter() - t
            a = metrics(search, labels)
            b = metrics(reranked_scores(search, top, bottom, influence), labels)
            table.append([name, f"{len(idx)} ({labels.sum()})", method, layer or "-", k,
                          f"{a['auroc']:.3f}", f"{a['ap']:.3f}", f"{b['auroc']:.3f}", f"{b['ap']:.3f}",
                          f"{searched:.1f}", f"{reranked:.1f}", f"{fit:.0f}"])
            print(table[-1], flush=True)
    columns = ["set", "rows (planted)", "search", "layer", "K", "AUROC search", "AP search", "AUROC +rerank",
               "AP +rerank", "s search", "s rerank", "s fit"]
    text = markdown_table(columns, table)
    print(text)
    if not args.no_record:
        append_section(
            "Search + EK-FAC rerank",
            f"EK-FAC on `{args.modules}` fitted on {args.samples} sampled rows (true Fisher, default damping); "
            f"top and bottom {args.candidates} candidates of each search reranked by exact influence. s search "
            "includes forming the query vector; s rerank the behaviour gradient and the candidates' "
            "gradients.\n\n" + text,
        )


if __name__ == "__main__":
    main()
