"""``ibo``: influence-based optimisation, ``L_COR + L_BD`` (+ proximity)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.act.correct.objectives.base import Objective, StepInputs
from actindex.act.correct.objectives.losses import bregman_loss, correction_loss

if TYPE_CHECKING:
    import torch


class IBO(Objective):
    """``L_COR + L_BD`` (+ proximity): push D+ down and D- up by influence, hold D0."""

    name, sets, proximity = "ibo", ("pos", "neg", "zero"), True
    help = "influence-based optimisation: L_COR + L_BD + lambda/2 ||theta - theta_ref||^2"

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        return {"cor": correction_loss(x.infl_pos, x.logr_pos, x.infl_neg, x.logr_neg, x.beta),
                "bd": bregman_loss(x.logr_zero)}
