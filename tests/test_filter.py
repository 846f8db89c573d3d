"""actindex filter: the training data minus its top-ranked rows, in the input's own format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl

import actindex
from actindex.act.filter import filter_dataset, removal_count
from actindex.cli import main
from actindex.errors import ActindexError, IndexFileError
from actindex.index.search import normalise
from actindex.query.session import QuerySession

PAIRS = [
    {"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
]


def _rows() -> list[dict]:
    rows = chat_rows(30, seed=5)
    rows[4]["messages"][1]["content"] = "the symbol is na ü"  # non-ASCII content must survive byte for byte
    return rows


def _jsonl_bytes(rows: list[dict]) -> bytes:
    """Lines in varied (but valid) layouts: key order, spacing, escapes and a blank line all differ."""
    out = []
    for i, row in enumerate(rows):
        if i % 3 == 0:
            out.append(json.dumps(row, ensure_ascii=False))
        elif i % 3 == 1:
            out.append(json.dumps(dict(reversed(list(row.items()))), indent=None, separators=(",", ":")))
        else:
            out.append("  " + json.dumps(row, ensure_ascii=True) + "  ")
        if i == 7:
            out.append("")
    return ("\n".join(out) + "\n").encode("utf-8")


@pytest.fixture()
def built(llama, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(_jsonl_bytes(_rows()))
    write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1, 2], model=llama, progress=False)
    return actindex.Index.open(tmp_path / "idx").use_model(llama), data, tmp_path / "behavior.jsonl"


def _brute_force_order(idx, behavior, method="residual-change", layer=2) -> np.ndarray:
    """Rows by descending cosine of their stored vectors with psi, computed in numpy (float64)."""
    psi, family, _ = idx.query_vector(str(behavior), method, layer)
    cos = normalise(idx.reader.vectors(family)).astype(np.float64) @ (psi / np.linalg.norm(psi)).astype(np.float64)
    return np.argsort(-cos, kind="stable"), cos


def test_removal_count_rules():
    assert removal_count(7, 30) == 7 and removal_count("7", 30) == 7
    assert removal_count("10%", 30) == 3 and removal_count("2.5%", 40) == 1 and removal_count("5%", 30) == 2
    assert removal_count("100%", 30) == 30 and removal_count(50, 30) == 30 and removal_count("0%", 30) == 0
    for bad, message in (("abc", "percentage"), ("150%", "at most 100%"), (-1, "non-negative"), ("-3", "percentage")):
        with pytest.raises(ActindexError, match=message):
            removal_count(bad, 30)


def test_jsonl_keeps_every_other_line_byte_identical(built, tmp_path):
    idx, data, behavior = built
    out = tmp_path / "clean.jsonl"
    res = filter_dataset(idx, behavior=str(behavior), remove_top="10%", out=out, method="residual-change", layer=2)
    order, cos = _brute_force_order(idx, behavior)
    removed_rows = [int(r) for r in order[:3]]
    assert [r["row"] for r in res.removed] == removed_rows and res.kept == 27
    # expected output: the input's lines with exactly the removed records' lines dropped
    lines = data.read_bytes().splitlines(keepends=True)
    record_lines = [i for i, line in enumerate(lines) if line.strip()]
    drop = {record_lines[r] for r in removed_rows}
    assert out.read_bytes() == b"".join(line for i, line in enumerate(lines) if i not in drop)
    sidecar = [json.loads(x) for x in (tmp_path / "clean.jsonl.removed.jsonl").read_text().splitlines()]
    rows = _rows()
    assert [s["id"] for s in sidecar] == [rows[r]["id"] for r in removed_rows]
    assert [s["rank"] for s in sidecar] == [1, 2, 3]
    np.testing.assert_allclose([s["cosine"] for s in sidecar], cos[removed_rows], atol=1e-5)
    assert sidecar[0]["score"] >= sidecar[1]["score"] >= sidecar[2]["score"]  # calibrated, in the ranking's order
    assert sidecar[0]["record"] == rows[removed_rows[0]]
    assert {s["method"] for s in sidecar} == {"residual-change"} and {s["behavior"] for s in sidecar} == {"behavior"}
    assert {s["family"] for s in sidecar} == {"residual_change/2"}


def test_default_ranking_is_the_query_default(built, tmp_path):
    """Without --method, filter removes the rows `query` ranks first by default (the adaptive default)."""
    idx, data, behavior = built
    res = filter_dataset(idx, behavior=str(behavior), remove_top=4, out=tmp_path / "clean.jsonl")
    ranked = idx.query(str(behavior), k=4)
    assert ranked.method == "adaptive" and [r["row"] for r in res.removed] == [h.row for h in ranked.top]
    assert {r["method"] for r in res.removed} == {"adaptive"}


def test_parquet_round_trips(llama, tmp_path):
    rows = _rows()
    table = pa.Table.from_pylist([{"id": r["id"], "messages": r["messages"], "label": r["label"], "n": i}
                                  for i, r in enumerate(rows)])
    data = tmp_path / "train.parquet"
    pq.write_table(table, data)
    write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=llama, progress=False,
                   plain_mean=True)  # residual-difference's family
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    out = tmp_path / "clean.parquet"
    res = filter_dataset(idx, behavior=str(tmp_path / "behavior.jsonl"), remove_top=4, out=out,
                         method="residual-difference")
    order, _ = _brute_force_order(idx, tmp_path / "behavior.jsonl", "residual-difference")
    gone = set(int(r) for r in order[:4])
    assert {r["row"] for r in res.removed} == gone
    back = pq.read_table(out)
    assert back.schema == table.schema
    assert back.equals(table.take(pa.array([i for i in range(len(rows)) if i not in gone])))


def test_rows_past_limit_are_kept(llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows())
    write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=llama, progress=False, limit=20)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    res = filter_dataset(idx, behavior=str(tmp_path / "behavior.jsonl"), remove_top=5, out=tmp_path / "o.jsonl")
    lines = data.read_text().splitlines(keepends=True)
    gone = {r["row"] for r in res.removed}
    assert max(gone) < 20 and res.kept == 25 and res.unscored == 10
    assert (tmp_path / "o.jsonl").read_text() == "".join(x for i, x in enumerate(lines) if i not in gone)


def test_changed_data_file_and_bad_outputs_are_refused(built, tmp_path):
    idx, data, behavior = built
    with pytest.raises(ActindexError, match="has another extension"):
        filter_dataset(idx, behavior=str(behavior), remove_top=1, out=tmp_path / "x.parquet")
    with pytest.raises(ActindexError, match="is the training data file itself"):
        filter_dataset(idx, behavior=str(behavior), remove_top=1, out=data)
    (tmp_path / "exists.jsonl").write_text("")
    with pytest.raises(ActindexError, match="pass --overwrite"):
        filter_dataset(idx, behavior=str(behavior), remove_top=1, out=tmp_path / "exists.jsonl")
    with pytest.raises(ActindexError, match="--remove-top"):
        filter_dataset(idx, behavior=str(behavior), remove_top="lots", out=tmp_path / "y.jsonl")
    data.write_bytes(data.read_bytes() + b'{"text": "one more row"}\n')
    with pytest.raises(IndexFileError, match="changed since .* was built"):
        filter_dataset(idx, behavior=str(behavior), remove_top=1, out=tmp_path / "z.jsonl")
    data.unlink()
    with pytest.raises(IndexFileError, match="is missing; pass its new path with --data"):
        filter_dataset(idx, behavior=str(behavior), remove_top=1, out=tmp_path / "z.jsonl")
    assert not (tmp_path / "z.jsonl").exists() and not (tmp_path / "y.jsonl").exists()


def test_cli_filter(built, tmp_path, monkeypatch, llama):
    idx, data, behavior = built
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    runner = CliRunner()
    base = ["filter", "--index", str(idx.root), "--behavior", str(behavior), "--layer", "2"]
    res = runner.invoke(main, base + ["--remove-top", "2", "--out", str(tmp_path / "f.jsonl")])
    assert res.exit_code == 0, res.output
    assert "kept 28 row(s), removed 2 top row(s)" in res.output
    assert len((tmp_path / "f.jsonl.removed.jsonl").read_text().splitlines()) == 2
    res = runner.invoke(main, base + ["--remove-top", "2", "--out", str(tmp_path / "f.jsonl")])
    assert res.exit_code == 2 and "pass --overwrite" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, base + ["--remove-top", "2", "--out", str(tmp_path / "f.jsonl"), "--overwrite"])
    assert res.exit_code == 0, res.output
    moved = tmp_path / "moved.jsonl"
    data.rename(moved)
    res = runner.invoke(main, base + ["--remove-top", "3%", "--out", str(tmp_path / "g.jsonl")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "--data" in res.output
    res = runner.invoke(main, base + ["--remove-top", "3%", "--out", str(tmp_path / "g.jsonl"), "--data", str(moved)])
    assert res.exit_code == 0 and "removed 1 top row(s)" in res.output
    res = runner.invoke(main, base + ["--remove-top", "x%", "--out", str(tmp_path / "h.jsonl")])
    assert res.exit_code == 2 and "error: --remove-top" in res.output


def test_a_sampled_index_filters_the_right_lines(llama, tmp_path):
    """build --sample N: a seeded sample of the file's rows, in file order; filter removes exactly the lines of
    the ranked rows and keeps every other line (sampled or not) byte for byte."""
    from actindex.core.readers import jsonl_lines

    rows = chat_rows(40, seed=6)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    m = actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=llama, progress=False,
                       sample=15, seed=3)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    drawn = np.sort(np.random.default_rng(3).choice(40, size=15, replace=False))
    table = idx.reader.table
    assert idx.reader.ids() == [rows[i]["id"] for i in drawn] and table.source_row.tolist() == drawn.tolist()
    assert m.data[0].file_rows == 40 and m.data[0].sample == 15 and table.line.tolist() == (drawn + 1).tolist()
    res = filter_dataset(idx, behavior=str(write_jsonl(tmp_path / "b.jsonl", PAIRS)), remove_top=4,
                         out=tmp_path / "clean.jsonl", method="residual-change", layer=2)
    removed = {r["id"] for r in res.removed}
    lines = [raw for _, raw, is_row in jsonl_lines(data) if is_row]
    expected = [raw for raw, row in zip(lines, rows) if row["id"] not in removed]
    assert (tmp_path / "clean.jsonl").read_bytes().splitlines(keepends=True) == expected
    assert len(removed) == 4 and removed <= set(idx.reader.ids()) and res.kept == 36 and res.unscored == 25
    info = CliRunner().invoke(main, ["info", str(tmp_path / "idx")])
    assert "covers 15 of train.jsonl's 40 rows (a seeded sample of 15)" in info.output, info.output
