"""Scale-out: shards of one build, merged into one index (docs/design.md#scale).

A build over N rows split n ways gives shard i the contiguous rows

    [start_i, end_i) = [floor(i N / n), floor((i + 1) N / n)),     i = 0 .. n-1,

so the shards tile the file in order and concatenating them in shard order gives the rows of a
single-process build in the same order. Each shard is a complete index directory (queryable and
verifiable on its own, searched exactly with a Flat FAISS index) whose manifest records
``shard = {index, count, start, end}``; the FAISS factory asked for (``build.faiss_factory``) is
trained once, at merge time, over all rows.

``merge`` refuses shards that were not computed the same way: the first field that differs
(model weights, tokenizer, layers, projection seed, projection, families, storage dtype,
max length, data file checksums and split, shard count...) is named together with two shard directories.
The same comparison guards ``build --append`` against an index built another way.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import h5py

from actindex.errors import IndexFileError
from actindex.index.lock import write_lock
from actindex.index.manifest import MANIFEST, VECTORS, Manifest, read_manifest
from actindex.index.writer import Part, check_out, clear_index, index_summary, write_index


def shard_range(n_rows: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[floor(i N / n), floor((i+1) N / n))`` of shard ``i`` of ``n`` over ``N`` rows."""
    return index * n_rows // count, (index + 1) * n_rows // count


def identity(manifest: Manifest) -> dict[str, Any]:
    """What two pieces of one index must share, field by field, in the order errors name them."""
    families = manifest.families
    return {
        "model": manifest.model.fingerprint,
        "tokenizer": manifest.model.tokenizer,
        "layers": list(manifest.layers),
        "projection seed": manifest.projection.seed,
        "projection": {"k": manifest.projection.k, "modules": list(manifest.projection.modules)},
        "families": {name: fam.dim for name, fam in families.items()},
        "store dtype": sorted({fam.dtype for fam in families.values()}),
        "storage projection": None if manifest.reduction is None else asdict(manifest.reduction),
        "max length": manifest.build.max_length,
        "skip long": manifest.build.skip_long,
    }


def _short(value: Any, width: int = 48) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def check_same(pieces: list[tuple[str, dict[str, Any]]], action: str) -> None:
    """Raise naming the first field where two of the ``(name, fields)`` pieces disagree."""
    first_name, first = pieces[0]
    for name, fields in pieces[1:]:
        for field, value in first.items():
            if fields.get(field) != value:
                raise IndexFileError(
                    f"cannot {action}: {field} differs ({first_name}: {_short(value)}; {name}: "
                    f"{_short(fields.get(field))})"
                )


def merge(
    shard_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    overwrite: bool = False,
    faiss_factory: str | None = None,
    faiss_train_rows: int | None = None,
) -> Manifest:
    """Join shards ``0/n .. n-1/n`` of one build into the complete index ``out``; returns its manifest.

    Rows are concatenated in shard order (= file order), vectors copied as stored, and each
    family's FAISS index built once with ``faiss_factory`` (default: the one the build asked for).
    ``out`` follows the output rule (:func:`~actindex.index.writer.check_out`): never a shard, a directory
    inside an index, or an unrelated directory.
    """
    if not shard_dirs:
        raise IndexFileError("merge needs at least one shard directory")
    for d in shard_dirs:
        if Path(d).resolve() == Path(out).resolve():
            raise IndexFileError(f"merge --out {out} is one of the shards; write the merged index elsewhere")
    check_out(Path(out), overwrite, inputs=[(d, "a shard") for d in shard_dirs])
    return join_shards(shard_dirs, out, overwrite, faiss_factory, faiss_train_rows)


def join_shards(
    shard_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    overwrite: bool = False,
    faiss_factory: str | None = None,
    faiss_train_rows: int | None = None,
) -> Manifest:
    """:func:`merge` without its check of ``out`` (a build under torchrun merges the shards it keeps inside
    ``out``)."""
    started = time.time()
    out = Path(out)
    shards = []
    for d in shard_dirs:
        m = read_manifest(d)
        if m.shard is None:
            raise IndexFileError(f"{d} is not a shard (it was built without --shard I/N)")
        shards.append((str(d), m))
    check_same(
        [
            (d, identity(m) | {"data": [f.sha256 for f in m.data], "data split": m.data[0].split,
                               "data rows": m.data[0].rows, "shard count": m.shard.count})
            for d, m in shards
        ],
        "merge these shards",
    )
    count = shards[0][1].shard.count
    by_index: dict[int, str] = {}
    for d, m in shards:
        i = m.shard.index
        if i in by_index:
            raise IndexFileError(f"cannot merge: shard {i}/{count} is given twice ({by_index[i]}, {d})")
        by_index[i] = d
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise IndexFileError(
            f"cannot merge: shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing "
            f"(given: {', '.join(f'{i}/{count}' for i in sorted(by_index))})"
        )
    shards.sort(key=lambda dm: dm[1].shard.index)
    parts = [Part(m.shard.start, m.shard.end, Path(d) / VECTORS) for d, m in shards]
    for (d, m), part in zip(shards, parts):
        if m.rows != part.end - part.start:
            raise IndexFileError(f"{d}: holds {m.rows} rows, but shard {m.shard.index}/{count} spans "
                                 f"rows {part.start}-{part.end}")
    first = shards[0][1]
    # shard, checksums and files are recomputed; curvature is refit on all rows
    manifest = replace(first, shard=None, checksums={}, files={}, curvature={},
                       build=replace(first.build, out=str(out), shard=None),
                       merged_from=[str(Path(d).resolve()) for d, _ in shards],
                       created_at=min(m.created_at for _, m in shards))
    families = {name: fam.dim for name, fam in first.families.items()}
    store_dtype = next(iter(first.families.values())).dtype if families else "float32"
    factory = faiss_factory or first.build.index_factory()
    train_rows = faiss_train_rows or first.build.faiss_train_rows
    matrix = None
    if first.reduction is not None:  # every shard holds the same projection (identity): the first one's
        with h5py.File(Path(shards[0][0]) / VECTORS, "r") as f:
            matrix = f[first.reduction.dataset][()]
    with write_lock(out):
        if (out / MANIFEST).exists() and not overwrite:
            raise IndexFileError(f"{out} already holds a complete index; pass --overwrite to replace it")
        clear_index(out)
    manifest = write_index(out, parts, manifest, families, store_dtype, factory, train_rows, matrix=matrix)
    manifest.summary = index_summary(out, manifest, time.time() - started)
    return manifest
