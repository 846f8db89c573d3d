"""Log-probabilities of a row's response tokens ``R``: what every term of the correction is made of.

For a row ``x`` with response tokens ``R`` (the positions ``loss_mask`` marks, each predicted from
the tokens before it), training reads the per-token mean ``mean_{t in R} log p(x_t | x_<t)`` or a
weighted mean ``sum_{t in R} w_t log p(x_t | x_<t)`` (:mod:`actindex.act.correct.weighting`), with
gradient; the reference ``pi_ref`` and the evaluation read the sums, without.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from actindex.core.encode import Encoded
from actindex.core.vectors import Batch, sequence_losses
from actindex.progress import bar


def predicted_tokens(batch: Batch) -> torch.Tensor:
    """``|R|``: response tokens that have a prediction (a token at position 0 has none), shape (B,)."""
    return batch.loss_mask[:, 1:].sum(1)


def mean_log_probs(model: nn.Module, batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_{t in R} log p(x_t | x_<t) = -L(x) / |R|`` per row (differentiable), shape (B,); with
    ``weights`` (B, T-1) summing to 1 over each row's R, the weighted mean ``sum_{t in R} w_t log p(x_t | x_<t)``."""
    if weights is not None:
        return -sequence_losses(model, batch, weights=weights)
    return -sequence_losses(model, batch) / predicted_tokens(batch).clamp(min=1)


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
        for start in bar(starts, show=desc is not None, desc=desc, leave=False):
            idx = order[start : start + batch_size]
            batch = Batch.collate([encoded[i] for i in idx], pad_id, device)
            total[idx] = (-sequence_losses(model, batch)).double().cpu().numpy()
            count[idx] = predicted_tokens(batch).cpu().numpy()
    return total, count


def weighted_log_probs(model: nn.Module, encoded: Sequence[Encoded], weights: Sequence[np.ndarray],
                       pad_id: int) -> torch.Tensor:
    """``sum_{t in R} w_t log p(x_t | x_<t)`` of each row, no gradient (the reference of weighted rows)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        values = [mean_log_probs(model, Batch.collate([row], pad_id, device),
                                 stack_weights([w], len(row.input_ids)).to(device)) for row, w in zip(encoded, weights)]
    return torch.cat(values).double().cpu() if values else torch.zeros(0, dtype=torch.float64)


def reference_log_probs(
    model: nn.Module, sets: dict[str, list[Encoded]], weights: dict[str, list[np.ndarray]], pad_id: int,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """``log pi_ref`` of every row of each set, once, from the model before correction: the weighted mean
    for the sets ``weights`` covers, the per-token mean for the others."""
    ref = {}
    for name, encoded in sets.items():
        if name in weights:
            ref[name] = weighted_log_probs(model, encoded, weights[name], pad_id)
        else:
            total, count = response_log_probs(model, encoded, pad_id, batch_size)
            ref[name] = torch.tensor(total / count)
    return ref
