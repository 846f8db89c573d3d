"""The correction objectives: the named loss terms of one training step (docs/design.md#correction).

An objective is a few lines (:class:`Objective`, listed in :data:`OBJECTIVES`): which of the sets ``D+``, ``D-``,
``D0`` it reads (``sets``; the training loop draws minibatches only from those), whether the loop adds the
proximity term ``lambda/2 ||theta - theta_ref||^2`` (``proximity``), and :meth:`Objective.terms`, its loss terms
from the log-ratios of one minibatch (:class:`StepInputs`). The loss minimised is the sum of the terms
(:func:`correction_loss`, :func:`bregman_loss`, :func:`proximity_loss`, with ``log r`` a row's per-token mean
log-ratio ``mean_{t in R} [log pi_theta - log pi_ref]`` and ``I`` its scaled score). This module imports no tensor
library at import time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from actindex.registry import Registered

if TYPE_CHECKING:
    import torch


@dataclass
class StepInputs:
    """Per-token mean log-ratios of one minibatch from each set, with the scaled scores of D+ and D-."""

    logr_pos: torch.Tensor
    logr_neg: torch.Tensor
    logr_zero: torch.Tensor
    infl_pos: torch.Tensor
    infl_neg: torch.Tensor
    beta: float


class Objective(Registered, noun="objective", listed=True):
    """A correction objective: the named loss terms of one step (the proximity term is added by the loop)."""

    name: ClassVar[str]
    help: ClassVar[str]
    sets: ClassVar[tuple[str, ...]]  # which of "pos", "neg", "zero" it reads
    proximity: ClassVar[bool]

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError


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


#: the registry, in the order of ``--algo``'s choices
OBJECTIVES = (IBO, GradientAscent, PBO)
Objective.register(*OBJECTIVES)


def objective_names() -> list[str]:
    """Every registered objective, for ``--algo``'s choices."""
    return list(Objective.registry)
