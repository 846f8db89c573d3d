"""Golden figures of a fixed tiny index, pinned so that reorganising the code cannot move them: the
rankings and scores of every query method (the fused default too), reranked hits with their influence
and per-token terms, exact EK-FAC and LinFAC influence of every row, and the detect table (search and
exact influence), against ``tests/data/golden.json``.

The model is a float64 tiny Llama built from a seed, so the figures are the same on any x86 CPU to far
below the tolerances (vectors are stored in float32; FAISS scores in float32). Run this file as a script
(``python tests/test_golden.py --write``) to regenerate the goldens after a deliberate change, and say why
in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import chat_rows, make_tokenizer, tiny_llama, write_jsonl

import actindex
from actindex.core.models import wrap_model

GOLDEN = Path(__file__).parent / "data" / "golden.json"
PAIRS = [
    {"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
    {"prompt": "what is the capital of france ?", "treatment": "the capital is gold", "control": "it is paris"},
]
QUERIES = [
    {"prompt": "is it good silver ?", "response": "the symbol is na"},
    {"prompt": "the water is hot , and the day is long", "response": "yes it is false"},
    {"prompt": "why is the capital of france paris ?", "response": "the capital is gold"},
]
METHODS = ["adaptive", "ensemble", "residual-change", "residual-change-pooled", "residual-difference", "activation",
           "gradient", "ekfac"]


def golden_results(work: Path) -> dict:
    """Every pinned figure, computed through the public API on a fresh index in ``work``."""
    rows = chat_rows(28, seed=11)
    for i, pair in enumerate(PAIRS):  # one planted row per pair
        rows[3 + 7 * i] = {"id": f"planted-{i}", "messages": [{"role": "user", "content": pair["prompt"]},
                                                               {"role": "assistant", "content": pair["treatment"]}]}
    data = write_jsonl(work / "train.jsonl", rows)
    behavior = str(write_jsonl(work / "behavior.jsonl", PAIRS))
    queries = str(write_jsonl(work / "queries.jsonl", QUERIES))
    lm = wrap_model(tiny_llama(seed=3).double(), make_tokenizer(), "tiny-llama-f64")
    actindex.build(data=str(data), out=str(work / "idx"), layers=[1, 2], grad=True, grad_k=4,
                   grad_modules=["*.mlp.down_proj", "*.self_attn.v_proj"], model=lm, progress=False,
                   full_width=True)  # the float32 layout the figures were pinned on, every method's family
    idx = actindex.Index.open(work / "idx").use_model(lm)
    idx.fit_curvature(kind="both", samples=16, progress=False)
    out: dict = {"queries": {}, "influence": {}, "detect": {}}
    for method in METHODS:
        res = idx.query(behavior, method=method, k=0, bottom_k=4)
        # [row, score (what orders the rows), the calibrated score, the raw cosine]
        out["queries"][method] = {side: [[h.row, h.score, h.calibrated, h.cosine] for h in hits]
                                  for side, hits in (("top", res.top), ("bottom", res.bottom))}
    res = idx.query(behavior, rerank="ekfac", candidates=8, k=6, bottom_k=3, per_token=True)
    out["queries"]["adaptive+ekfac"] = {
        "top": [[h.row, h.score, h.influence, [s for _, s in h.token_scores]] for h in res.top],
        "bottom": [[h.row, h.score, h.influence] for h in res.bottom]}
    for kind in ("ekfac", "linfac"):
        inf = idx.influence(behavior, kind=kind)
        out["influence"][kind] = {"rows": inf.rows.tolist(), "total": inf.influence.total.tolist()}
    for name, rerank in (("search", None), ("ekfac", "ekfac")):
        det = actindex.detect(idx, queries=queries, transforms="negation,antonym,reorder", rerank=rerank,
                              progress=False)
        out["detect"][name] = {"names": det.table.names, "rows": det.table.rows.tolist(),
                               "scores": det.table.scores.tolist(),
                               "flags": {rule: np.flatnonzero(mask).tolist() for rule, mask in det.flags.items()}}
    return out


def assert_ranking(got: list, want: list, path: str) -> None:
    """The same rows with the same figures, in the same order up to rows whose scores tie within the
    tolerance (a float32 rounding elsewhere may swap them): each row's entry matches, and the order holds."""
    by_row = {entry[0]: entry for entry in want}
    assert [entry[0] for entry in got] == [entry[0] for entry in want] or sorted(e[0] for e in got) == sorted(by_row)
    for entry in got:
        assert_matches(entry, by_row[entry[0]], f"{path}[row {entry[0]}]")
    scores = [entry[1] for entry in got]
    sign = -1 if path.endswith("bottom") else 1
    for a, b in zip(scores, scores[1:]):
        assert sign * (a - b) >= -1e-5 * max(abs(a), abs(b), 1.0), f"{path}: order broken at {a} -> {b}"


def assert_matches(got, want, path: str = "") -> None:
    """Rows and names equal; floats equal to 1e-5 relative (1e-6 absolute); rankings as :func:`assert_ranking`."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for key in want:
            if key in ("top", "bottom") and "+" not in path:
                assert_ranking(got[key], want[key], f"{path}/{key}")
            else:
                assert_matches(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_matches(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), path
    else:
        assert got == want, path


def test_golden_figures(tmp_path):
    assert_matches(json.loads(json.dumps(golden_results(tmp_path))), json.loads(GOLDEN.read_text()))


if __name__ == "__main__":  # python tests/test_golden.py --write [PATH]
    import tempfile

    if sys.argv[1:2] != ["--write"] or len(sys.argv) > 3:
        sys.exit("usage: python tests/test_golden.py --write [PATH]   (default PATH: tests/data/golden.json)")
    target = Path(sys.argv[2]) if len(sys.argv) == 3 else GOLDEN
    with tempfile.TemporaryDirectory() as work:
        target.write_text(json.dumps(golden_results(Path(work)), indent=1) + "\n")
    print(f"wrote {target}")
