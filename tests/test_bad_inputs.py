"""Every bad input in tests/data/bad fails with one exact, clear DataError, and the CLI turns it into
one ``error: ...`` line with exit status 2 before writing anything.

``tests/data/bad/expected.json`` maps each file name to its message, with ``{path}`` standing for
the file's path. ``pairs-*`` files are behaviour (contrastive pairs) files, read by ``load_pairs``;
the others are training files, read by ``load_rows``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from actindex.cli import main
from actindex.core.readers import load_rows
from actindex.errors import DataError
from actindex.query.behaviors import load_pairs

BAD = Path(__file__).parent / "data" / "bad"
EXPECTED: dict[str, str] = json.loads((BAD / "expected.json").read_text(encoding="utf-8"))
TRAINING = sorted(name for name in EXPECTED if not name.startswith("pairs-"))
BEHAVIOUR = sorted(name for name in EXPECTED if name.startswith("pairs-"))


def expected_message(name: str) -> str:
    return EXPECTED[name].replace("{path}", str(BAD / name))


def test_corpus_is_complete() -> None:
    files = {p.name for p in BAD.iterdir() if p.name != "expected.json"}
    assert files == set(EXPECTED), "every bad file needs an expected message, and every message a file"
    assert len(TRAINING) >= 30 and len(BEHAVIOUR) >= 4


@pytest.mark.parametrize("name", TRAINING)
def test_load_rows_message(name: str) -> None:
    with pytest.raises(DataError) as info:
        load_rows(str(BAD / name))
    assert str(info.value) == expected_message(name)


@pytest.mark.parametrize("name", BEHAVIOUR)
def test_load_pairs_message(name: str) -> None:
    with pytest.raises(DataError) as info:
        load_pairs(BAD / name)
    assert str(info.value) == expected_message(name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_rows(str(tmp_path / "nope.jsonl"))
    assert str(info.value) == f"{tmp_path / 'nope.jsonl'}: file not found"


@pytest.mark.parametrize("name", TRAINING)
def test_cli_build_rejects(name: str, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    args = ["build", "--data", str(BAD / name), "--out", str(out), "--model", "/nonexistent", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.splitlines() == [f"error: {expected_message(name)}"]
    assert not out.exists() or not any(out.iterdir())
