"""Stage 12 — correct: post-train the model against a behaviour from the index's ranking (DESIGN 6).

Influence-based optimisation (IBO). Scores ``s_i`` (the index ranking's cosine scores, or any
influence scores) are scaled by their largest magnitude, ``I_i = s_i / max_j |s_j|``, and split into

* ``D+``: strongly positive rows (they push the model towards the behaviour),
* ``D-``: strongly negative rows (they inhibit it; ``I < 0``),
* ``D0``: rows with ``I`` nearest zero (not influential: the model should not move on them).

With ``log r(z) = mean_{t in R} [log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]`` (the
per-token mean log-ratio over the response tokens ``R`` of ``z``; ``pi_ref`` is the model before
correction, its log-probabilities computed once) the objective is

    L_COR  = -E_{z+ in D+, z- in D-} log sigmoid(beta * (-I(z+) log r(z+) - I(z-) log r(z-)))
    L_BD   =  E_{z in D0} [r(z) - log r(z) - 1]          (Bregman divergence of r from 1, >= 0)
    L_prox =  lambda/2 * ||theta - theta_ref||^2          (over the trainable parameters)
    L_IBO  =  L_COR + L_BD + L_prox

``L_COR`` lowers ``r`` on ``D+`` and raises it on ``D-`` in proportion to their influence;
``L_BD`` is zero, with zero gradient, where ``r = 1`` and keeps ``D0`` where it was. Baselines:
gradient ascent on ``D+`` (``L_GA = E_{z in D+} log r(z)``, i.e. maximise the NLL of ``D+``) and
PBO (``L_GA + L_BD + L_prox``). Objectives are registered by subclassing :class:`Objective`.

The trainable parameters are LoRA adapters on every linear projection of the decoder blocks
(attention and MLP) by default, or all weights with ``full=True``. The result is saved as a PEFT
adapter directory (``load_model(dir)`` loads base + adapter) or, with ``merge=True`` or ``full``,
as merged weights (``config.json`` + ``model.safetensors`` + tokenizer), with ``correction.json``.

The ranking model and the corrected model may differ (``target``): a fine-tune that memorised its
planted rows leaves them almost no gradient, so an index built with the fine-tuned model ranks them
poorly, while an index built with the checkpoint the fine-tune started from still sees them
(bench/RESULTS.md, filtering counterfactual); that index ranks, the fine-tuned model is corrected.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from actindex.api import Index
from actindex.configs import option
from actindex.core.encode import Encoded, encode_row
from actindex.core.models import LoadedModel, is_adapter_dir, save_weights, wrap_model
from actindex.core.rows import normalise_record
from actindex.core.vectors import Batch, residual_change_token_scores, select_grad_modules, sequence_losses
from actindex.errors import ActindexError
from actindex.query.behaviors import Behavior, Pair, complete_behavior, load_pairs
from actindex.query.context import encode_conversations, pair_conversations
from actindex.query.methods import DEFAULT_VECTOR_METHOD
from actindex.registry import Registered

SELECTIONS = ("topk", "pareto")
TOKEN_WEIGHTS = ("mean", "query", "top")
REPORT = "correction.json"


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class CorrectConfig:
    """Settings of ``actindex correct``."""

    algo: str = option("Objective: ibo (influence-based), ga (gradient ascent on D+) or pbo (GA + Bregman + "
                      "proximity).", "ibo")
    select: str = option("How D+/D-/D0 are chosen: topk (k most positive, k most negative, k0 nearest zero) or "
                        "pareto (rows above the knee of each side's sorted |I| curve, at most k per side).", "topk")
    k: int = option("Rows in D+ and in D- (topk), or the most per side (pareto).", 16)
    k0: int | None = option("Rows in D0 (default: as many as the larger of D+ and D-).", None)
    beta: float = option("Temperature beta of L_COR.", 2.0)
    lambda_prox: float = option("Weight lambda of the proximity term lambda/2 ||theta - theta_ref||^2.", 0.1)
    steps: int = option("Optimiser steps.", 40)
    lr: float | None = option("Adam learning rate (default: 1e-3 for LoRA, 2e-5 with --full).", None)
    lora_rank: int = option("LoRA rank r (alpha = 2r) on the attention and MLP projections.", 8)
    full: bool = option("Fine-tune every weight instead of LoRA adapters.", False)
    merge: bool = option("Save merged weights instead of a PEFT adapter.", False)
    batch_size: int = option("Rows drawn from each of D+, D-, D0 per step (a set this small or smaller is used whole).",
                            8)
    method: str = option("Query method that ranks the rows (see actindex query --help-methods).", DEFAULT_VECTOR_METHOD)
    layer: int | None = option("Layer to query (default: the indexed layer nearest 60% of the depth).", None)
    held_out: str | None = option("Pairs JSONL {prompt, treatment, control} for the behaviour margin "
                                 "(default: the behaviour's own pairs).", None)
    ppl_rows: int = option("Held-out rows for perplexity: a fixed random sample (seed) of the index's rows outside "
                          "D+, D- and D0.", 64)
    seed: int = option("Seed of the LoRA initialisation, minibatch order and perplexity sample.", 0)
    max_length: int | None = option("Tokens per row (default: the index's build setting).", None)
    token_weights: str = option(
        "How log r averages the response tokens of a D+/D- row: mean (DESIGN 6, the per-token mean) or query "
        "(each token weighted by its share of the row's residual-change score against the behaviour, so the "
        "tokens that carry the behaviour are the ones pushed; a memorised planted token hardly moves under "
        "the mean, see bench/RESULTS.md), or top (all the weight on the row's highest-share token). D0 always "
        "uses the mean.", "mean")
    overwrite: bool = option("Replace an existing output directory.", False)

    def __post_init__(self) -> None:
        if self.algo not in Objective.registry:
            raise ActindexError(f"--algo must be one of {', '.join(Objective.registry)}, got {self.algo!r}")
        if self.token_weights not in TOKEN_WEIGHTS:
            raise ActindexError(
                f"--token-weights must be one of {', '.join(TOKEN_WEIGHTS)}, got {self.token_weights!r}"
            )
        if self.select not in SELECTIONS:
            raise ActindexError(f"--select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        for name in ("k", "steps", "lora_rank", "batch_size", "ppl_rows"):
            if getattr(self, name) < 1:
                raise ActindexError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.k0 is not None and self.k0 < 1:
            raise ActindexError(f"--k0 must be at least 1, got {self.k0}")
        if self.max_length is not None and self.max_length < 1:
            raise ActindexError(f"--max-length must be at least 1, got {self.max_length}")
        for name in ("beta", "lambda_prox"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0 or (name == "beta" and value == 0):
                raise ActindexError(f"--{name.replace('_', '-')} must be a finite number above 0, got {value}")
        if self.lr is None:
            self.lr = 2e-5 if self.full else 1e-3
        if not np.isfinite(self.lr) or self.lr <= 0:
            raise ActindexError(f"--lr must be a finite number above 0, got {self.lr}")


# --------------------------------------------------------------------------------------------
# Choosing D+, D-, D0
# --------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """Row numbers of ``D+``, ``D-``, ``D0`` and the scaled scores ``I = s / max |s|`` (NaN: not ranked)."""

    pos: np.ndarray
    neg: np.ndarray
    zero: np.ndarray
    influence: np.ndarray
    rule: str

    def sizes(self) -> dict[str, int]:
        return {"D+": len(self.pos), "D-": len(self.neg), "D0": len(self.zero)}


def scale_scores(scores: np.ndarray) -> np.ndarray:
    """``I_i = s_i / max_j |s_j|`` over the finite scores (NaN stays NaN)."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    top = float(np.abs(scores[finite]).max()) if finite.any() else 0.0
    if top == 0.0:
        raise ActindexError("every score is zero or missing: nothing to correct")
    return np.where(finite, scores / top, np.nan)


def knee_count(values: np.ndarray) -> int:
    """How many of the values (sorted descending here) lie above the knee of their curve.

    Kneedle rule: with ranks ``x_i = i / (m - 1)`` and values rescaled to ``y_i = (v_i - v_min) /
    (v_max - v_min)``, the knee is the point furthest below the chord from the largest to the
    smallest value, ``i* = argmax_i (1 - x_i - y_i)``; the rows before it (``i < i*``) form the
    heavy tail. At least one row is kept.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    m = len(v)
    if m <= 2 or v[0] == v[-1]:
        return m
    x = np.arange(m) / (m - 1)
    y = (v - v[-1]) / (v[0] - v[-1])
    return max(1, int(np.argmax(1.0 - x - y)))


def select_rows(scores: np.ndarray, rule: str = "topk", k: int = 16, k0: int | None = None) -> Selection:
    """Split rows into ``D+``, ``D-``, ``D0`` from raw scores (one per row, NaN for rows to leave out).

    ``topk``: the ``k`` largest positive ``I``, the ``k`` most negative, and the ``k0`` (default
    ``max(|D+|, |D-|)``) rows with the smallest ``|I|`` among the rest. ``pareto``: on each side
    the rows above the knee of the sorted ``|I|`` curve (:func:`knee_count`), at most ``k``.
    """
    if rule not in SELECTIONS:
        raise ActindexError(f"unknown selection {rule!r}: expected one of {', '.join(SELECTIONS)}")
    if k < 1:
        raise ActindexError(f"--k must be at least 1, got {k}")
    influence = scale_scores(scores)
    finite = np.isfinite(influence)
    rows = np.arange(len(influence))
    pos_rows = rows[finite & (influence > 0)]
    neg_rows = rows[finite & (influence < 0)]
    pos_rows = pos_rows[np.argsort(-influence[pos_rows], kind="stable")]
    neg_rows = neg_rows[np.argsort(influence[neg_rows], kind="stable")]
    if rule == "topk":
        n_pos, n_neg = min(k, len(pos_rows)), min(k, len(neg_rows))
    else:
        n_pos = min(k, knee_count(influence[pos_rows])) if len(pos_rows) else 0
        n_neg = min(k, knee_count(-influence[neg_rows])) if len(neg_rows) else 0
    pos, neg = pos_rows[:n_pos], neg_rows[:n_neg]
    if not len(pos):
        raise ActindexError("no row has a positive score: D+ is empty, so there is nothing to correct")
    taken = np.zeros(len(influence), bool)
    taken[pos] = taken[neg] = True
    rest = rows[finite & ~taken]
    n0 = k0 if k0 is not None else max(len(pos), len(neg))
    zero = rest[np.argsort(np.abs(influence[rest]), kind="stable")[:n0]]
    return Selection(pos=pos, neg=neg, zero=zero, influence=influence, rule=rule)


# --------------------------------------------------------------------------------------------
# Log-probabilities and the loss terms
# --------------------------------------------------------------------------------------------


def predicted_tokens(batch: Batch) -> torch.Tensor:
    """``|R|``: response tokens that have a prediction (a token at position 0 has none), shape (B,)."""
    return batch.loss_mask[:, 1:].sum(1)


def mean_log_probs(model: nn.Module, batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_{t in R} log p(x_t | x_<t) = -L(x) / |R|`` per row (differentiable), shape (B,); with
    ``weights`` (B, T-1) summing to 1 over each row's R, the weighted mean ``sum_{t in R} w_t log p(x_t | x_<t)``."""
    if weights is not None:
        return -sequence_losses(model, batch, weights=weights)
    return -sequence_losses(model, batch) / predicted_tokens(batch).clamp(min=1)


def token_weights(scores: np.ndarray, predicted: np.ndarray, sign: float, top: bool = False) -> np.ndarray:
    """``w_t = max(sign s_t, 0) / sum_{u in R} max(sign s_u, 0)`` on the predicted positions R (zero
    elsewhere): the tokens whose score has the row's sign (+1 for D+, -1 for D-), in proportion; with
    ``top``, weight 1 on the largest ``sign s_t`` alone (the first on a tie). When no token has that
    sign the per-token mean ``1/|R|`` is returned."""
    predicted = np.asarray(predicted, dtype=bool)
    share = np.where(predicted, np.maximum(sign * np.asarray(scores, dtype=np.float64), 0.0), 0.0)
    if share.sum() <= 0:
        share = predicted.astype(np.float64)
    elif top:
        share = (np.arange(len(share)) == np.argmax(share)).astype(np.float64)
    total = share.sum()
    return share / total if total > 0 else share


def mean_weights(row: Encoded) -> np.ndarray:
    """``1/|R|`` on the predicted positions of a row: the weights of the per-token mean."""
    return token_weights(np.zeros(len(row.input_ids) - 1), np.asarray(row.loss_mask[1:], dtype=bool), 1.0)


def stack_weights(weights: Sequence[np.ndarray], width: int) -> torch.Tensor:
    """Per-row token weights (each of length ``len(input_ids) - 1``) right-padded to (B, width - 1)."""
    out = torch.zeros(len(weights), width - 1, dtype=torch.float64)
    for i, w in enumerate(weights):
        out[i, : len(w)] = torch.as_tensor(w)
    return out


def response_log_probs(
    model: nn.Module, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 8, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_{t in R} log p(x_t | x_<t), |R|)`` for every row (float64, int), no gradient, batched by length."""
    device = next(model.parameters()).device
    total = np.zeros(len(encoded), np.float64)
    count = np.zeros(len(encoded), np.int64)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    starts = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
            idx = order[start : start + batch_size]
            batch = Batch.collate([encoded[i] for i in idx], pad_id, device)
            total[idx] = (-sequence_losses(model, batch)).double().cpu().numpy()
            count[idx] = predicted_tokens(batch).cpu().numpy()
    return total, count


def correction_loss(
    infl_pos: torch.Tensor, logr_pos: torch.Tensor, infl_neg: torch.Tensor, logr_neg: torch.Tensor, beta: float
) -> torch.Tensor:
    """``L_COR = -mean_{i in D+, j in D-} log sigmoid(beta (-I_i log r_i - I_j log r_j))`` over every pair.

    With ``D-`` empty the ``D-`` term is dropped: ``-mean_i log sigmoid(-beta I_i log r_i)``.
    """
    push = -infl_pos * logr_pos
    if len(logr_neg):
        push = push[:, None] + (-infl_neg * logr_neg)[None, :]
    return -F.logsigmoid(beta * push).mean()


def bregman_loss(logr_zero: torch.Tensor) -> torch.Tensor:
    """``L_BD = mean_{z in D0} [r - log r - 1]`` with ``r = exp(log r)``; zero (0 if ``D0`` is empty)."""
    if not len(logr_zero):
        return logr_zero.sum()
    return (torch.exp(logr_zero) - logr_zero - 1.0).mean()


def proximity_loss(params: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], lam: float) -> torch.Tensor:
    """``lambda/2 sum_p ||theta_p - theta_ref,p||^2``; its gradient is ``lambda (theta - theta_ref)``."""
    return lam / 2 * sum(((p - r) ** 2).sum() for p, r in zip(params, refs))


@dataclass
class StepInputs:
    """Per-token mean log-ratios of one minibatch from each set, with the scaled scores of D+ and D-."""

    logr_pos: torch.Tensor
    logr_neg: torch.Tensor
    logr_zero: torch.Tensor
    infl_pos: torch.Tensor
    infl_neg: torch.Tensor
    beta: float


class Objective(Registered, noun="objective"):
    """A correction objective: the named loss terms of one step (the proximity term is added by the loop)."""

    name: ClassVar[str]
    help: ClassVar[str]
    sets: ClassVar[tuple[str, ...]]  # which of "pos", "neg", "zero" it reads
    proximity: ClassVar[bool]

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class IBO(Objective):
    """``L_COR + L_BD`` (+ proximity): push D+ down and D- up by influence, hold D0."""

    name, sets, proximity = "ibo", ("pos", "neg", "zero"), True
    help = "influence-based optimisation: L_COR + L_BD + lambda/2 ||theta - theta_ref||^2"

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        return {"cor": correction_loss(x.infl_pos, x.logr_pos, x.infl_neg, x.logr_neg, x.beta),
                "bd": bregman_loss(x.logr_zero)}


class GradientAscent(Objective):
    """``L_GA = mean_{z in D+} log r(z)``: maximise the per-token NLL of D+ (same gradient as log pi_theta)."""

    name, sets, proximity = "ga", ("pos",), False
    help = "gradient ascent on D+ (maximise its negative log-likelihood)"

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        return {"ga": x.logr_pos.mean()}


class PBO(Objective):
    """``L_GA + L_BD`` (+ proximity)."""

    name, sets, proximity = "pbo", ("pos", "zero"), True
    help = "gradient ascent on D+ with the Bregman term on D0 and proximity"

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        return {"ga": x.logr_pos.mean(), "bd": bregman_loss(x.logr_zero)}


# --------------------------------------------------------------------------------------------
# Evaluation: behaviour margin and perplexity
# --------------------------------------------------------------------------------------------


def behavior_margin(lm: LoadedModel, pairs: Sequence[Pair], max_length: int | None = None, batch_size: int = 8,
                    desc: str | None = None) -> float:
    """``mean_j [mean_t log p(treatment_j) - mean_t log p(control_j)]`` (per-token means over the response)."""
    encoded = encode_conversations(lm, pair_conversations(pairs), max_length)
    total, count = response_log_probs(lm.model, encoded, lm.tokenizer.pad_token_id,
                                      batch_size, desc)
    mean = total / np.maximum(count, 1)
    n = len(pairs)
    return float((mean[:n] - mean[n:]).mean())


def perplexity(lm: LoadedModel, encoded: Sequence[Encoded], batch_size: int = 8, desc: str | None = None) -> float:
    """``exp(-sum_rows sum_{t in R} log p / sum_rows |R|)`` over the response tokens of the rows."""
    total, count = response_log_probs(lm.model, encoded, lm.tokenizer.pad_token_id, batch_size, desc)
    return float(np.exp(-total.sum() / max(int(count.sum()), 1)))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def lora_targets(model: nn.Module) -> list[str]:
    """Every linear projection inside the decoder blocks (attention and MLP), by module name."""
    return select_grad_modules(model)


def _trainable(model: nn.Module, config: CorrectConfig) -> nn.Module:
    """The model to train: a PEFT LoRA wrapper by default, or the model with every weight trainable."""
    if type(model).__name__.startswith("Peft"):  # a model that already carries adapters: fold them in first
        model = model.merge_and_unload()
    if config.full:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                      target_modules=lora_targets(model), bias="none")
    torch.manual_seed(config.seed)
    return get_peft_model(model, lora)


class _Sampler:
    """Minibatches of one set: the whole set when it fits, else successive random permutations."""

    def __init__(self, n: int, size: int, gen: torch.Generator):
        self.n, self.size, self.gen = n, size, gen
        self.queue: list[int] = []

    def next(self) -> list[int]:
        if self.n <= self.size:
            return list(range(self.n))
        if len(self.queue) < self.size:
            self.queue += torch.randperm(self.n, generator=self.gen).tolist()
        out, self.queue = self.queue[: self.size], self.queue[self.size :]
        return out


def train(
    model: nn.Module,
    objective: Objective,
    sets: dict[str, list[Encoded]],
    ref: dict[str, torch.Tensor],
    influence: dict[str, torch.Tensor],
    config: CorrectConfig,
    pad_id: int,
    progress: bool = True,
    weights: dict[str, list[np.ndarray]] | None = None,
) -> list[dict[str, float]]:
    """Adam on ``sum(objective terms) (+ L_prox)`` for ``config.steps`` steps; returns the terms per step.

    ``sets`` maps ``pos``/``neg``/``zero`` to encoded rows, ``ref`` to their reference per-token mean
    log-probs and ``influence`` to their scaled scores. One forward pass per step covers the
    minibatches of every set the objective reads. ``weights`` gives some sets per-token weights
    (:func:`token_weights`; ``ref`` must then hold the same weighted means); other sets use the mean.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ActindexError("the model has no trainable parameter")
    refs = [p.detach().clone() for p in params]
    device = params[0].device
    optimizer = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    samplers = {name: _Sampler(len(sets[name]), config.batch_size, gen) for name in objective.sets}
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc=f"correct ({objective.name})", disable=not progress, dynamic_ncols=True)
    for step in bar:
        chosen = {name: samplers[name].next() if name in samplers else [] for name in ("pos", "neg", "zero")}
        encoded = [sets[name][i] for name in ("pos", "neg", "zero") for i in chosen[name]]
        with torch.enable_grad():
            batch = Batch.collate(encoded, pad_id, device)
            w = None
            if weights:
                rows_w = [weights[name][i] if name in weights else mean_weights(sets[name][i])
                          for name in ("pos", "neg", "zero") for i in chosen[name]]
                w = stack_weights(rows_w, batch.input_ids.shape[1]).to(device)
            logp = mean_log_probs(model, batch, w)
            parts = torch.split(logp, [len(chosen["pos"]), len(chosen["neg"]), len(chosen["zero"])])
            logr = {name: part - ref[name][chosen[name]].to(part) for name, part in zip(("pos", "neg", "zero"), parts)}
            infl = {name: influence[name][chosen[name]].to(logp) for name in ("pos", "neg")}
            terms = objective.terms(StepInputs(logr["pos"], logr["neg"], logr["zero"], infl["pos"], infl["neg"],
                                               config.beta))
            if objective.proximity:
                terms["prox"] = proximity_loss(params, refs, config.lambda_prox)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise ActindexError(f"the loss became non-finite at step {step + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append({name: float(value.detach()) for name, value in terms.items()})
        bar.set_postfix({name: f"{value:.4f}" for name, value in history[-1].items()})
    bar.close()
    return history


# --------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------


@dataclass
class Correction:
    """What :func:`correct` did: the report (also saved as ``correction.json``) and the corrected model."""

    report: dict[str, Any]
    model: LoadedModel
    selection: Selection
    history: list[dict[str, float]] = field(default_factory=list)


def _rows_of(index: Index, rows: np.ndarray, max_length: int | None, tokenizer: Any) -> list[Encoded]:
    records = index.records(rows)
    return [encode_row(tokenizer, normalise_record(index.root, int(r) + 1, int(r), rec), max_length)
            for r, rec in zip(rows, records)]


def index_scores(
    index: Index, behavior: Behavior, method: str = DEFAULT_VECTOR_METHOD, layer: int | None = None
) -> np.ndarray:
    """The index ranking's cosine score of every row (NaN for rows the index could not embed)."""
    result = index.query(behavior, method=method, layer=layer, k=0)
    scores = np.full(len(index), np.nan)
    for hit in result.top:
        scores[hit.row] = hit.score
    return scores


def query_token_weights(
    index: Index, behavior: Behavior, layer: int | None, sets: dict[str, list[Encoded]], progress: bool = False,
    top: bool = False,
) -> dict[str, list[np.ndarray]]:
    """Token weights of the D+ and D- rows from their residual-change score against the behaviour.

    ``psi`` is the behaviour's residual-change query vector at ``layer``; each row's score
    ``<t_l(x), psi>`` is split over its response tokens (:func:`vectors.residual_change_token_scores`)
    and :func:`token_weights` keeps the tokens with the row's sign (positive for D+, negative for D-),
    or with ``top`` the one token with the largest share.
    """
    psi, _, _ = index.query_vector(behavior, "residual-change", layer)
    at = index.resolve_layer(layer)
    lm = index.model()
    out = {}
    for name, sign in (("pos", 1.0), ("neg", -1.0)):
        rows = tqdm(sets[name], desc=f"token weights ({name})", disable=not progress, leave=False, dynamic_ncols=True)
        out[name] = [token_weights(residual_change_token_scores(lm.model, row, at, psi, lm.tokenizer.pad_token_id),
                                   np.asarray(row.loss_mask[1:], dtype=bool), sign, top) for row in rows]
    return out


def weighted_log_probs(model: nn.Module, encoded: Sequence[Encoded], weights: Sequence[np.ndarray],
                       pad_id: int) -> torch.Tensor:
    """``sum_{t in R} w_t log p(x_t | x_<t)`` of each row, no gradient (the reference of weighted rows)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        values = [mean_log_probs(model, Batch.collate([row], pad_id, device),
                                 stack_weights([w], len(row.input_ids)).to(device)) for row, w in zip(encoded, weights)]
    return torch.cat(values).double().cpu() if values else torch.zeros(0, dtype=torch.float64)


def _carriers(tokenizer: Any, encoded: Sequence[Encoded], weights: Sequence[np.ndarray], top: int = 3) -> list[list]:
    """For each row, its ``top`` heaviest tokens as ``[text, weight]`` (shown in the report)."""
    out = []
    for row, w in zip(encoded, weights):
        heaviest = np.argsort(-w)[:top]
        out.append([[tokenizer.decode([row.input_ids[p + 1]]), round(float(w[p]), 3)] for p in heaviest if w[p] > 0])
    return out


def _held_out_pairs(config: CorrectConfig, behavior: Behavior, lm: LoadedModel) -> tuple[list[Pair], str]:
    if config.held_out:
        held = Behavior(name="held-out", pairs=load_pairs(Path(config.held_out)), source=config.held_out)
        return complete_behavior(held, lm).pairs, config.held_out
    return behavior.pairs, f"the behaviour's own pairs ({behavior.source or behavior.name}; they also formed the query)"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ActindexError(f"{out} exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)


def save_corrected(model: nn.Module, lm: LoadedModel, out: Path, merge: bool) -> str:
    """Write the corrected model to ``out`` (replaced atomically); returns the format written.

    ``peft-adapter``: ``save_pretrained`` of the adapter, its ``base_model_name_or_path`` set to the
    name the base model was loaded by; ``merged``: full weights via :func:`models.save_weights`, also
    when the base model is itself an adapter directory (an adapter over an adapter would not load).
    """
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out.parent))
    try:
        is_peft = type(model).__name__.startswith("Peft")
        if is_peft and not merge and not is_adapter_dir(lm.name):
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = lm.name
            model.save_pretrained(str(staging), save_embedding_layers=False)  # no hub lookup: embeddings not adapted
            lm.tokenizer.save_pretrained(str(staging))
            kind = "peft-adapter"
        else:
            plain = copy.deepcopy(model).merge_and_unload() if is_peft else model
            save_weights(plain, lm.tokenizer, staging)
            kind = "merged"
        if out.is_symlink() or out.is_file():
            out.unlink()  # a link is replaced, never followed
        elif out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return kind


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
    """Correct a model against a behaviour and save it to ``out`` (see the module docstring).

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
    out = Path(out)
    _prepare_out(out, config.overwrite)
    index = index if isinstance(index, Index) else Index.open(index)
    if lm is not None:
        index.use_model(lm)
    ranker = index.model()
    lm = index.companion_model(target, "--target") if target is not None else ranker
    behavior = index.behavior(behavior)
    max_length = config.max_length or index.manifest.max_length
    if scores is None:
        scores = index_scores(index, behavior, config.method, config.layer)
        ranking = f"index ranking, method {config.method}"
    else:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        ranking = "scores given by the caller"
        if len(scores) != len(index):
            raise ActindexError(f"scores has {len(scores)} values but the index has {len(index)} rows")
    selection = select_rows(scores, config.select, config.k, config.k0)
    objective = Objective.get(config.algo)
    pad_id = lm.tokenizer.pad_token_id

    # held-out evaluation sets: the behaviour pairs, and a fixed sample of rows outside D+, D-, D0
    pairs, pairs_source = _held_out_pairs(config, behavior, lm)
    used = np.concatenate([selection.pos, selection.neg, selection.zero])
    valid = np.flatnonzero(np.isfinite(selection.influence))
    pool = np.setdiff1d(valid, used)
    rng = np.random.default_rng(config.seed)
    ppl_rows = np.sort(rng.choice(pool, size=min(config.ppl_rows, len(pool)), replace=False))
    ppl_encoded = _rows_of(index, ppl_rows, max_length, lm.tokenizer)
    bs = config.batch_size
    say = (lambda text: text) if progress else (lambda text: None)
    before = {"margin": behavior_margin(lm, pairs, max_length, bs, say("margin (before)")),
              "perplexity": perplexity(lm, ppl_encoded, bs, say("perplexity (before)")) if len(ppl_rows) else None}

    # the sets, their reference log-probs (once, from the model before correction) and scores
    rows = {"pos": selection.pos, "neg": selection.neg, "zero": selection.zero}
    sets = {name: _rows_of(index, r, max_length, lm.tokenizer) for name, r in rows.items()}
    for name, encoded in sets.items():
        if any(not any(row.loss_mask[1:]) for row in encoded):
            raise ActindexError(f"a row of {name} has no response token within --max-length {max_length}")
    weights, carriers = {}, {}
    if config.token_weights != "mean":
        weights = query_token_weights(index, behavior, config.layer, sets, progress, config.token_weights == "top")
        carriers = {"D+ tokens": _carriers(lm.tokenizer, sets["pos"], weights["pos"]),
                    "D- tokens": _carriers(lm.tokenizer, sets["neg"], weights["neg"])}
    ref = {}
    for name, encoded in sets.items():
        if name in weights:
            ref[name] = weighted_log_probs(lm.model, encoded, weights[name], pad_id)
        else:
            total, count = response_log_probs(lm.model, encoded, pad_id, bs)
            ref[name] = torch.tensor(total / count)
    influence = {name: torch.tensor(selection.influence[r]) for name, r in rows.items()}

    model = _trainable(copy.deepcopy(lm.model), config)
    model.eval()  # no dropout: the loss terms are deterministic functions of theta
    history = train(model, objective, sets, ref, influence, config, pad_id, progress, weights)
    for param in model.parameters():
        param.requires_grad_(False)
    fmt = save_corrected(model, lm, out, config.merge or config.full)
    corrected = wrap_model(model, lm.tokenizer, str(out))
    after = {"margin": behavior_margin(corrected, pairs, max_length, bs, say("margin (after)")),
             "perplexity": perplexity(corrected, ppl_encoded, bs, say("perplexity (after)")) if len(ppl_rows) else None}

    ids = index.ids()
    report = {
        "algo": config.algo,
        "behavior": behavior.name,
        "index": str(index.root),
        "model": lm.name,
        "ranking": ranking,
        "ranking model": ranker.name,
        "selection": {"rule": config.select, **selection.sizes(),
                      "D+ ids": [ids[i] for i in selection.pos], "D- ids": [ids[i] for i in selection.neg],
                      **carriers},
        "margin": {"before": before["margin"], "after": after["margin"],
                   "change": after["margin"] - before["margin"], "pairs": len(pairs), "source": pairs_source},
        "perplexity": {"before": before["perplexity"], "after": after["perplexity"], "rows": len(ppl_rows),
                       "source": f"{len(ppl_rows)} index rows outside D+, D- and D0 (random, seed {config.seed})"},
        "loss": {"first": history[0], "last": history[-1]},
        "steps": config.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "saved": {"path": str(out), "format": fmt},
        "config": asdict(config),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return Correction(report=report, model=corrected, selection=selection, history=history)
