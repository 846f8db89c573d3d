"""Hostile and unlucky conditions around an index: every case ends in one ``error: ...`` line and exit
status 2 (or a clean verify report), nothing outside the index changes, and nothing is lost.

* a FAISS file swapped in from another index, single flipped bytes (FAISS and vectors.h5), an edited
  manifest: ``verify`` reports them and a query refuses them;
* temporary files, the lock and index folders planted as links to files outside: never written through,
  never printed;
* a full disk before and during a build: one line, no temporary file left, the rerun resumes;
* missing, garbage or truncated files, an ``--out`` that is a file, a negative ``--top-k``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_index, chat_rows, write_jsonl

import actindex
from actindex import files as files_module
from actindex.api import save_query_vector
from actindex.cli import main
from actindex.core.models import load_model
from actindex.errors import IndexFileError
from actindex.index.config import BuildConfig
from actindex.index.lock import LOCK
from actindex.index.manifest import MANIFEST, VECTORS
from actindex.index.verify import verify
from actindex.index.writer import META_FIELDS

FAMILY = "residual_change/1"


def build(data: Path, out: Path, model_dir: Path, **kwargs) -> Path:
    kwargs = {"faiss_factory": "Flat", **kwargs}  # a FAISS file per family, for the attacks on FAISS files
    actindex.build(data=str(data), out=str(out), layers=[1], model=load_model(str(model_dir)), progress=False,
                   **kwargs)
    return out


@pytest.fixture()
def index(tmp_path: Path, model_dir: Path) -> Path:
    return build(write_jsonl(tmp_path / "train.jsonl", chat_rows(24)), tmp_path / "idx", model_dir)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Path -> sha256 (or link target) of everything under ``root``, leaving out ``skip``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_symlink():
            out[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def query_vector_file(index: Path, tmp_path: Path) -> Path:
    """A saved query vector (so a query needs no model pass)."""
    path = tmp_path / "q.npz"
    dim = json.loads((index / MANIFEST).read_text())["families"][FAMILY]["dim"]
    vector = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    save_query_vector(path, vector, {"behavior": "saved", "method": "residual-change", "family": FAMILY})
    return path


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    """The result is exit status 2 with exactly one ``error:`` line (no traceback) holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def query(index: Path, tmp_path: Path):
    return cli("query", "--index", index, "--query-vector", query_vector_file(index, tmp_path), "--format", "json")


def faiss_path(index: Path, family: str = FAMILY) -> Path:
    return index / json.loads((index / MANIFEST).read_text())["families"][family]["faiss"]


def as_format_1(index: Path) -> None:
    """Rewrite the manifest as the previous release wrote it: format 1, no file or manifest checksums."""
    manifest = json.loads((index / MANIFEST).read_text())
    for key in ("files", "manifest_sha256", "versions"):
        manifest.pop(key, None)
    manifest["format_version"] = 1
    (index / MANIFEST).write_text(json.dumps(manifest, indent=2))


# ---- FAISS files and the manifest ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", [2, 1])
def test_a_faiss_file_from_another_index_is_refused(tmp_path, model_dir, index, fmt):
    other = build(write_jsonl(tmp_path / "other.jsonl", chat_rows(24, seed=7)), tmp_path / "other", model_dir)
    shutil.copyfile(faiss_path(other), faiss_path(index))
    if fmt == 1:
        as_format_1(index)
    assert verify(index) == [f"{faiss_path(index)}: " + (
        "checksum mismatch (sha256 differs from the manifest's): the file was replaced or damaged" if fmt == 2 else
        f"24 row(s) disagree with the stored vectors of {FAMILY!r} (copied from another index, or damaged)")]
    line = one_line_error(query(index, tmp_path), str(faiss_path(index)), "actindex verify")
    assert "checksum mismatch" in line if fmt == 2 else "disagrees with vectors.h5" in line


@pytest.mark.parametrize("name", ["faiss", VECTORS])
def test_every_single_byte_flip_is_caught_by_verify_and_query(tmp_path, index, name):
    """61 flips spread over the file: verify reports each one, and a query refuses each one (both files are
    small enough to be hashed when a query opens them)."""
    path = faiss_path(index) if name == "faiss" else index / VECTORS
    original = path.read_bytes()
    vector_file = query_vector_file(index, tmp_path)
    clean = cli("query", "--index", index, "--query-vector", vector_file, "--format", "json")
    assert clean.exit_code == 0, clean.output
    caught_verify = caught_query = 0
    offsets = np.linspace(0, len(original) - 1, 61).astype(int)
    for offset in offsets:
        flipped = bytearray(original)
        flipped[offset] ^= 0x5A
        path.write_bytes(bytes(flipped))
        caught_verify += bool(verify(index))
        res = cli("query", "--index", index, "--query-vector", vector_file, "--format", "json")
        if res.exit_code == 2:
            one_line_error(res)
            caught_query += 1
        else:  # never a silently different answer
            assert res.exit_code == 0 and res.output == clean.output, (offset, res.output[-300:])
    path.write_bytes(original)
    assert verify(index) == []
    assert caught_verify == len(offsets) and caught_query == len(offsets)


@pytest.mark.parametrize("edit", ["rows", "layers", "valid_rows", "dim"])
def test_an_edited_manifest_is_caught(tmp_path, index, edit):
    manifest = json.loads((index / MANIFEST).read_text())
    if edit == "rows":
        manifest["rows"] += 5
    elif edit == "layers":
        manifest["layers"] = [1, 2]
    elif edit == "valid_rows":
        manifest["valid_rows"] -= 1
    else:
        manifest["families"][FAMILY]["dim"] += 1
    (index / MANIFEST).write_text(json.dumps(manifest, indent=2))
    assert any("manifest was edited or damaged" in p for p in verify(index))
    one_line_error(query(index, tmp_path), "manifest was edited or damaged")


@pytest.mark.parametrize("edit", ["rows", "layers"])
def test_an_edited_format_1_manifest_is_caught_without_its_checksum(tmp_path, index, edit, model_dir):
    """A format-1 manifest carries no checksum of its own: its contradictions are found instead, and the
    ensemble query (which used to fail with IndexError) refuses in one line."""
    as_format_1(index)
    manifest = json.loads((index / MANIFEST).read_text())
    if edit == "rows":
        manifest["rows"] += 5
        reported = "dataset 'ids' has 24 rows, the manifest says 29", "holds 24 rows, the manifest says 29"
    else:
        manifest["layers"] = [1, 3]
        reported = ("layer 3 is listed but no family holds vectors for it",) * 2
    (index / MANIFEST).write_text(json.dumps(manifest, indent=2))
    assert any(reported[0] in p for p in verify(index)), verify(index)
    behaviour = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "is it true ?", "treatment": "yes", "control": "no"}])
    one_line_error(cli("query", "--index", index, "--behavior", behaviour), reported[1])


@pytest.mark.parametrize("damage", ["missing faiss", "garbage faiss", "truncated vectors", "garbage vectors"])
def test_damaged_files_give_one_line(tmp_path, index, damage):
    if damage == "missing faiss":
        faiss_path(index).unlink()
    elif damage == "garbage faiss":
        faiss_path(index).write_bytes(b"not a faiss index at all")
    elif damage == "truncated vectors":
        os.truncate(index / VECTORS, (index / VECTORS).stat().st_size // 2)
    else:
        (index / VECTORS).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert verify(index)
    one_line_error(query(index, tmp_path))


# ---- writes through links and locks --------------------------------------------------------------


def test_planted_temp_links_are_never_written_through(tmp_path, index, model_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    targets = {name: outside / name for name in ("manifest", "vectors")}
    for target in targets.values():
        target.write_text("precious\n")
    (index / "manifest.json.tmp").symlink_to(targets["manifest"])
    (index / "vectors.h5.tmp").symlink_to(targets["vectors"])
    before = snapshot(outside)
    res = cli("fit-curvature", "--index", index, "--samples", "8", "--quiet")
    assert res.exit_code == 0, res.output
    assert snapshot(outside) == before
    for name in (MANIFEST, VECTORS):
        assert (index / name).is_file() and not (index / name).is_symlink()
    assert verify(index) == []
    assert "ekfac" in json.loads((index / MANIFEST).read_text())["curvature"]


@pytest.mark.parametrize("where", ["faiss", ".build"])
def test_a_planted_folder_link_is_refused(tmp_path, model_dir, where):
    """--overwrite and a fresh build never write into a folder link that points outside the index."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    out = tmp_path / "idx"
    out.mkdir()
    (out / where).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(24))
    if where == "faiss":  # removed as part of the old index by --overwrite: the link goes, its target stays
        build(data, out, model_dir, overwrite=True)
        assert not (out / "faiss").is_symlink() and verify(out) == []
    else:
        with pytest.raises(IndexFileError, match="is a link or a file where actindex keeps a directory"):
            build(data, out, model_dir)
    assert snapshot(outside) == before


def test_a_lock_that_is_a_link_is_refused_without_reading_it(tmp_path, model_dir):
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=do-not-print-me")
    out = tmp_path / "idx"
    out.mkdir()
    (out / LOCK).symlink_to(secret)
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    line = one_line_error(cli("build", "--data", data, "--out", out, "--model", model_dir, "--layers", "1",
                              "--quiet"), "is a link or a directory, not a lock actindex wrote")
    assert "do-not-print-me" not in line
    assert secret.read_text() == "API_KEY=do-not-print-me" and (out / LOCK).is_symlink()


@pytest.mark.parametrize("content", ["", "garbage that is not an owner\n", "\x00\xff"])
def test_a_lock_without_an_owner_is_stale(tmp_path, model_dir, content):
    """An empty lock (what a full disk left behind before) or one that names no process is taken over, and
    its content is never printed."""
    out = tmp_path / "idx"
    out.mkdir()
    (out / LOCK).write_text(content)
    build(write_jsonl(tmp_path / "train.jsonl", chat_rows(8)), out, model_dir)
    assert not (out / LOCK).exists() and verify(out) == []


# ---- a full disk ----------------------------------------------------------------------------------


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK)


def test_a_full_disk_is_refused_before_writing_and_the_rerun_completes(tmp_path, model_dir, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(24))
    clean = build(data, tmp_path / "clean", model_dir)
    out = tmp_path / "idx"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files_module.shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    before = snapshot(tmp_path, skip=out)
    command = ["build", "--data", data, "--out", out, "--model", model_dir, "--layers", "1", "--quiet"]
    one_line_error(cli(*command), "not enough disk space", "rerun the same command")
    assert leftovers(out) == [] and snapshot(tmp_path, skip=out) == before
    monkeypatch.undo()
    assert cli(*command).exit_code == 0
    assert_same_index(clean, out)


def test_a_disk_that_fills_mid_build_leaves_no_temp_file_and_resumes(tmp_path, model_dir, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(24))
    clean = build(data, tmp_path / "clean", model_dir)
    out = tmp_path / "idx"
    real = h5py.Group.create_dataset
    calls = {"n": 0}
    families = len(BuildConfig(data="-", out="-").family_kinds())  # one layer: one dataset per default family

    def filling(self, name, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > len(META_FIELDS) + families:  # the first part (the per-row datasets + families) is whole
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", filling)
    res = cli("build", "--data", data, "--out", out, "--model", model_dir, "--layers", "1", "--part-size", "8",
              "--quiet")
    one_line_error(res, "the disk is full", "rerun the same command")
    assert leftovers(out) == []
    assert len(list((out / ".build" / "parts").glob("part-*.h5"))) == 1  # the committed part survives
    monkeypatch.undo()
    res = cli("build", "--data", data, "--out", out, "--model", model_dir, "--layers", "1", "--part-size", "8",
              "--quiet")
    assert res.exit_code == 0, res.output
    assert_same_index(clean, out)


def test_stale_temp_files_are_removed_by_the_next_writer(tmp_path, model_dir, index):
    """A killed writer's temporary file (this release's name or the previous one's) does not outlive the next
    write, so a full disk it caused clears."""
    stale = [index / ".vectors.h5.abc123.tmp", index / "vectors.h5.tmp", index / "faiss" / ".x.faiss.zz.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    res = cli("fit-curvature", "--index", index, "--samples", "4", "--quiet")
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in stale)


# ---- bad arguments ----------------------------------------------------------------------------------


def test_build_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path):
    out = tmp_path / "index.json"
    out.write_text("{}")
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    one_line_error(cli("build", "--data", data, "--out", out, "--model", "/nonexistent/model", "--quiet"),
                   f"{out} is a file, not an index directory")
    assert out.read_text() == "{}"


def test_build_over_a_complete_index_is_refused_before_the_model_loads(tmp_path, index):
    data = write_jsonl(tmp_path / "more.jsonl", chat_rows(4))
    one_line_error(cli("build", "--data", data, "--out", index, "--model", "/nonexistent/model", "--quiet"),
                   "already holds a complete index; pass --overwrite")


@pytest.mark.parametrize("option", ["--top-k", "--bottom-k"])
def test_negative_counts_are_refused(tmp_path, index, option):
    res = cli("query", "--index", index, "--query-vector", query_vector_file(index, tmp_path), option, "-5")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"Invalid value for '{option}'" in res.output
