"""``pbo``: gradient ascent on ``D+`` held back by the Bregman term on ``D0`` and proximity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.act.correct.objectives.base import Objective, StepInputs
from actindex.act.correct.objectives.losses import bregman_loss

if TYPE_CHECKING:
    import torch


class PBO(Objective):
    """``L_GA + L_BD`` (+ proximity)."""

    name, sets, proximity = "pbo", ("pos", "zero"), True
    help = "gradient ascent on D+ with the Bregman term on D0 and proximity"

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        return {"ga": x.logr_pos.mean(), "bd": bregman_loss(x.logr_zero)}
