"""``mean_activation/<l>`` — the mean response activation of block ``l`` (docs/design.md#mean-activation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import Captured, VectorFamily
from actindex.core.families.residual_change import masked_mean

if TYPE_CHECKING:
    import torch


class MeanActivation(VectorFamily):
    """``a_l(x) = mean_R z_out``: the block's output averaged over the response tokens (forward only)."""

    name = "mean_activation"
    help = "mean activation of the block output over the response tokens"

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        return masked_mean(captured.z_out[layer].float(), captured.r_mask)
