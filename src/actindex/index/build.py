"""The one-pass build: read rows, run the model once per batch, commit vectors part by part.

Rows are processed in parts of ``part_size`` consecutive rows. Inside a part, rows are sorted
by length and batched (less padding), then put back in file order before the part is committed,
so the index is in file order and independent of batching.

Data-parallel builds use torch.distributed only: under ``torchrun`` each rank builds the shard
``RANK/WORLD_SIZE`` into ``OUT/.shards/`` (a rank restarted with the same command resumes its
shard), all ranks meet at a barrier, and rank 0 merges the shards into ``OUT`` in row order.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from actindex import __version__
from actindex.core.encode import encode_row
from actindex.core.families import GRADIENT, VectorSpec, family_kind
from actindex.core.layers import default_layers
from actindex.core.models import LoadedModel, load_model
from actindex.core.readers import RowFile, id_digest, scan_rows
from actindex.core.reduction import StorageProjection
from actindex.core.rows import Row
from actindex.core.sources import file_sha256, resolve_data_path, source_counts
from actindex.core.vectors import RademacherProjector, compute_many, select_grad_modules
from actindex.errors import ActindexError, DataError, IndexFileError
from actindex.index.config import BuildConfig
from actindex.index.lock import write_lock
from actindex.index.manifest import (
    MANIFEST,
    VECTORS,
    CheckpointInfo,
    DataFile,
    FamilyInfo,
    Manifest,
    ModelInfo,
    ProjectionInfo,
    ReductionInfo,
    ShardInfo,
    SourceFile,
    read_manifest,
    runtime_versions,
)
from actindex.index.memorisation import heldout_loss, memorisation, warn_if_memorised
from actindex.index.reader import IndexReader
from actindex.index.search import STORE
from actindex.index.shards import check_same, identity, join_shards, shard_range
from actindex.index.writer import SHARDS_DIR, IndexWriter, append_base, check_out, clear_index, index_summary
from actindex.progress import bar as progress_bar


def vector_spec(config: BuildConfig, lm: LoadedModel) -> VectorSpec:
    """The vectors to compute, with layers checked against the model."""
    n = lm.num_layers
    layers = config.layers if config.layers is not None else default_layers(n)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ActindexError(f"unknown layer {bad[0]}: {lm.name} has {n} decoder layers (0-{n - 1})")
    kinds = config.family_kinds()
    modules = select_grad_modules(lm.model, config.grad_modules) if GRADIENT in kinds else []
    width = config.stored_width(lm.hidden_size)
    reduction = None if width is None else StorageProjection.seeded(lm.hidden_size, width, config.seed, square=True)
    return VectorSpec(layers=list(layers), kinds=kinds, grad_modules=modules, grad_k=config.grad_k, seed=config.seed,
                      reduction=reduction)


def reduction_info(reduction: StorageProjection | None) -> ReductionInfo | None:
    """What the manifest records of a storage projection (its matrix's sha256 included)."""
    if reduction is None:
        return None
    return ReductionInfo(hidden=reduction.hidden, width=reduction.width, seed=reduction.seed,
                         sha256=hashlib.sha256(reduction.matrix.tobytes()).hexdigest())


def held_kinds(manifest: Manifest) -> list[str]:
    """The family kinds an index holds, in storage order: what rows appended to it must have (an index built
    before a family became default, or with one switched off, is appended to without it)."""
    return list(dict.fromkeys(family_kind(name) for name in manifest.families))


def model_info(lm: LoadedModel) -> ModelInfo:
    """What identifies the model an index is built with."""
    return ModelInfo(name=lm.name, fingerprint=lm.fingerprint, tokenizer=lm.tokenizer_id(), num_layers=lm.num_layers,
                     hidden_size=lm.hidden_size, architecture=type(lm.model).__name__)


def _part_vectors(
    lm: LoadedModel,
    rows: list[Row],
    spec: VectorSpec,
    config: BuildConfig,
    projector: RademacherProjector,
    on_batch: Callable[[int, int], None],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Vectors and metadata for one part, in file order."""
    encoded = [encode_row(lm.tokenizer, row, config.max_length) for row in rows]
    meta = {
        "ids": np.array([r.id for r in rows], dtype=object),
        "n_tokens": np.array([len(e.input_ids) for e in encoded], np.int32),
        "n_response": np.array([e.n_response for e in encoded], np.int32),
        "truncated": np.array([e.truncated for e in encoded], np.bool_),
        "hash": np.array([r.content_hash for r in rows], dtype=object),
        "source_row": np.array([r.index for r in rows], np.int64),
        "line": np.array([r.line for r in rows], np.int64),
        "record": np.array([_record_json(r.record, config.max_length) for r in rows], dtype=object),
    }
    include = [not (config.skip_long and e.truncated) for e in encoded]
    out = compute_many(
        lm.model, encoded, spec, lm.tokenizer.pad_token_id, projector, config.batch_size, include, on_batch
    )
    meta["loss"], meta["valid"] = out.loss, out.valid
    return meta, out.vectors


def _record_json(record: dict[str, Any], max_length: int | None = None) -> str:
    """The record stored in the index, as JSON: string fields longer than :func:`~actindex.core.rows.record_cap`
    characters are cut with a visible marker (:func:`~actindex.core.rows.capped_record`), so a huge row is
    not copied whole into ``vectors.h5``."""
    import json

    from actindex.core.rows import capped_record, record_cap

    return json.dumps(capped_record(record, record_cap(max_length)), ensure_ascii=False, default=str)


def build(
    config: BuildConfig | None = None,
    *,
    model: LoadedModel | None = None,
    progress: bool = True,
    on_part: Callable[[int, int], None] | None = None,
    checkpoint: CheckpointInfo | None = None,
    **kwargs: Any,
) -> Manifest:
    """Build (or resume) an index; returns its manifest (with ``summary``: rows, tokens, time, bytes per row).

    ``actindex.build(data="train.jsonl", out="idx", layers=[12, 18])`` mirrors the command line.
    ``model`` passes an already loaded model (tests, notebooks). ``on_part(start, end)`` is
    called after each committed part (row numbers of the final index).

    Three variants share this pass: ``shard="i/n"`` builds one contiguous block of the rows as a
    shard directory (see :mod:`actindex.index.shards`); ``append=True`` adds the rows of ``data`` after
    the rows of the complete index in ``out``; and under ``torchrun`` (``RANK``/``WORLD_SIZE`` set)
    every rank builds shard ``RANK/WORLD_SIZE`` and rank 0 merges them (:func:`build_distributed`).

    ``checkpoint`` records the training step the model is at (``ActindexCallback``). The build also
    measures the model's loss on held-out rows (``heldout``) and warns
    (:class:`~actindex.errors.MemorisationWarning`) when the model has memorised the indexed rows
    (:mod:`actindex.index.memorisation`); the figures are in ``summary["memorisation"]``.
    """
    config = config or BuildConfig(**kwargs)
    world = torchrun_world()
    if world is not None and config.shard is None:
        return build_distributed(config, world, model=model, progress=progress, checkpoint=checkpoint)
    started = time.time()
    rows = scan_rows(config.data, config.limit, config.split, config.sample, config.seed)  # read part by part below
    if world is None:  # refused before the model loads (under torchrun, build_distributed checks --out)
        check_out(Path(config.out), config.overwrite, config.append, [(rows.path, "the training data file")],
                  checkpoint=checkpoint is not None)
    if config.append:  # new rows are stored as the index's: its families, dtype and width, not today's defaults;
        base = append_base(config.out)  # rows without an id are numbered after the index's rows (row-N...)
        rows = replace(rows, first_id=base.rows)
        config = replace(config, families=config.families or held_kinds(base),
                         store_dtype=next(iter(base.families.values())).dtype if base.families else config.store_dtype,
                         full_width=base.reduction is None,
                         width=base.reduction.width if base.reduction is not None else config.width)
    lm = model or load_model(config.model, config.device, config.dtype, config.trust_remote_code)
    spec = vector_spec(config, lm)
    families = spec.families(lm.hidden_size)
    shards = source_counts(config.data)  # a directory of shards: its files and their rows, for filter and report
    data_file = DataFile(path=str(resolve_data_path(config.data).resolve()), sha256=file_sha256(config.data),
                         rows=len(rows), limit=config.limit, split=rows.split,  # filter reads the same split
                         file_rows=rows.total, sample=config.sample,
                         sources=None if shards is None else [SourceFile(name, n) for name, n in shards])
    manifest = Manifest(
        model=model_info(lm), layers=spec.layers,
        projection=ProjectionInfo(seed=spec.seed, k=spec.grad_k, modules=spec.grad_modules),
        data=[data_file], build=replace(config, overwrite=False), actindex_version=__version__,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), versions=runtime_versions(),
        checkpoint=checkpoint, reduction=reduction_info(spec.reduction),
        heldout=None if config.append else heldout_loss(lm, config.heldout, config.max_length, config.batch_size),
    )
    state = {  # what a resumed build must share with the build it resumes
        "config": config.compatibility_state(),
        "model": asdict(manifest.model),
        "data_sha256": data_file.sha256,
        "families": families,
        "spec": {"layers": spec.layers, "projection": asdict(manifest.projection),
                 "reduction": None if manifest.reduction is None else asdict(manifest.reduction)},
    }
    faiss_factory = config.index_factory()
    first_row, base_rows = 0, None
    start, end = 0, len(rows)  # the rows of the file this build covers
    shard = config.shard_spec()
    if shard is not None:
        start, end = shard_range(len(rows), *shard)
        first_row = start
        manifest.shard = ShardInfo(index=shard[0], count=shard[1], start=start, end=end)
        faiss_factory = "Flat" if config.full_width else STORE  # the factory asked for is built once, at merge
    out = Path(config.out)
    projector = RademacherProjector(spec.seed, spec.grad_k)
    with write_lock(out):
        if config.append:
            manifest, base_rows = _append_manifest(out, manifest, families, rows, config.stored_dtype())
            first_row = base_rows  # the FAISS indexes are extended: their factory and training are kept
            state["append"] = {"base_rows": base_rows, "base_checksums": manifest.checksums}
        writer = IndexWriter(out, state, overwrite=config.overwrite, base_rows=base_rows)
        done = writer.rows_done() - writer.first_row  # a shard's own rows are numbered from 0
        bar = progress_bar(total=end - start, initial=done, show=progress, unit="row", desc="build")
        tokens_seen, t0 = 0, time.time()

        def on_batch(n_rows: int, n_tokens: int) -> None:
            nonlocal tokens_seen
            tokens_seen += n_tokens
            bar.update(n_rows)
            bar.set_postfix(tok_s=f"{tokens_seen / max(time.time() - t0, 1e-9):.0f}")

        with torch.no_grad():
            for position, part_rows in rows.parts(start + done, end, config.part_size):
                part_start = position - start  # the part's first row within this build
                meta, vectors = _part_vectors(lm, part_rows, spec, config, projector, on_batch)
                writer.write_part(writer.first_row + part_start, meta, vectors)
                if on_part is not None:
                    on_part(first_row + part_start, first_row + part_start + len(part_rows))
        bar.close()
        if file_sha256(config.data) != data_file.sha256:  # rows are read lazily: they must be the ones checked
            raise DataError(rows.path, None, None, "the file changed during the build; rebuild with --overwrite")
        manifest = writer.finalize(manifest, families, config.stored_dtype(), faiss_factory, config.faiss_train_rows,
                                   matrix=None if spec.reduction is None else spec.reduction.matrix)
    return _summarised(out, manifest, started, warn=shard is None)


def _summarised(out: Path, manifest: Manifest, started: float, warn: bool = True) -> Manifest:
    """``manifest`` with its ``summary`` (:func:`index_summary` and the memorisation figures); warns when the
    model has memorised the rows (not for a shard: its merge is checked)."""
    manifest.summary = index_summary(out, manifest, time.time() - started)
    check = memorisation(IndexReader(out, manifest).table, manifest)
    if check is not None:
        manifest.summary["memorisation"] = check.figures()
        if warn:
            warn_if_memorised(check, out, stacklevel=4)
    return manifest


def _append_manifest(
    out: Path, new: Manifest, families: dict[str, int], rows: RowFile, store_dtype: str
) -> tuple[Manifest, int]:
    """The manifest of ``out`` extended by the new data file, after checking the new rows fit.

    Refused: another model, layers, projection, families, dtype or max length than the index
    (the first differing field is named); a data file whose sha256 is already among the index's
    files (appending the same file twice); ids that the index already holds.
    """
    base = append_base(out)
    new_families = {name: FamilyInfo(dim, store_dtype) for name, dim in families.items()}
    check_same([(str(out), identity(base)), ("the rows to append", identity(replace(new, families=new_families)))],
               f"append to {out}")
    entry = new.data[0]
    for f in base.data:
        if f.sha256 == entry.sha256:
            raise IndexFileError(
                f"cannot append {entry.path}: a file with the same sha256 ({f.path}) is already in {out}"
            )
    base_rows = base.rows
    with h5py.File(out / VECTORS, "r") as f:
        ids = f["ids"]
        digests = np.concatenate([[id_digest(_text(i)) for i in ids[a : min(a + ID_BLOCK, base_rows)]]
                                  for a in range(0, base_rows, ID_BLOCK)] or [[]]).astype(np.int64)
        order = np.argsort(digests, kind="stable")
        digests = digests[order]
        for row in rows:  # streamed; a digest found among the index's is confirmed on the id itself
            d = id_digest(row.id)
            at = np.searchsorted(digests, d)
            while at < len(digests) and digests[at] == d:
                if _text(ids[int(order[at])]) == row.id:
                    if "id" in row.record:
                        raise DataError(Path(row.path), row.line, "id", f"id {row.id!r} is already in {out}")
                    raise DataError(Path(row.path), row.line, None, f"the row has no 'id' field and its generated id "
                                    f"{row.id!r} is already in {out}; give the rows ids")
                at += 1
    # curvature factors were fitted on the old rows only: dropped, refit them after appending
    return replace(base, data=[*base.data, replace(entry, first_row=base_rows)], curvature={}), base_rows


#: ids read at a time when an append checks the new ids against the index's (8 bytes kept per row)
ID_BLOCK = 65536


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------
# Data-parallel build under torchrun
# --------------------------------------------------------------------------------------------

#: how long a rank waits at a barrier for the slowest rank (shards can take hours)
BARRIER_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class World:
    """This process's place in a ``torchrun`` job (from its environment variables)."""

    rank: int
    size: int
    local_rank: int


def torchrun_world() -> World | None:
    """``World`` from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` when run by torchrun with 2+ processes, or with one
    (``--nproc-per-node 1``: ``MASTER_ADDR`` is set, so the process group is formed too, over nccl on a GPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    size = int(os.environ["WORLD_SIZE"])
    if size < 1 or (size == 1 and "MASTER_ADDR" not in os.environ):
        return None
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def build_distributed(
    config: BuildConfig, world: World, *, model: LoadedModel | None = None, progress: bool = True,
    checkpoint: CheckpointInfo | None = None,
) -> Manifest:
    """Every rank builds shard ``rank/size`` of the rows; rank 0 merges them into ``config.out``.

    Backend: nccl when the ranks compute on CUDA (each on ``cuda:LOCAL_RANK``), gloo otherwise.
    The result equals a single-process build: same rows in the same order, same vectors up to
    the float rounding of other batch compositions.
    """
    import torch.distributed as dist

    started = time.time()
    if config.append:
        raise ActindexError("--append runs in one process; run it without torchrun")
    if config.device == "map":
        raise ActindexError("--device map spreads one model over all GPUs; under torchrun each rank takes one GPU")
    out = Path(config.out)
    check_out(out, config.overwrite, inputs=[(resolve_data_path(config.data), "the training data file")],
              checkpoint=checkpoint is not None)
    device = config.device
    use_cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
    if use_cuda:
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)

    def barrier() -> None:
        dist.barrier(device_ids=[world.local_rank]) if backend == "nccl" else dist.barrier()

    try:
        if world.rank == 0 and config.overwrite:
            clear_index(out)
            shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        barrier()
        shard_dirs = [out / SHARDS_DIR / f"shard-{i:05d}-of-{world.size:05d}" for i in range(world.size)]
        mine = replace(config, shard=f"{world.rank}/{world.size}", out=str(shard_dirs[world.rank]),
                       overwrite=False, device=device)
        if not (shard_dirs[world.rank] / MANIFEST).exists():  # a finished shard of a restarted job is kept
            build(mine, model=model, progress=progress and world.rank == 0, checkpoint=checkpoint)
        barrier()
        if world.rank == 0:
            join_shards(shard_dirs, out, faiss_factory=config.faiss_factory,
                        faiss_train_rows=config.faiss_train_rows)
            shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        barrier()
    finally:
        if started_here:
            dist.destroy_process_group()
    return _summarised(out, read_manifest(out), started, warn=world.rank == 0)
