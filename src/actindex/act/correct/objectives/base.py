"""What a correction objective is: the named loss terms of one training step (docs/design.md#correction).

An objective is one small registered class (:class:`Objective`) in one file of this package: which of
the sets ``D+``, ``D-``, ``D0`` it reads (``sets``; the training loop draws minibatches only from
those), whether the loop adds the proximity term ``lambda/2 ||theta - theta_ref||^2`` (``proximity``),
and :meth:`Objective.terms`, its loss terms from the log-ratios of one minibatch (:class:`StepInputs`).
The loss minimised is the sum of the terms. Modules here import no tensor library at import time.
"""

from __future__ import annotations

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


class Objective(Registered, noun="objective"):
    """A correction objective: the named loss terms of one step (the proximity term is added by the loop)."""

    name: ClassVar[str]
    help: ClassVar[str]
    sets: ClassVar[tuple[str, ...]]  # which of "pos", "neg", "zero" it reads
    proximity: ClassVar[bool]

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def objective_names() -> list[str]:
    """Every registered objective, for ``--algo``'s choices."""
    return list(Objective.registry)
