"""actindex export: the index as one Parquet or Arrow IPC table that pyarrow, pandas and DuckDB read without
actindex, equal to what the index holds, streamed in batches of the block size (memory bounded by the block)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl

import actindex
from actindex.cli import main
from actindex.errors import ActindexError


@pytest.fixture(scope="module")
def index(tmp_path_factory, tokenizer):
    from conftest import tiny_llama

    from actindex.core.models import wrap_model

    tmp = tmp_path_factory.mktemp("export")
    rows = chat_rows(23, seed=2)
    rows[5]["messages"][0]["content"] = " ".join(["why"] * 80)  # its response cut off: stored, not searchable
    rows[9]["note"] = {"nested": ["kept", 1]}
    data = write_jsonl(tmp / "train.jsonl", rows)
    actindex.build(data=str(data), out=str(tmp / "idx"), layers=[1, 2], model=wrap_model(tiny_llama(), tokenizer, "t"),
                   store_dtype="float16", max_length=64, progress=False, plain_mean=True)
    return actindex.Index.open(tmp / "idx")


def check_table(table: pa.Table, idx: actindex.Index, families: list[str]) -> None:
    n = idx.manifest.rows
    assert table.num_rows == n and table.column("id").to_pylist() == idx.reader.ids()
    assert table.column("row").to_pylist() == list(range(n))
    records = [json.loads(r) for r in table.column("record").to_pylist()]
    assert records == idx.reader.records(range(n))
    t = idx.reader.table
    for name in ("loss", "n_tokens", "n_response", "valid", "line", "source_row"):
        np.testing.assert_array_equal(table.column(name).to_numpy(), getattr(t, name), err_msg=name)
    for family in families:
        column = table.column(family)
        assert column.type == pa.list_(pa.float32(), idx.families[family].dim)
        vectors = np.stack(column.to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(vectors, idx.reader.vectors(family), err_msg=family)
    assert json.loads(table.schema.metadata[b"actindex.manifest"])["rows"] == n


def test_parquet_equals_the_index_and_is_written_in_blocks(index, tmp_path):
    out = tmp_path / "idx.parquet"
    result = actindex.export(index, out, block_rows=4)
    assert result.batches == 6 and result.rows == 23 and result.format == "parquet"
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == 6 and [meta.row_group(i).num_rows for i in range(6)] == [4] * 5 + [3]
    check_table(pq.read_table(out), index, list(index.families))
    assert not index.reader.table.valid[5] and index.reader.table.valid.sum() == 22


def test_arrow_file_with_chosen_families(index, tmp_path):
    out = tmp_path / "idx.arrow"
    families = ["residual_change/2", "mean_activation/1"]
    result = actindex.export(index.root, out, families=families, block_rows=10)
    assert result.format == "arrow" and result.batches == 3
    with pa.ipc.open_file(out) as reader:
        assert reader.num_record_batches == 3 and max(reader.get_batch(i).num_rows for i in range(3)) == 10
        table = reader.read_all()
    assert table.column_names[-2:] == families and "residual_change/1" not in table.column_names
    check_table(table, index, families)


def test_duckdb_and_pandas_read_it_without_actindex(index, tmp_path):
    out = tmp_path / "idx.parquet"
    actindex.export(index, out, block_rows=5)
    arrow_out = tmp_path / "idx.feather"
    actindex.export(index, arrow_out)
    family = "residual_change/1"
    sql = f"""SELECT id, "{family}" AS v, valid FROM read_parquet('{out}') ORDER BY row"""
    code = textwrap.dedent(f"""
        import json, sys
        import duckdb, numpy as np, pandas as pd, pyarrow.feather as feather
        assert "actindex" not in sys.modules
        rows = duckdb.sql({sql!r}).fetchall()
        frame = pd.read_parquet({str(out)!r})
        exported = feather.read_table({str(arrow_out)!r})
        via_arrow = duckdb.sql('SELECT count(*) FROM exported WHERE valid').fetchall()[0][0]
        print(json.dumps({{"ids": [r[0] for r in rows], "first": rows[0][1], "valid": [r[2] for r in rows],
                           "pandas": frame["id"].tolist(), "record": json.loads(frame["record"][3]),
                           "arrow_valid": via_arrow}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["ids"] == got["pandas"] == index.reader.ids() and got["valid"] == index.reader.table.valid.tolist()
    np.testing.assert_array_equal(np.float32(got["first"]), index.reader.vectors(family, [0])[0])
    assert got["record"] == index.reader.records([3])[0] and got["arrow_valid"] == 22


def test_export_refuses_what_it_should(index, tmp_path):
    out = tmp_path / "x.parquet"
    actindex.export(index, out)
    with pytest.raises(ActindexError, match="exists; pass --overwrite"):
        actindex.export(index, out)
    assert actindex.export(index, out, overwrite=True).rows == 23
    with pytest.raises(ActindexError, match="inside the index"):
        actindex.export(index, index.root / "copy.parquet")
    with pytest.raises(ActindexError, match="has no vector family 'gradient'"):
        actindex.export(index, tmp_path / "y.parquet", families=["gradient"])
    with pytest.raises(ActindexError, match="--format: expected one of parquet, arrow"):
        actindex.export(index, tmp_path / "z.csv", format="csv")
    assert not (tmp_path / "y.parquet").exists() and not list(tmp_path.glob(".*.tmp"))


def test_cli_export(index, tmp_path):
    out = tmp_path / "cli.arrow"
    res = CliRunner().invoke(main, ["export", "--index", str(index.root), "--out", str(out), "--families",
                                    "residual_change/1", "--block-rows", "8"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"wrote {out} (arrow, 23 rows, 1 vector families")
    bad = CliRunner().invoke(main, ["export", "--index", str(index.root), "--out", str(out)])
    assert bad.exit_code == 2 and "exists; pass --overwrite" in bad.output
