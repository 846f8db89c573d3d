"""Exact influence of training rows on a query, computed token by token (docs/design.md#influence).

With ``P = precond(q)`` per module, ``I(m) = sum_modules <P, G_m> = sum_t sum_modules delta_{m,t}^T P a_{m,t}``;
``G_m`` is never formed. The per-module terms sum to ``I(m)``, and so do the per-token terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from actindex.core.encode import Encoded
from actindex.core.vectors import RademacherProjector, compute_dtype
from actindex.query.curvature.kron import Curvature
from actindex.query.curvature.passes import batches, capture, progress_bar


def token_influence(a: torch.Tensor, delta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``delta_t^T P a_t`` for every token, (B, T), float64: summed over ``t`` it is ``<P, G>``.

    The products run in the model's precision (float32, or float64 for a float64 model)."""
    dtype = compute_dtype(a)
    return ((delta.to(dtype) @ p.to(device=a.device, dtype=dtype)) * a.to(dtype)).sum(-1).double()


@dataclass
class Influence:
    """Influence of rows on a behaviour: totals, per-module terms and (optionally) per-token terms."""

    total: np.ndarray  # (N,)
    per_module: np.ndarray  # (N, M), sums to total
    modules: list[str]
    token_ids: list[list[int]] | None = None
    per_token: list[np.ndarray] | None = None  # row n: (T_n,), sums to total[n]


def influence_scores(
    model: nn.Module,
    encoded: Sequence[Encoded],
    preconditioned: dict[str, torch.Tensor],
    pad_id: int,
    batch_size: int = 8,
    per_token: bool = False,
    progress: bool = False,
) -> Influence:
    """``I(m) = sum_modules sum_t delta_{m,t}^T P a_{m,t}`` with ``P = precond(q)``, for each row ``m``.

    ``delta`` comes from the row's own training loss (data labels), so ``sum_t delta_t a_t^T`` is
    ``grad L(x_m)`` and the score is ``<precond(-grad phi), grad L(x_m)>``; ``G_m`` is never formed.
    """
    parameter = next(model.parameters())
    device = parameter.device
    names = list(preconditioned)
    preconditioned = {name: p.to(device=device, dtype=compute_dtype(parameter)) for name, p in preconditioned.items()}
    n = len(encoded)
    per_module = np.zeros((n, len(names)))
    tokens: list[np.ndarray | None] = [None] * n
    bar = progress_bar(n, "influence", progress)
    for idx, batch in batches(encoded, batch_size, pad_id, device):
        captured = capture(model, batch, names)
        token_sum = 0.0
        for j, name in enumerate(names):
            a, delta = captured[name]
            terms = token_influence(a, delta, preconditioned[name])
            per_module[idx, j] = terms.sum(1).cpu().numpy()
            token_sum = token_sum + terms
        if per_token:
            for b, i in enumerate(idx):
                tokens[i] = token_sum[b, : len(encoded[i].input_ids)].cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return Influence(
        total=per_module.sum(1),
        per_module=per_module,
        modules=names,
        token_ids=[list(e.input_ids) for e in encoded] if per_token else None,
        per_token=tokens if per_token else None,  # type: ignore[arg-type]
    )


def gradient_sq_norms(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``||G_b||_F^2 = sum_{t,s} <delta_t, delta_s> <a_t, a_s>`` per row (B,), float64, for
    ``G_b = sum_t delta_{b,t} a_{b,t}^T``: two (T x T) Gram matrices instead of the (O x I) gradient."""
    dtype = compute_dtype(a)
    a, delta = a.to(dtype), delta.to(dtype)
    return ((delta @ delta.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2)).double()


def influence_matrix(
    model: nn.Module,
    encoded: Sequence[Encoded],
    preconditioned: Sequence[dict[str, torch.Tensor]],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
    curvature: Curvature | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Several queries in one pass: ``(I, norms)`` with ``I[m, c] = sum_modules <P_c, G_m>`` for each
    preconditioned query ``P_c`` (as in :func:`influence_scores`) and, over the same modules,
    ``norms[m] = ||G_m||`` (Frobenius), or with ``curvature`` the RelatIF norm
    ``norms[m] = sqrt(<G_m, precond(G_m)>)`` (Barshan et al. 2020). ``I[m, c] / norms[m]`` is then
    the influence of a unit step along the row's own gradient, in plain or curvature geometry."""
    parameter = next(model.parameters())
    dtype, device = compute_dtype(parameter), parameter.device
    names = list(preconditioned[0]) if preconditioned else []
    queries = [{n: p[n].to(device=device, dtype=dtype) for n in names} for p in preconditioned]
    scores = np.zeros((len(encoded), len(queries)))
    sq = np.zeros(len(encoded))
    bar = progress_bar(len(encoded), "influence", progress)
    for idx, batch in batches(encoded, batch_size, pad_id, device):
        captured = capture(model, batch, names)
        for name in names:
            a, delta = captured[name]
            own = gradient_sq_norms(a, delta) if curvature is None else curvature.modules[name].self_influence(a, delta)
            sq[idx] += own.cpu().numpy()
            for c, query in enumerate(queries):
                scores[idx, c] += token_influence(a, delta, query[name]).sum(1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return scores, np.sqrt(np.maximum(sq, 0.0))


def project_blocks(
    grads: dict[str, torch.Tensor], modules: Sequence[str], projector: RademacherProjector
) -> np.ndarray:
    """``concat_modules vec_row(P_out V P_in^T)``: the layout of the ``gradient`` family."""
    blocks = []
    for name in modules:
        v = grads[name].float().cpu()
        p_in = projector.matrix(f"{name}.in", v.shape[1], torch.device("cpu"))
        p_out = projector.matrix(f"{name}.out", v.shape[0], torch.device("cpu"))
        blocks.append((p_out @ v @ p_in.T).reshape(-1))
    return torch.cat(blocks).numpy()
