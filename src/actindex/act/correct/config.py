"""Settings of ``actindex correct`` (:class:`CorrectConfig`).

The choices of ``--algo``, ``--select`` and ``--token-weights`` are the names of their registries
(:mod:`~actindex.act.correct.objectives`, :mod:`~actindex.act.correct.selection`,
:mod:`~actindex.act.correct.weighting`). This module imports no tensor library: the CLI reads it
without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from actindex.act.correct.objectives import objective_names
from actindex.act.correct.selection import selection_names
from actindex.act.correct.weighting import weighting_names
from actindex.configs import check_choices, option
from actindex.errors import ActindexError
from actindex.query.methods import DEFAULT_VECTOR_METHOD, method_names


@dataclass
class CorrectConfig:
    """Settings of ``actindex correct``."""

    algo: str = option("Objective: ibo (influence-based), ga (gradient ascent on D+) or pbo (GA + Bregman + "
                       "proximity).", "ibo", choices=objective_names)
    select: str = option("How D+/D-/D0 are chosen: topk (k most positive, k most negative, k0 nearest zero) or "
                         "pareto (rows above the knee of each side's sorted |I| curve, at most k per side).", "topk",
                         choices=selection_names)
    k: int = option("Rows in D+ and in D- (topk), or the most per side (pareto).", 16, minimum=1)
    k0: int | None = option("Rows in D0 (default: as many as the larger of D+ and D-).", None, minimum=1)
    beta: float = option("Temperature beta of L_COR.", 2.0)
    lambda_prox: float = option("Weight lambda of the proximity term lambda/2 ||theta - theta_ref||^2.", 0.1)
    steps: int = option("Optimiser steps.", 40, minimum=1)
    lr: float | None = option("Adam learning rate (default: 1e-3 for LoRA, 2e-5 with --full).", None)
    lora_rank: int = option("LoRA rank r (alpha = 2r) on the attention and MLP projections.", 8, minimum=1)
    full: bool = option("Fine-tune every weight instead of LoRA adapters.", False)
    merge: bool = option("Save merged weights instead of a PEFT adapter.", False)
    batch_size: int = option("Rows drawn from each of D+, D-, D0 per step (a set this small or smaller is used whole).",
                             8, minimum=1)
    method: str = option("Query method that ranks the rows (see actindex query --help-methods).", DEFAULT_VECTOR_METHOD,
                         choices=method_names)
    layer: int | None = option("Layer to query (default: the indexed layer nearest 60% of the depth).", None)
    held_out: str | None = option("Pairs JSONL {prompt, treatment, control} for the behaviour margin "
                                  "(default: the behaviour's own pairs).", None)
    ppl_rows: int = option("Held-out rows for perplexity: a fixed random sample (seed) of the index's rows outside "
                           "D+, D- and D0.", 64, minimum=1)
    seed: int = option("Seed of the LoRA initialisation, minibatch order and perplexity sample.", 0)
    max_length: int | None = option("Tokens per row (default: the index's build setting).", None, minimum=1)
    token_weights: str = option(
        "How log r averages the response tokens of a D+/D- row: mean (the per-token mean) or query "
        "(each token weighted by its share of the row's residual-change score against the behaviour, so the "
        "tokens that carry the behaviour are the ones pushed; a memorised planted token hardly moves under "
        "the mean, see bench/RESULTS.md), or top (all the weight on the row's highest-share token). D0 always "
        "uses the mean.", "mean", choices=weighting_names)
    overwrite: bool = option("Replace an existing output directory.", False)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("beta", "lambda_prox"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "beta" and value == 0):
                raise ActindexError(f"--{name.replace('_', '-')} must be a finite number above 0, got {value}")
        if self.lr is None:
            self.lr = 2e-5 if self.full else 1e-3
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ActindexError(f"--lr must be a finite number above 0, got {self.lr}")
