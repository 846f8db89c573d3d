"""Fitting curvature on an index, storing the factors inside it, loading them back.

The factors of each kind are the datasets ``NNNN/{q_a,q_s,lam}`` (float32) of their own HDF5 file in the index,
``curvature-<kind>-<random>.h5``, listed with their checksums in the manifest (``curvature``) and added in one
commit, the manifest's rename (:func:`~actindex.index.writer.add_file`): a fit killed at any moment leaves the
index as it was or with the new factors. Indexes written before keep them as the group ``curvature/<kind>`` of
``vectors.h5``, still read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from actindex.core.encode import Encoded, encode_row
from actindex.core.models import LoadedModel
from actindex.core.rows import normalise_record
from actindex.errors import ActindexError, IndexFileError
from actindex.index.manifest import CurvatureInfo, Manifest
from actindex.query.curvature.config import CurvatureConfig
from actindex.query.curvature.cost import estimate
from actindex.query.curvature.kinds import LINFAC, CurvatureKind
from actindex.query.curvature.kron import Curvature, KronEigen
from actindex.query.curvature.passes import fit_factors

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader

GROUP = "curvature"


def encode_index_rows(
    reader: IndexReader, rows: Sequence[int], lm: LoadedModel, content_only: bool = False
) -> list[Encoded]:
    """Tokenise stored training rows exactly as the build did (with ``content_only``, the loss mask
    leaves out the tokens that close each response, :func:`~actindex.core.encode.encode_row`)."""
    records = reader.records(list(rows))
    return [
        encode_row(lm.tokenizer, normalise_record(Path("<index>"), 0, int(r), rec), reader.manifest.max_length,
                   content_only)
        for r, rec in zip(rows, records)
    ]


def fit_curvature(
    reader: IndexReader, lm: LoadedModel, config: CurvatureConfig, progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> dict[str, CurvatureInfo]:
    """Fit the requested kinds on a seeded sample of the index's rows (``config.samples``, without
    replacement) and store them in it; returns the manifest's new ``curvature`` entries. Before the
    first pass, ``say`` is told the fit's cost (:func:`~actindex.query.curvature.cost.estimate`)."""
    from actindex.index.writer import add_file

    table = reader.table
    valid = np.flatnonzero(table.valid & (table.n_response > 0))
    if len(valid) == 0:
        raise ActindexError(f"{reader.root} has no valid row to fit curvature on")
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(valid, size=min(config.samples, len(valid)), replace=False))
    encoded = encode_index_rows(reader, rows, lm)
    projection = reader.manifest.projection.modules
    plan = {kind: CurvatureKind.get(kind).modules(lm.model, projection, config, reader.layers)
            for kind in config.kinds}
    if say is not None:
        say(estimate(lm.model, plan, encoded, lm.tokenizer.pad_token_id, config.batch_size).describe())
    started = time.time()
    fitted = fit_factors(lm.model, encoded, lm.tokenizer.pad_token_id, plan, config.empirical_fisher,
                         config.damping, config.batch_size, config.seed, progress)
    seconds = time.time() - started
    entries: dict[str, CurvatureInfo] = {}
    for kind, curv in fitted.items():
        datasets: dict[str, np.ndarray] = {}
        for i, k in enumerate(curv.modules.values()):
            for key, value in (("q_a", k.q_a), ("q_s", k.q_s), ("lam", k.lam)):
                datasets[f"{i:04d}/{key}"] = value.cpu().numpy().astype(np.float32)
        info = CurvatureInfo(
            modules=curv.names, damping=[k.damping for k in curv.modules.values()], samples=int(len(rows)),
            rows=rows.tolist(), labels=curv.info["labels"], sublayer=config.sublayer if kind == LINFAC else None,
            seed=config.seed, seconds=round(seconds, 2), fitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

        def record(manifest: Manifest, name: str, checksums: dict[str, str], kind: str = kind,
                   info: CurvatureInfo = info) -> None:
            info.checksums, info.file = checksums, name
            replaced = manifest.curvature.get(kind)
            if replaced is not None and replaced.file:
                manifest.files.pop(replaced.file, None)
            manifest.curvature[kind] = info

        add_file(reader.root, f"{GROUP}-{kind}", datasets, record)
        entries[kind] = info
    reader.reload_manifest()
    return entries


def load_curvature(reader: IndexReader, kind: str) -> Curvature:
    """The stored factors of ``kind``, checked against the manifest's checksums."""
    from actindex.index.writer import dataset_checksum

    CurvatureKind.get(kind)  # an unknown kind: one line naming the known ones
    entry = reader.manifest.curvature.get(kind)
    if entry is None:
        raise IndexFileError(
            f"{reader.root} has no {kind} curvature; run `actindex fit-curvature --index {reader.root} --kind {kind}`"
        )
    modules = {}
    with reader.h5() if not entry.file else reader.added_file(entry.file) as f:
        prefix = "" if entry.file else f"{GROUP}/{kind}/"
        for i, (name, damping) in enumerate(zip(entry.modules, entry.damping)):
            parts = []
            for key in ("q_a", "q_s", "lam"):
                path = f"{prefix}{i:04d}/{key}"
                if path not in f:
                    raise IndexFileError(f"{reader.root}: curvature dataset {path!r} is missing; refit the curvature")
                values = f[path][()]
                if dataset_checksum(values) != entry.checksums.get(path):
                    raise IndexFileError(f"{reader.root}: curvature dataset {path!r} checksum mismatch; refit it")
                parts.append(torch.from_numpy(values))  # as stored (float32): half the memory of float64
            modules[name] = KronEigen(*parts, damping=float(damping))
    info = {k: v for k, v in asdict(entry).items() if k != "checksums"}
    return Curvature(kind, modules, info)
