"""``ga``: gradient ascent on ``D+``, the baseline that only forgets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.act.correct.objectives.base import Objective, StepInputs

if TYPE_CHECKING:
    import torch


class GradientAscent(Objective):
    """``L_GA = mean_{z in D+} log r(z)``: maximise the per-token NLL of D+ (same gradient as log pi_theta)."""

    name, sets, proximity = "ga", ("pos",), False
    help = "gradient ascent on D+ (maximise its negative log-likelihood)"

    def terms(self, x: StepInputs) -> dict[str, torch.Tensor]:
        return {"ga": x.logr_pos.mean()}
