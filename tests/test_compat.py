"""Indexes written by earlier releases keep working: ``tests/data/index-v1`` was built by the release of
2026-11-29 (format 1: no file or manifest checksums). It opens, searches, verifies (its FAISS files by
decoding every row) and prints its info; an edit or a swapped FAISS file is still caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import actindex
from actindex.cli import main
from actindex.errors import IndexFileError
from actindex.index.verify import verify

FIXTURE = Path(__file__).parent / "data" / "index-v1"


@pytest.fixture()
def old_index(tmp_path: Path) -> Path:
    """A writable copy of the fixture (tests never touch the fixture itself)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "index-v1"))


def test_a_format_1_index_opens_searches_and_verifies(old_index):
    idx = actindex.Index.open(old_index)
    assert idx.manifest.format_version == 1 and len(idx) == 12 and idx.reader.layers == [1, 2]
    for family in idx.families:
        stored = idx.reader.vectors(family)
        for row in (0, 5, 11):
            scores, rows = idx.search(stored[row], k=3, family=family)
            assert row in rows[:3].tolist() and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert idx.reader.records([2])[0]["id"] == "r2"
    assert verify(old_index) == []
    res = CliRunner().invoke(main, ["verify", str(old_index)])
    assert res.exit_code == 0 and "FAISS rows (decoded) match" in res.output, res.output
    res = CliRunner().invoke(main, ["info", str(old_index)])
    assert res.exit_code == 0 and "residual_change/1" in res.output, res.output


def test_a_swapped_faiss_file_in_a_format_1_index_is_caught(old_index):
    faiss_dir = old_index / "faiss"
    a, b = faiss_dir / "residual_change-1.faiss", faiss_dir / "residual_change-2.faiss"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    problems = verify(old_index)
    assert len(problems) == 2 and all("disagree with the stored vectors" in p for p in problems), problems
    idx = actindex.Index.open(old_index)
    with pytest.raises(IndexFileError, match="disagrees with vectors.h5"):
        idx.search(np.ones(idx.families["residual_change/1"].dim, np.float32), k=3, family="residual_change/1")


def test_a_contradictory_format_1_manifest_is_refused_in_one_line(old_index):
    manifest = json.loads((old_index / "manifest.json").read_text())
    manifest["rows"] = 40
    (old_index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="holds 12 rows, the manifest says 40"):
        actindex.Index.open(old_index)
