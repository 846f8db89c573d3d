"""Check a finished index directory against its manifest (``actindex verify DIR``).

:func:`verify` re-reads everything the manifest promises and returns the problems it finds, one
line each (an empty list means the index is intact). It covers every file a query reads:

* ``manifest.json`` exists, parses, is an object of a supported format version, and (format 2) its
  own checksum matches, so an edited row count, layer list or family is caught; its structure is
  consistent (layers inside the model, every per-layer family at a listed layer);
* every file it names (the FAISS indexes) stays inside the directory and exists;
* ``vectors.h5`` opens, and the sha256 of every dataset matches ``manifest["checksums"]``;
* every metadata dataset and vector family has ``manifest["rows"]`` rows (families: ``(rows, dim)``);
* no stored vector holds NaN or inf;
* ``vectors.h5`` and every other HDF5 file the manifest lists (curvature factors) hold their own values: no
  external storage, virtual dataset, soft or external link reads a file outside the index
  (:mod:`actindex.index.hdf5`), and each other listed file stays inside the directory and matches its sha256;
* each FAISS file's sha256 matches the manifest (format 2), it reads as an index of the family's
  dimension holding exactly the valid rows (count and ids), and, for format 1 indexes that record no
  FAISS checksum, every row it holds decodes to the row's stored vector (a file copied in from
  another index, or a flipped byte, is caught).

A truncated or edited file is reported, never raised: ``verify`` does not throw.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from actindex.errors import IndexFileError
from actindex.files import bytes_sha256, inside
from actindex.index.hdf5 import foreign_problem
from actindex.index.manifest import (
    MANIFEST,
    READABLE_FORMATS,
    VECTORS,
    manifest_problem,
    read_manifest,
    structure_problem,
)
from actindex.index.precision import DISK_DTYPES, StoredRows, disk_shape, has_scales, scale_key
from actindex.index.search import STORE
from actindex.index.writer import META_FIELDS, OPTIONAL_FIELDS, dataset_checksum, update_checksum

#: bytes read at a time while hashing a large dataset (its checksum equals ``dataset_checksum``)
BLOCK_BYTES = 64 << 20
#: strings (ids, content hashes, records) hashed at a time
STRING_ROWS = 16384


def verify(index_dir: str | os.PathLike) -> list[str]:
    """Problems found in the index at ``index_dir``; ``[]`` when it is complete and intact."""
    root = Path(index_dir)
    try:
        return _verify(root)
    except Exception as err:  # noqa: BLE001 - verify reports, it never crashes
        return [f"{root}: verification stopped by an unexpected error ({type(err).__name__}: {_first_line(err)})"]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _load_manifest(root: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The manifest (``None`` if unusable) and the problems found in it: an edited format-2 manifest is
    reported and still read, so the rest of the index is checked against what it says."""
    path = root / MANIFEST
    if not root.is_dir():
        return None, [f"{root}: no such directory"]
    if not path.is_file():
        try:
            read_manifest(root)  # raises the usual message (unfinished build / not an index)
        except IndexFileError as err:
            return None, [str(err)]
        return None, [f"{path}: missing"]
    found = manifest_problem(path)
    if isinstance(found, dict):
        return found, []
    try:  # only the checksum failed: report it, keep checking
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None, [found]
    if isinstance(manifest, dict) and manifest.get("format_version") in READABLE_FORMATS:
        return manifest, [found]
    return None, [found]


def _families(manifest: dict[str, Any], path: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    families = manifest.get("families")
    if not isinstance(families, dict):
        problems.append(f"{path}: 'families' must be an object")
        return {}
    good = {}
    for name, fam in families.items():
        if not isinstance(fam, dict) or not isinstance(fam.get("dim"), int) or isinstance(fam.get("dim"), bool):
            problems.append(f"{path}: family {name!r} has no integer 'dim'")
        elif not isinstance(fam.get("faiss"), str):
            problems.append(f"{path}: family {name!r} has no 'faiss' file name")
        else:
            good[name] = fam
    return good


def _verify(root: Path) -> list[str]:
    manifest, problems = _load_manifest(root)
    if manifest is None:
        return problems or [f"{root}: unreadable manifest"]
    mpath = root / MANIFEST
    rows = manifest.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return problems + [f"{mpath}: 'rows' must be a non-negative integer, got {rows!r}"]
    structure = structure_problem(manifest)
    if structure:
        problems.append(f"{mpath}: {structure}")
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        problems.append(f"{mpath}: 'checksums' must be an object of sha256 strings")
        checksums = {}
    families = _families(manifest, mpath, problems)

    faiss_paths: dict[str, Path] = {}
    for name, fam in families.items():
        if fam.get("faiss_factory") == STORE and not fam["faiss"]:  # no copy: searched from vectors.h5
            continue
        try:
            path = inside(root, fam["faiss"])
        except IndexFileError as err:
            problems.append(str(err))
            continue
        if not path.is_file():
            problems.append(f"{root}: FAISS index {fam['faiss']!r} of family {name!r} is missing")
            continue
        faiss_paths[name] = path

    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    if manifest.get("format_version", 1) >= 2 and not files:
        problems.append(f"{mpath}: has no file checksums ('files')")
    recorded = files.get(VECTORS)
    intact = recorded is not None and _sha256(root / VECTORS) == recorded
    # a file that is not byte for byte what was written is parsed in a child process: HDF5 can crash on one
    found, (checked, valid) = len(problems), (_check_vectors if intact else _isolated)(root, rows, families, checksums)
    problems += checked
    if recorded is not None and not intact and len(problems) == found:
        problems.append(f"{root / VECTORS}: checksum mismatch outside its datasets (HDF5 metadata or unused "
                        "bytes changed): the file was edited or damaged")
    if valid is not None:
        valid_rows = manifest.get("valid_rows")
        if valid_rows is not None and valid_rows != int(valid.sum()):
            problems.append(f"{mpath}: says {valid_rows} valid rows, but vectors.h5 marks {int(valid.sum())} valid")
    _check_faiss(root, families, faiss_paths, files, valid, problems)
    listed = {VECTORS, *(fam["faiss"] for fam in families.values())}
    _check_added(root, manifest, {name: sha for name, sha in files.items() if name not in listed}, problems)
    _check_reduction(root, manifest.get("reduction"), problems)
    return problems


def _check_added(root: Path, manifest: dict[str, Any], files: dict[str, str], problems: list[str]) -> None:
    """The other files the manifest lists (curvature factors, each named by its ``curvature`` entry): inside the
    index, present, their recorded sha256, their values their own."""
    import h5py

    curvature = manifest.get("curvature") if isinstance(manifest.get("curvature"), dict) else {}
    named = {c.get("file") for c in curvature.values() if isinstance(c, dict) and c.get("file")}
    for name in sorted(set(files) | named):
        try:
            path = inside(root, str(name))
        except IndexFileError as err:
            problems.append(str(err))
            continue
        if not path.is_file():
            problems.append(f"{path}: missing (the manifest lists it)")
            continue
        if name in files and _sha256(path) != files[name]:
            problems.append(f"{path}: checksum mismatch (sha256 differs from the manifest's): the file was replaced "
                            "or damaged")
            continue
        try:
            with h5py.File(path, "r") as f:
                foreign = foreign_problem(path, f)
        except Exception as err:  # noqa: BLE001 - a file that is not HDF5
            foreign = f"{path}: cannot be opened as HDF5 ({_first_line(err)})"
        if foreign:
            problems.append(foreign)


def _check_reduction(root: Path, reduction: Any, problems: list[str]) -> None:
    """The storage projection's matrix: present in ``vectors.h5`` with the recorded shape and sha256."""
    import h5py

    if not reduction:
        return
    try:
        with h5py.File(root / VECTORS, "r") as f:
            matrix = np.asarray(f[reduction["dataset"]][()], dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - missing dataset, damaged file
        problems.append(f"{root / VECTORS}: storage projection cannot be read ({_first_line(err)})")
        return
    if matrix.shape != (reduction.get("hidden"), reduction.get("width")):
        problems.append(f"{root / VECTORS}: storage projection has shape {matrix.shape}, the manifest says "
                        f"({reduction.get('hidden')}, {reduction.get('width')})")
    elif hashlib.sha256(matrix.tobytes()).hexdigest() != reduction.get("sha256"):
        problems.append(f"{root / VECTORS}: storage projection checksum mismatch: the file was changed or damaged")


def _isolated(
    root: Path, rows: int, families: dict[str, dict[str, Any]], checksums: dict[str, str]
) -> tuple[list[str], np.ndarray | None]:
    """:func:`_check_vectors` in a child process (spawned): a damaged file that crashes the HDF5 library is
    one more problem, not a crash of ``verify``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_check_vectors_into, args=(child, root, rows, families, checksums))
    process.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = None
    process.join()
    if result is None:
        return [f"{root / VECTORS}: cannot be read: the HDF5 library crashed on it (exit {process.exitcode}); "
                "the file is damaged"], None
    return result


def _check_vectors_into(pipe: Any, root: Path, rows: int, families: dict[str, dict[str, Any]],
                        checksums: dict[str, str]) -> None:
    pipe.send(_check_vectors(root, rows, families, checksums))
    pipe.close()


def _check_vectors(
    root: Path, rows: int, families: dict[str, dict[str, Any]], checksums: dict[str, str]
) -> tuple[list[str], np.ndarray | None]:
    """Checksums, row counts, shapes and finiteness of ``vectors.h5``: ``(problems, valid mask if sound)``."""
    problems: list[str] = []
    return problems, _scan_vectors(root, rows, families, checksums, problems)


def _scan_vectors(
    root: Path, rows: int, families: dict[str, dict[str, Any]], checksums: dict[str, str], problems: list[str]
) -> np.ndarray | None:
    import h5py

    path = root / VECTORS
    if not path.is_file():
        problems.append(f"{path}: missing")
        return None
    try:
        handle = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001 - truncated/garbled files raise OSError (or worse)
        problems.append(f"{path}: cannot be opened as HDF5 ({_first_line(err)})")
        return None
    valid = None
    with handle as f:
        foreign = foreign_problem(path, f)
        if foreign:
            problems.append(foreign)
            return None
        legacy = [key for key in OPTIONAL_FIELDS if key not in checksums and key not in f]  # format 1
        expected = [key for key in META_FIELDS if key not in legacy] + [f"vectors/{fam}" for fam in families]
        expected += [scale_key(fam) for fam, info in families.items() if has_scales(info.get("dtype", ""))]
        names = expected + [name for name in checksums if name not in expected]
        for name in names:
            if name not in checksums:
                problems.append(f"{root / MANIFEST}: has no checksum for dataset {name!r}")
            try:
                ds = f.get(name)
            except Exception as err:  # noqa: BLE001
                problems.append(f"{path}: dataset {name!r} cannot be read ({_first_line(err)})")
                continue
            if not isinstance(ds, h5py.Dataset):
                problems.append(f"{path}: dataset {name!r} is missing")
                continue
            try:
                digest, nonfinite = _scan(ds)
            except Exception as err:  # noqa: BLE001 - a damaged chunk
                problems.append(f"{path}: dataset {name!r} cannot be read ({_first_line(err)})")
                continue
            if name in checksums and digest != checksums[name]:
                problems.append(
                    f"{path}: dataset {name!r} checksum mismatch (sha256 {digest[:16]}…, "
                    f"manifest {checksums[name][:16]}…): the file was changed or damaged"
                )
            n = ds.shape[0] if ds.ndim else None
            if n != rows:
                problems.append(f"{path}: dataset {name!r} has {n} rows, the manifest says {rows}")
            if name.startswith("vectors/"):
                family = name[len("vectors/") :]
                dim, dtype = families.get(family, {}).get("dim"), families.get(family, {}).get("dtype", "float32")
                expected_shape = disk_shape(rows, dim, dtype) if isinstance(dim, int) and dtype in DISK_DTYPES else None
                if expected_shape is not None and (ds.ndim != 2 or ds.shape[1] != expected_shape[1]):
                    problems.append(f"{path}: family {family!r} has shape {ds.shape}, expected {expected_shape}")
                if nonfinite:
                    problems.append(f"{path}: family {family!r} holds {nonfinite} NaN/inf values")
            elif name.startswith("scales/") and nonfinite:
                problems.append(f"{path}: dataset {name!r} holds {nonfinite} NaN/inf scales")
            elif name == "valid" and n == rows and ds.dtype == np.bool_:
                valid = ds[()]
        stored = f.get("vectors")
        if isinstance(stored, h5py.Group):
            listed = set(families)
            extra: list[str] = []
            stored.visititems(lambda key, obj: extra.append(key) if isinstance(obj, h5py.Dataset) else None)
            for key in sorted(set(extra) - listed):
                problems.append(f"{path}: holds family {key!r} that the manifest does not list")
    return valid


def _scan(ds: Any) -> tuple[str, int]:
    """``dataset_checksum`` of a dataset's values, read in blocks, and its count of non-finite floats."""
    if ds.ndim == 0:
        return dataset_checksum(np.asarray(ds[()]).reshape(1)), 0
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * max(ds.dtype.itemsize, 1))
    step = max(1, BLOCK_BYTES // row_bytes)
    if ds.dtype.kind == "O":  # strings: their size is not the dtype's, read at most STRING_ROWS at a time
        step = min(step, STRING_ROWS)
    if ds.shape[0] <= step:
        values = ds[()]
        return dataset_checksum(values), _nonfinite(values)
    digest = hashlib.sha256()
    nonfinite = 0
    for start in range(0, ds.shape[0], step):
        block = ds[start : start + step]
        update_checksum(digest, block)
        nonfinite += _nonfinite(block)
    return digest.hexdigest(), nonfinite


def _nonfinite(values: np.ndarray) -> int:
    return int((~np.isfinite(values)).sum()) if values.dtype.kind in "fc" else 0


def _check_faiss(
    root: Path,
    families: dict[str, dict[str, Any]],
    paths: dict[str, Path],
    files: dict[str, str],
    valid: np.ndarray | None,
    problems: list[str],
) -> None:
    """Each FAISS file: its recorded sha256 (format 2), its dimension, that it holds exactly the valid rows,
    and, without a recorded sha256 (format 1), that every row decodes to its stored vector."""
    from actindex.index.search import read_faiss_index, stored_ids

    expected_ids = np.flatnonzero(valid) if valid is not None else None
    for name, path in paths.items():
        try:
            index = read_faiss_index(path)
        except IndexFileError as err:
            problems.append(str(err))
            continue
        recorded = files.get(families[name]["faiss"])
        if recorded is not None and _sha256(path) != recorded:
            problems.append(f"{path}: checksum mismatch (sha256 differs from the manifest's): the file was replaced "
                            "or damaged")
            continue
        dim = families[name]["dim"]
        if index.d != dim:
            problems.append(f"{path}: FAISS index has dimension {index.d}, family {name!r} has {dim}")
            continue
        if expected_ids is None:
            continue
        if index.ntotal != len(expected_ids):
            problems.append(f"{path}: FAISS index holds {index.ntotal} rows, but {len(expected_ids)} rows are valid")
        elif (ids := stored_ids(index)) is not None:
            if not np.array_equal(ids, expected_ids):
                problems.append(f"{path}: FAISS index ids are not the valid row numbers")
            elif recorded is None:
                wrong = _rows_disagree(root, name, dim, index, expected_ids)
                if wrong:
                    problems.append(f"{path}: {wrong} row(s) disagree with the stored vectors of {name!r} (copied "
                                    "from another index, or damaged)")


def _sha256(path: Path) -> str | None:
    try:
        return bytes_sha256(path)
    except OSError:
        return None


def _rows_disagree(root: Path, family: str, dim: int, index: Any, rows: np.ndarray) -> int:
    """How many of ``rows`` decode from ``index`` to something else than their stored vector (in blocks)."""
    import h5py

    from actindex.index.search import ADD_BLOCK, rows_disagree

    wrong = 0
    with h5py.File(root / VECTORS, "r") as f:
        ds = StoredRows.of(f, family, dim)
        for a in range(0, len(rows), ADD_BLOCK):
            block = rows[a : a + ADD_BLOCK]
            wrong += len(rows_disagree(index, block, ds[block]))
    return wrong
