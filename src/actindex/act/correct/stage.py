"""The correction stage, step by step: select, evaluate before, reference log-probs, train, save,
evaluate after, report (:func:`correct`; the maths is in :mod:`actindex.act.correct`)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actindex.act.correct.config import CorrectConfig
from actindex.act.correct.evaluate import HeldOut, held_out_pairs, perplexity_rows
from actindex.act.correct.logprobs import reference_log_probs
from actindex.act.correct.objectives import Objective
from actindex.act.correct.save import check_out, save_corrected, saved_format
from actindex.act.correct.selection import Split, select_rows
from actindex.act.correct.training import train, trainable_copy
from actindex.act.correct.weighting import TokenWeighting, carrier_report
from actindex.api import Index
from actindex.core.encode import Encoded, encode_row
from actindex.core.models import LoadedModel, wrap_model
from actindex.core.rows import normalise_record
from actindex.errors import ActindexError
from actindex.outputs import index_inputs
from actindex.query.behaviors import Behavior
from actindex.query.methods import DEFAULT_VECTOR_METHOD, QueryMethod


@dataclass
class Correction:
    """What :func:`correct` did: the report (also saved as ``correction.json``) and the corrected model."""

    report: dict[str, Any]
    model: LoadedModel
    selection: Split
    history: list[dict[str, float]] = field(default_factory=list)


def index_scores(
    index: Index, behavior: Behavior, method: str = DEFAULT_VECTOR_METHOD, layer: int | None = None
) -> np.ndarray:
    """The index ranking's score of every row (NaN for rows the index could not embed): the raw cosine of a single
    method (its sign is the row's push: towards the behaviour or against it), a fused method's calibrated score."""
    result = index.query(behavior, method=method, layer=layer, k=0)
    scores = np.full(len(index), np.nan)
    for hit in result.top:
        scores[hit.row] = hit.calibrated if QueryMethod.get(result.method).fused else hit.cosine
    return scores


def encode_rows(index: Index, rows: np.ndarray, max_length: int | None, tokenizer: Any) -> list[Encoded]:
    """The index's rows ``rows``, encoded as the build encoded them."""
    records = index.reader.records(rows)
    return [encode_row(tokenizer, normalise_record(index.root, int(r) + 1, int(r), rec), max_length)
            for r, rec in zip(rows, records)]


# ---- the steps ------------------------------------------------------------------------------


def rank(index: Index, behavior: Behavior, scores: np.ndarray | None, config: CorrectConfig) -> tuple[np.ndarray, str]:
    """Step 1a: a score per row (the caller's, or the index ranking's) and what ranked them."""
    if scores is None:
        return index_scores(index, behavior, config.method, config.layer), f"index ranking, method {config.method}"
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(index):
        raise ActindexError(f"scores has {len(scores)} values but the index has {len(index)} rows")
    return scores, "scores given by the caller"


def held_out(index: Index, behavior: Behavior, lm: LoadedModel, split: Split, config: CorrectConfig,
             max_length: int | None) -> HeldOut:
    """Step 2a: the evaluation sets, the margin's pairs and a fixed sample of rows outside D+, D-, D0."""
    pairs, source = held_out_pairs(config.held_out, behavior, lm)
    rows = perplexity_rows(split, config.ppl_rows, config.seed)
    return HeldOut(pairs, source, rows, encode_rows(index, rows, max_length, lm.tokenizer), config.seed)


def training_sets(index: Index, split: Split, max_length: int | None, tokenizer: Any) -> dict[str, list[Encoded]]:
    """Step 3a: the rows of D+, D-, D0 encoded, each with at least one response token."""
    sets = {name: encode_rows(index, rows, max_length, tokenizer) for name, rows in split.sets().items()}
    for name, encoded in sets.items():
        if any(not any(row.loss_mask[1:]) for row in encoded):
            raise ActindexError(f"a row of {name} has no response token within --max-length {max_length}")
    return sets


# ---- the stage ------------------------------------------------------------------------------


def correct(
    index: Index | str | os.PathLike,
    behavior: str | Behavior,
    out: str | os.PathLike,
    *,
    scores: np.ndarray | None = None,
    lm: LoadedModel | None = None,
    target: LoadedModel | str | None = None,
    config: CorrectConfig | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> Correction:
    """Correct a model against a behaviour and save it to ``out`` (see :mod:`actindex.act.correct`).

    ``scores`` (one per index row, NaN to leave a row out) replaces the index ranking, e.g. an
    influence rerank; by default the rows are ranked with ``index.query(behavior, method, k=0)``.
    ``lm`` is the index's model already loaded. ``target`` (a loaded model or a path) is the model
    corrected when it is not the index's: typically the index is built with the checkpoint a
    fine-tune started from, whose gradients still see the rows the fine-tune memorised, and the
    fine-tuned model is corrected. The ranking and the query token weights come from the index's
    model; the margins, perplexities, reference log-probs and training use ``target``. Neither
    model is modified (training runs on a copy).
    """
    config = config or CorrectConfig(**kwargs)
    started = time.perf_counter()
    index = index if isinstance(index, Index) else Index.open(index)
    named = [(config.held_out, "the held-out pairs file"), (target, "the target model")]
    inputs = [*index_inputs(index, behavior), *[(p, what) for p, what in named if isinstance(p, (str, os.PathLike))]]
    out = check_out(Path(out), config.overwrite, inputs)
    if lm is not None:
        index.use_model(lm)
    ranker = index.model()
    lm = index.session.companion_model(target, "--target") if target is not None else ranker
    behavior = index.behavior(behavior)
    max_length = config.max_length or index.manifest.max_length
    pad_id, bs = lm.tokenizer.pad_token_id, config.batch_size

    # 1. select: rank the rows and split them into D+, D-, D0
    scores, ranking = rank(index, behavior, scores, config)
    split = select_rows(scores, config.select, config.k, config.k0)
    objective = Objective.get(config.algo)
    # 2. evaluate before
    held = held_out(index, behavior, lm, split, config, max_length)
    before = held.measure(lm, max_length, bs, "before", progress)
    # 3. the training sets, their token weights and reference log-probs (once, before correction), their scores
    sets = training_sets(index, split, max_length, lm.tokenizer)
    weights = TokenWeighting.get(config.token_weights).of_sets(index, behavior, config.layer, sets, progress)
    ref = reference_log_probs(lm.model, sets, weights, pad_id, bs)
    influence = {name: torch.tensor(split.influence[rows]) for name, rows in split.sets().items()}
    # 4. train (a copy of the model)
    model = trainable_copy(lm.model, config)
    history = train(model, objective, sets, ref, influence, config, pad_id, progress, weights)
    model.requires_grad_(False)
    # 5. evaluate after
    corrected = wrap_model(model, lm.tokenizer, str(out))
    after = held.measure(corrected, max_length, bs, "after", progress)
    # 6. report, 7. save: the model and its report in one commit
    fmt = saved_format(model, lm, config.merge or config.full)
    report = {
        "algo": config.algo,
        "behavior": behavior.name,
        "index": str(index.root),
        "model": lm.name,
        "ranking": ranking,
        "ranking model": ranker.name,
        "selection": {**split.report(index.reader.ids()), **carrier_report(lm.tokenizer, sets, weights)},
        **held.report(before, after),
        "loss": {"first": history[0], "last": history[-1]},
        "steps": config.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "saved": {"path": str(out), "format": fmt},
        "config": asdict(config),
    }
    save_corrected(model, lm, out, config.merge or config.full, report)
    return Correction(report=report, model=corrected, selection=split, history=history)
