"""Filters and pages: ``where`` ranks only the rows whose records match, inside the search (the k rows returned all
match and are the best k of them, checked against brute force over the matching rows, for exact and approximate
FAISS indexes and the ID-selector path), ``offset`` pages a ranking (pages laid end to end are the whole ranking),
and the CLI's --where, filter's and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl

import actindex
from actindex.act.filter import filter_dataset
from actindex.cli import main
from actindex.core.models import LoadedModel
from actindex.errors import ActindexError
from actindex.index import reader as reader_module
from actindex.index.search import normalise

FAMILY = "residual_change/2"
LABELS = ("a", "b", "c")


def labelled_rows(n: int = 48) -> list[dict]:
    rows = chat_rows(n, seed=11)
    for i, row in enumerate(rows):
        row["label"], row["group"] = LABELS[i % 3], i % 4  # group: an integer field
    del rows[5]["label"]  # a record without the field never matches
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_dir):
    """``{factory: index directory}``: the same rows under an exact and two approximate FAISS indexes."""
    from actindex.core.models import load_model

    tmp = tmp_path_factory.mktemp("where")
    data = write_jsonl(tmp / "train.jsonl", labelled_rows())
    lm = load_model(str(model_dir))
    out = {}
    for factory in ("Flat", "HNSW8", "IVF2,Flat"):
        root = tmp / factory.replace(",", "_")
        actindex.build(data=str(data), out=str(root), layers=[1, 2], model=lm, progress=False,
                       faiss_factory=factory)
        out[factory] = root
    return out


@pytest.fixture(scope="module")
def lm(model_dir) -> LoadedModel:
    from actindex.core.models import load_model

    return load_model(str(model_dir))


def matching(idx: actindex.Index, where: dict) -> np.ndarray:
    """The searchable rows whose records match ``where``, by reading every record (the ground truth)."""
    asked = {f: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for f, vs in where.items()}
    rows = idx.reader.table.searchable
    records = idx.reader.records(rows)
    return np.array([r for r, rec in zip(rows, records)
                     if all(f in rec and str(rec[f]) in vs for f, vs in asked.items())], dtype=np.int64)


def brute_force(idx: actindex.Index, vector: np.ndarray, rows: np.ndarray, bottom: bool) -> tuple:
    scores = normalise(idx.reader.vectors(FAMILY, rows)) @ normalise(vector)[0]
    order = np.argsort(scores if bottom else -scores, kind="stable")
    return scores[order], rows[order]


SEARCHES = [  # where, k, offset, bottom
    ({"label": "a"}, 5, 0, False),
    ({"label": ["a", "c"]}, 7, 3, False),
    ({"label": "b", "group": 1}, 10, 0, True),
    ({"group": "2"}, 4, 2, False),  # "2" matches the integer 2: values compare as text
    ({"label": "c"}, 0, 4, False),  # k 0: every matching row after the offset
]


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF2,Flat"])
@pytest.mark.parametrize("selector", [False, True], ids=["few-rows-exact", "faiss-selector"])
@pytest.mark.parametrize("where, k, offset, bottom", SEARCHES)
def test_search_returns_the_best_matching_rows(built, factory, selector, where, k, offset, bottom, monkeypatch):
    if selector:  # an approximate index then searches through FAISS's ID selector too
        monkeypatch.setattr(reader_module, "AUTO_FLAT_ROWS", 0)
    idx = actindex.Index.open(built[factory])
    if factory.startswith("IVF"):
        idx.reader.tune(nprobe=2)  # every list: the approximate index then finds what brute force finds
    vector = np.random.default_rng(len(str(where))).standard_normal(idx.families[FAMILY].dim)
    scores, rows = idx.search(vector, k, FAMILY, bottom, where=where, offset=offset)
    want_scores, want_rows = brute_force(idx, vector, matching(idx, where), bottom)
    want = slice(offset, offset + k if k else None)
    assert len(rows) == len(want_rows[want]) and set(rows) <= set(matching(idx, where).tolist())
    np.testing.assert_allclose(scores, want_scores[want], atol=1e-5)
    gaps = np.abs(np.diff(want_scores))
    if len(gaps) and gaps.min() > 1e-5:  # no near-ties: the order is brute force's
        assert rows.tolist() == want_rows[want].tolist()


@pytest.mark.parametrize("method", ["residual-change", "adaptive"])
def test_a_filtered_query_is_the_full_ranking_restricted_to_the_matching_rows(built, lm, method):
    idx = actindex.Index.open(built["Flat"]).use_model(lm)
    where = {"label": ["a", "b"]}
    every = idx.ranking("sycophancy", method=method, k=0)
    keep = set(matching(idx, where).tolist())
    want = [int(r) for r in every.top.rows if int(r) in keep]
    got = idx.query("sycophancy", method=method, k=6, bottom_k=3, where=where)
    assert [h.row for h in got.top] == want[:6] and [h.row for h in got.bottom] == want[::-1][:3]
    assert all(h.record["label"] in ("a", "b") for h in got.top + got.bottom)
    assert any("only the rows where label in (a, b)" in note for note in got.notes)
    ranked = idx.ranking("sycophancy", method=method, k=0, where=where)
    assert ranked.top.rows.tolist() == want


def test_pages_laid_end_to_end_are_the_ranking(built, lm):
    idx = actindex.Index.open(built["Flat"]).use_model(lm)
    whole = idx.query("sycophancy", method="residual-change", k=0)
    pages = [idx.query("sycophancy", method="residual-change", k=5, offset=at) for at in range(0, 50, 5)]
    assert [h.id for p in pages for h in p.top] == [h.id for h in whole.top]
    assert [h.rank for p in pages for h in p.top] == list(range(1, len(whole.top) + 1))


@pytest.mark.parametrize("where, message", [
    ({"lable": "a"}, "has a field 'lable'"),
    ({"label": []}, "empty list of values"),
    ({"label": {"x": 1}}, "values are strings, numbers, booleans or null"),
])
def test_bad_filters_are_one_line(built, where, message):
    idx = actindex.Index.open(built["Flat"])
    with pytest.raises(ActindexError, match=message):
        idx.search(np.ones(idx.families[FAMILY].dim), 3, FAMILY, where=where)


def test_the_cli_filters_query_and_filter(built, model_dir, lm, tmp_path):
    root = built["Flat"]
    runner = CliRunner()
    args = ["query", "--index", str(root), "--behavior", "sycophancy", "--model", str(model_dir), "--quiet"]
    out = runner.invoke(main, [*args, "--where", "label=a", "--where", "label=c", "--where", "group=0",
                               "--top-k", "20", "--format", "json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)[0]["top"]
    assert hits and all(h["record"]["label"] in ("a", "c") and h["record"]["group"] == 0 for h in hits)
    bad = runner.invoke(main, [*args, "--where", "lable=a"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].endswith("has a field 'lable'"), bad.output
    bad = runner.invoke(main, [*args, "--where", "label"])
    assert bad.exit_code == 2 and "expected FIELD=VALUE" in bad.output
    result = filter_dataset(actindex.Index.open(root).use_model(lm), behavior="sycophancy", remove_top=4,
                            out=tmp_path / "kept.jsonl", where={"label": "b"})
    assert len(result.removed) == 4 and all(r["record"]["label"] == "b" for r in result.removed)


def test_the_cli_filters_report_and_filter(built, model_dir, tmp_path):
    import re

    root = built["Flat"]
    labels = {i: row.get("label") for i, row in enumerate(labelled_rows())}  # row number -> its label
    common = ["--index", str(root), "--behavior", "sycophancy", "--model", str(model_dir), "--quiet"]
    page = CliRunner().invoke(main, ["report", *common, "--where", "label=b", "--top-k", "6", "--bottom-k", "2",
                                     "--out", str(tmp_path / "r.html")])
    assert page.exit_code == 0, page.output
    rows = [int(r) for r in re.findall(r'<article class="card \w+" data-id="[^"]*" data-row="(\d+)"',
                                       (tmp_path / "r.html").read_text())]
    assert len(rows) == 8 and {labels[r] for r in rows} == {"b"}, rows
    kept = tmp_path / "kept.jsonl"
    out = CliRunner().invoke(main, ["filter", *common, "--where", "label=c", "--where", "group=1",
                                    "--remove-top", "3", "--out", str(kept)])
    assert out.exit_code == 0, out.output
    removed = [json.loads(line) for line in kept.with_name("kept.jsonl.removed.jsonl").read_text().splitlines()]
    assert len(removed) == 3 and all(r["record"]["label"] == "c" and r["record"]["group"] == 1 for r in removed)


def test_another_k_of_a_kept_fused_order_is_what_a_fresh_query_ranks(built, lm):
    idx = actindex.Index.open(built["Flat"]).use_model(lm)
    idx.query("sycophancy", k=3, where={"label": "a"})  # forms, searches and fuses the members; keeps the order
    kept = idx.query("sycophancy", k=9, offset=2, where={"label": "a"})
    fresh = actindex.Index.open(built["Flat"]).use_model(lm).query("sycophancy", k=9, offset=2,
                                                                   where={"label": "a"})
    assert "members" not in kept.timings and "members" in fresh.timings  # cut from the kept order
    assert [h.id for h in kept.top] == [h.id for h in fresh.top] and kept.members == fresh.members
    np.testing.assert_allclose([h.score for h in kept.top], [h.score for h in fresh.top], rtol=1e-6)
    idx.reader.tune(ef_search=7)  # other search settings: formed again
    assert "members" in idx.query("sycophancy", k=9, where={"label": "a"}).timings
