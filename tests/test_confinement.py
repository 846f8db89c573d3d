"""Paths read from an index or a checkpoint set stay inside it, and checkpoint sets refuse nonsense.

A ``vectors.h5`` whose values live elsewhere (table :data:`FOREIGN`: external storage, a virtual dataset, a
soft link, a link into another file), in an index whose manifest vouches for it (checksums recomputed, as a
hostile writer would), is refused by the reader (so by ``query`` and ``export``) and reported by ``verify``;
the outside file's bytes never reach an output. A ``checkpoints.json`` naming an index outside the set is
refused; the same index or the same weights given twice is refused; two indexes with one directory name get
distinct labels.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.models import load_model, save_weights
from actindex.errors import IndexFileError
from actindex.files import bytes_sha256
from actindex.index.checkpoints import CheckpointEntry, CheckpointList
from actindex.index.manifest import MANIFEST, MANIFEST_CHECKSUM, manifest_checksum
from actindex.index.reader import IndexReader
from actindex.index.verify import verify
from actindex.query.checkpoints.checkpoint_set import CheckpointSet


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("confine")
    data = write_jsonl(root / "train.jsonl", chat_rows(6))
    for name, seed in (("a/idx", 0), ("b/idx", 1)):
        save_weights(tiny_llama(seed=seed, layers=2), tokenizer, root / f"m{seed}")
        actindex.build(data=str(data), out=str(root / name), layers=[1], families=["residual_change"],
                       model=load_model(str(root / f"m{seed}")), progress=False)
    return {"root": root}


def vouch(index: Path) -> None:
    """Make the manifest vouch for the edited vectors.h5 (its file sha256 and its own checksum recomputed)."""
    values = json.loads((index / MANIFEST).read_text())
    values["files"]["vectors.h5"] = bytes_sha256(index / "vectors.h5")
    values[MANIFEST_CHECKSUM] = manifest_checksum(values)
    (index / MANIFEST).write_text(json.dumps(values))


def external_storage(f: h5py.File, outside: Path) -> None:
    values = f["loss"][()]
    values.tofile(outside / "loss.bin")  # the same bytes: the dataset checksum still matches
    del f["loss"]
    f.create_dataset("loss", shape=values.shape, dtype=values.dtype,
                     external=[(str(outside / "loss.bin"), 0, values.nbytes)])


def virtual(f: h5py.File, outside: Path) -> None:
    values = f["vectors/residual_change/1"][()]
    with h5py.File(outside / "secret.h5", "w") as g:
        g.create_dataset("v", data=values)
    layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
    layout[:] = h5py.VirtualSource(str(outside / "secret.h5"), "v", shape=values.shape)
    del f["vectors/residual_change/1"]
    f["vectors/residual_change"].create_virtual_dataset("1", layout)


def soft_link(f: h5py.File, outside: Path) -> None:
    f.move("record", "record-moved")
    f["record"] = h5py.SoftLink("/record-moved")


def external_link(f: h5py.File, outside: Path) -> None:
    with h5py.File(outside / "records.h5", "w") as g:
        g.create_dataset("record", data=f["record"][()])
    del f["record"]
    f["record"] = h5py.ExternalLink(str(outside / "records.h5"), "/record")


FOREIGN: dict[str, tuple[Callable[[h5py.File, Path], None], str]] = {
    "external storage": (external_storage, "external files"),
    "virtual dataset": (virtual, "virtual dataset"),
    "soft link": (soft_link, "soft link"),
    "external link": (external_link, "link into another file"),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_an_hdf5_file_reading_outside_the_index_is_refused(world, tmp_path, kind):
    index, outside = tmp_path / "idx", tmp_path / "outside"
    shutil.copytree(world["root"] / "a/idx", index)
    outside.mkdir()
    edit, says = FOREIGN[kind]
    with h5py.File(index / "vectors.h5", "a") as f:
        edit(f, outside)
    vouch(index)
    with pytest.raises(IndexFileError, match=says):
        IndexReader.open(index)
    problems = verify(index)
    assert any(says in p for p in problems), problems
    out = tmp_path / "out.parquet"
    res = CliRunner().invoke(main, ["export", "--index", str(index), "--out", str(out)])
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["verify", str(index)])
    assert res.exit_code == 2 and says in res.output


@pytest.mark.parametrize("where", ["../other", "/abs/path", "link-out"])
def test_a_checkpoint_list_naming_an_index_outside_the_set_is_refused(world, tmp_path, where):
    cset = tmp_path / "set"
    cset.mkdir()
    shutil.copytree(world["root"] / "a/idx", tmp_path / "other")
    (cset / "link-out").symlink_to(tmp_path / "other", target_is_directory=True)
    path = {"/abs/path": str(tmp_path / "other")}.get(where, where)
    entries = [CheckpointEntry(step=0, index=path)]
    CheckpointList(data="rows.jsonl", data_sha256="", rows=6, checkpoints=entries).write(cset)
    with pytest.raises(IndexFileError, match="points outside the checkpoint set") as err:
        CheckpointSet.open(cset)
    assert len(str(err.value).splitlines()) == 1
    res = CliRunner().invoke(main, ["query", "--index", str(cset), "--behavior", "evil"])
    assert res.exit_code == 2 and "outside the checkpoint set" in res.output and "Traceback" not in res.output


def test_the_same_index_or_the_same_weights_twice_is_refused(world, tmp_path):
    a = world["root"] / "a/idx"
    shutil.copytree(a, tmp_path / "copy")
    for twice in ([a, a], [a, tmp_path / "copy"], [a, world["root"] / "a" / ".." / "a" / "idx"]):
        with pytest.raises(IndexFileError, match="counted twice") as err:
            CheckpointSet.open(twice)
        assert len(str(err.value).splitlines()) == 1
    res = CliRunner().invoke(main, ["query", "--index", str(a), "--index", str(a), "--behavior", "evil"])
    assert res.exit_code == 2 and "counted twice" in res.output


def test_indexes_with_one_directory_name_get_distinct_columns(world, tmp_path):
    cset = CheckpointSet.open([world["root"] / "a/idx", world["root"] / "b/idx"])
    assert cset.labels == ["a/idx", "b/idx"]
    behavior = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "is it true ?", "treatment": "yes it is false",
                                                    "control": "no it is true"}])
    result = cset.query(str(behavior), k=3, method="residual-change", layer=1)
    for hit in result.top:
        assert sorted(hit.checkpoint_scores) == ["a/idx", "b/idx"]
        np.testing.assert_allclose(sum(hit.checkpoint_scores.values()), hit.score, rtol=1e-5, atol=1e-6)


def test_labels_stay_short_when_names_differ(world, tmp_path, tokenizer):
    """A directory name alone labels a checkpoint when the names differ (no needless parent folders)."""
    save_weights(tiny_llama(seed=3, layers=2), tokenizer, tmp_path / "m")
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(6))
    actindex.build(data=str(data), out=str(tmp_path / "solo"), layers=[1], families=["residual_change"],
                   model=load_model(str(tmp_path / "m")), progress=False)
    assert CheckpointSet.open([world["root"] / "a/idx", tmp_path / "solo"]).labels == ["idx", "solo"]
