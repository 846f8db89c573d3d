"""The one-pass build: read rows, run the model once per batch, commit vectors part by part.

Rows are processed in parts of ``part_size`` consecutive rows. Inside a part, rows are sorted
by length and batched (less padding), then put back in file order before the part is committed,
so the index is in file order and independent of batching.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import BuildConfig
from .data import Row, encode_row, file_sha256, load_rows, resolve_data_path
from .errors import ActindexError
from .models import LoadedModel, default_layers, load_model
from .store import VECTORS, IndexWriter, write_lock
from .vectors import RademacherProjector, VectorSpec, compute_many, select_grad_modules


def vector_spec(config: BuildConfig, lm: LoadedModel) -> VectorSpec:
    """The vectors to compute, with layers checked against the model."""
    n = lm.num_layers
    layers = config.layers if config.layers is not None else default_layers(n)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ActindexError(f"unknown layer {bad[0]}: {lm.name} has {n} decoder layers (0-{n - 1})")
    modules = select_grad_modules(lm.model, config.grad_modules) if config.grad else []
    return VectorSpec(
        layers=list(layers),
        residual_change=config.residual_change,
        pooled=config.pooled,
        mean_activation=config.mean_activation,
        grad_modules=modules,
        grad_k=config.grad_k,
        seed=config.seed,
    )


def model_description(lm: LoadedModel) -> dict[str, Any]:
    return {
        "name": lm.name,
        "fingerprint": lm.fingerprint,
        "tokenizer": lm.tokenizer_id(),
        "num_layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "architecture": type(lm.model).__name__,
    }


def spec_description(spec: VectorSpec) -> dict[str, Any]:
    return {"layers": spec.layers, "projection": {"seed": spec.seed, "k": spec.grad_k, "modules": spec.grad_modules}}


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
        "record": np.array([_record_json(r.record) for r in rows], dtype=object),
    }
    include = [not (config.skip_long and e.truncated) for e in encoded]
    out = compute_many(
        lm.model, encoded, spec, lm.tokenizer.pad_token_id, projector, config.batch_size, include, on_batch
    )
    meta["loss"], meta["valid"] = out.loss, out.valid
    return meta, out.vectors


def _record_json(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, ensure_ascii=False, default=str)


def build(
    config: BuildConfig | None = None,
    *,
    model: LoadedModel | None = None,
    progress: bool = True,
    on_part: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Build (or resume) an index; returns its manifest.

    ``actindex.build(data="train.jsonl", out="idx", layers=[12, 18])`` mirrors the command line.
    ``model`` passes an already loaded model (tests, notebooks). ``on_part(start, end)`` is
    called after each committed part.
    """
    config = config or BuildConfig(**kwargs)
    started = time.time()
    rows = load_rows(config.data, config.limit)
    lm = model or load_model(config.model, config.device, config.dtype, config.trust_remote_code)
    spec = vector_spec(config, lm)
    families = spec.families(lm.hidden_size)
    data_path = str(resolve_data_path(config.data).resolve())
    state = {
        "config": config.compatibility_state(),
        "model": model_description(lm),
        "data_sha256": file_sha256(config.data),
        "families": families,
        "spec": spec_description(spec),
    }
    projector = RademacherProjector(spec.seed, spec.grad_k)
    with write_lock(Path(config.out)):
        writer = IndexWriter(config.out, state, overwrite=config.overwrite)
        start = writer.rows_done()
        bar = tqdm(total=len(rows), initial=start, unit="row", disable=not progress, desc="build", dynamic_ncols=True)
        tokens_seen, t0 = 0, time.time()

        def on_batch(n_rows: int, n_tokens: int) -> None:
            nonlocal tokens_seen
            tokens_seen += n_tokens
            bar.update(n_rows)
            bar.set_postfix(tok_s=f"{tokens_seen / max(time.time() - t0, 1e-9):.0f}")

        with torch.no_grad():
            for part_start in range(start, len(rows), config.part_size):
                part_rows = rows[part_start : part_start + config.part_size]
                meta, vectors = _part_vectors(lm, part_rows, spec, config, projector, on_batch)
                writer.write_part(part_start, meta, vectors)
                if on_part is not None:
                    on_part(part_start, part_start + len(part_rows))
        bar.close()
        manifest = {
            "actindex_version": __version__,
            "model": state["model"],
            "layers": spec.layers,
            "projection": state["spec"]["projection"],
            "data": {"path": data_path, "sha256": state["data_sha256"], "rows": len(rows), "limit": config.limit},
            "build": {k: v for k, v in asdict(config).items() if k not in ("overwrite",)},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        }
        manifest = writer.finalize(manifest, families, config.store_dtype, config.faiss_factory)
    manifest["summary"] = _summary(Path(config.out), manifest, time.time() - started)
    return manifest


def _summary(root: Path, manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    import h5py

    with h5py.File(root / VECTORS, "r") as f:
        tokens = int(f["n_tokens"][()].sum())
        truncated = int(f["truncated"][()].sum())
        invalid = int((~f["valid"][()]).sum())
    vector_bytes = sum(
        manifest["rows"] * fam["dim"] * np.dtype(fam["dtype"]).itemsize for fam in manifest["families"].values()
    )
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    rows = max(manifest["rows"], 1)
    return {
        "rows": manifest["rows"],
        "tokens": tokens,
        "truncated": truncated,
        "excluded": invalid,
        "seconds": round(seconds, 2),
        "vector_bytes_per_row": vector_bytes // rows,
        "disk_bytes_per_row": on_disk // rows,
    }
