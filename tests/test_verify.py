"""`actindex verify`: a fresh index passes; edited, truncated or escaping files are reported, never raised.
Also the write lock: a live writer is refused, a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import actindex
from actindex.cli import main
from actindex.errors import IndexFileError
from actindex.files import bytes_sha256
from actindex.index import verify as verify_module
from actindex.index.lock import LOCK
from actindex.index.manifest import MANIFEST, VECTORS, Manifest
from actindex.index.manifest import write_manifest as sign_manifest
from actindex.index.verify import verify
from actindex.index.writer import dataset_checksum


def build_index(out: Path, train_file: Path, llama) -> dict:
    """An index whose families each have a FAISS copy (``Flat``), so the FAISS checks have files to check, in
    float32 (the full-width layout), so a NaN can be written into it."""
    return actindex.build(data=str(train_file), out=str(out), layers=[1], model=llama, progress=False,
                          faiss_factory="Flat", full_width=True)


@pytest.fixture()
def index(tmp_path: Path, train_file: Path, llama) -> Path:
    out = tmp_path / "idx"
    build_index(out, train_file, llama)
    return out


def manifest_of(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def write_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))


def first_family(root: Path) -> str:
    return sorted(manifest_of(root)["families"])[0]


def data_offset(path: Path, name: str) -> int:
    """File offset of the first byte of a dataset's raw data (contiguous or chunked)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_offset()
        return offset if offset is not None else ds.id.get_chunk_info(0).byte_offset


def rewrite(root: Path, name: str, change) -> None:
    """Change a dataset in place and record its new checksums (the dataset's, the file's, the manifest's own),
    so that only the change itself is wrong."""
    with h5py.File(root / VECTORS, "r+") as f:
        change(f[name])
        digest = dataset_checksum(f[name][()])
    manifest = manifest_of(root)
    manifest["checksums"][name] = digest
    manifest["files"][VECTORS] = bytes_sha256(root / VECTORS)
    sign_manifest(root, Manifest.from_dict(manifest))


def test_fresh_index_verifies(index: Path) -> None:
    assert verify(index) == []


def test_blockwise_checksum_equals_dataset_checksum(index: Path, monkeypatch) -> None:
    monkeypatch.setattr(verify_module, "BLOCK_BYTES", 100)  # forces the streaming path on every dataset
    assert verify(index) == []


def test_flipped_byte_in_vectors_is_a_checksum_mismatch(index: Path) -> None:
    name = f"vectors/{first_family(index)}"
    path = index / VECTORS
    offset = data_offset(path, name) + 1  # a low mantissa byte of the first float: stays finite
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x01]))
    problems = verify(index)
    assert len(problems) == 1, problems
    assert f"dataset {name!r} checksum mismatch" in problems[0]


def test_flipped_byte_in_metadata_is_a_checksum_mismatch(index: Path) -> None:
    path = index / VECTORS
    offset = data_offset(path, "n_tokens")
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x40]))
    problems = verify(index)
    assert any("dataset 'n_tokens' checksum mismatch" in p for p in problems), problems


def test_truncated_vectors_file_is_reported(index: Path) -> None:
    path = index / VECTORS
    os.truncate(path, path.stat().st_size // 2)
    problems = verify(index)
    assert problems and all(str(path) in p for p in problems), problems


def test_garbage_vectors_file_is_reported(index: Path) -> None:
    (index / VECTORS).write_bytes(b"not an HDF5 file")
    problems = verify(index)
    assert len(problems) == 1 and "cannot be opened as HDF5" in problems[0], problems


def test_manifest_path_outside_the_directory_is_reported(index: Path) -> None:
    manifest = manifest_of(index)
    family = first_family(index)
    manifest["families"][family]["faiss"] = "../x.faiss"
    write_manifest(index, manifest)
    (index.parent / "x.faiss").write_bytes((index / "faiss" / os.listdir(index / "faiss")[0]).read_bytes())
    problems = verify(index)
    assert any("'../x.faiss' points outside the index directory" in p for p in problems), problems


def test_missing_and_corrupt_faiss_files_are_reported(index: Path) -> None:
    families = manifest_of(index)["families"]
    first, second = sorted(families)[:2]
    (index / families[first]["faiss"]).unlink()
    (index / families[second]["faiss"]).write_bytes(b"garbage")
    problems = verify(index)
    assert any(f"family {first!r} is missing" in p for p in problems), problems
    assert any("cannot be read as a FAISS index" in p for p in problems), problems


def test_nan_in_vectors_is_reported(index: Path) -> None:
    family = first_family(index)

    def poison(ds) -> None:
        ds[0, 0] = np.nan
        ds[1, 1] = np.inf

    rewrite(index, f"vectors/{family}", poison)
    assert verify(index) == [f"{index / VECTORS}: family {family!r} holds 2 NaN/inf values"]


def test_faiss_row_count_must_match_valid_rows(index: Path) -> None:
    def invalidate(ds) -> None:
        ds[0] = False

    valid_rows = manifest_of(index)["valid_rows"]
    rewrite(index, "valid", invalidate)
    problems = verify(index)
    assert any(f"says {valid_rows} valid rows, but vectors.h5 marks {valid_rows - 1} valid" in p for p in problems)
    n_faiss = len(manifest_of(index)["families"])
    assert sum("FAISS index holds" in p for p in problems) == n_faiss, problems


def test_row_count_mismatch_is_reported(index: Path) -> None:
    manifest = manifest_of(index)
    manifest["rows"] += 1
    write_manifest(index, manifest)
    problems = verify(index)
    assert any("dataset 'ids' has 24 rows, the manifest says 25" in p for p in problems), problems


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", '{"format_version": 99}', '{"format_version": 1}'])
def test_broken_manifest_is_reported(index: Path, text: str) -> None:
    (index / MANIFEST).write_text(text)
    problems = verify(index)
    assert len(problems) == 1 and str(index) in problems[0], problems


def test_missing_manifest_and_directory(tmp_path: Path) -> None:
    assert verify(tmp_path / "nothing") == [f"{tmp_path / 'nothing'}: no such directory"]
    assert "not an actindex index" in verify(tmp_path)[0]


def test_cli_verify(index: Path) -> None:
    runner = CliRunner()
    n_families = len(manifest_of(index)["families"])
    ok = runner.invoke(main, ["verify", str(index)])
    assert ok.exit_code == 0, ok.output
    assert ok.output == (f"ok: {index} (24 rows, {n_families} families): manifest, vectors.h5 checksums and FAISS "
                         "checksums match\n")

    os.truncate(index / VECTORS, 100)
    bad = runner.invoke(main, ["verify", str(index)])
    assert bad.exit_code == 2, bad.output
    assert "Traceback" not in bad.output
    assert str(index / VECTORS) in bad.output
    assert bad.output.splitlines()[-1].startswith("error: ")


def test_live_lock_refuses_a_second_writer(tmp_path: Path, train_file: Path, llama) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    owner = f"{os.getpid()}@{socket.gethostname()}"
    (out / LOCK).write_text(owner)
    with pytest.raises(IndexFileError) as info:
        build_index(out, train_file, llama)
    assert str(out / LOCK) in str(info.value) and owner in str(info.value)
    assert (out / LOCK).read_text() == owner  # someone else's lock is left alone
    assert not (out / MANIFEST).exists()


def test_stale_lock_is_taken_over(tmp_path: Path, train_file: Path, llama) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / LOCK).write_text(f"{dead.pid}@{socket.gethostname()}")
    manifest = build_index(out, train_file, llama)
    assert manifest.rows == 24
    assert not (out / LOCK).exists()
    assert verify(out) == []
