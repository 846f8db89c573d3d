"""The file layer: written files get the umask's mode; a staged directory replaces the old one whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import chat_rows, tiny_llama, write_jsonl

import actindex
from actindex.core.models import wrap_model
from actindex.files import atomic_write_text, staged_directory


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    with staged_directory(tmp_path / "d") as staging:
        (staging / "f").write_text("y")
    assert modes(tmp_path) == {mode}
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask


def test_an_index_is_written_with_the_umask_mode(tmp_path, umask, tokenizer):
    umask(0o022)
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(6))
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1], families=["residual_change"],
                   model=wrap_model(tiny_llama(layers=2), tokenizer, "tiny"), progress=False)
    assert modes(tmp_path / "idx") == {0o644}


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    with staged_directory(tmp_path / "out") as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folder swapped out and removed
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "out") as staging:
        (staging / "half").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
