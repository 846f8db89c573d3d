"""The loss terms of the objectives (module docstring of :mod:`actindex.act.correct`).

``log r`` is a row's per-token mean log-ratio ``mean_{t in R} [log pi_theta - log pi_ref]``, ``I`` its
scaled score. Torch is imported only when a loss is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def correction_loss(
    infl_pos: torch.Tensor, logr_pos: torch.Tensor, infl_neg: torch.Tensor, logr_neg: torch.Tensor, beta: float
) -> torch.Tensor:
    """``L_COR = -mean_{i in D+, j in D-} log sigmoid(beta (-I_i log r_i - I_j log r_j))`` over every pair.

    With ``D-`` empty the ``D-`` term is dropped: ``-mean_i log sigmoid(-beta I_i log r_i)``.
    """
    import torch.nn.functional as F

    push = -infl_pos * logr_pos
    if len(logr_neg):
        push = push[:, None] + (-infl_neg * logr_neg)[None, :]
    return -F.logsigmoid(beta * push).mean()


def bregman_loss(logr_zero: torch.Tensor) -> torch.Tensor:
    """``L_BD = mean_{z in D0} [r - log r - 1]`` with ``r = exp(log r)``; zero (0 if ``D0`` is empty)."""
    if not len(logr_zero):
        return logr_zero.sum()
    return (logr_zero.exp() - logr_zero - 1.0).mean()


def proximity_loss(params: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], lam: float) -> torch.Tensor:
    """``lambda/2 sum_p ||theta_p - theta_ref,p||^2``; its gradient is ``lambda (theta - theta_ref)``."""
    return lam / 2 * sum(((p - r) ** 2).sum() for p, r in zip(params, refs))
