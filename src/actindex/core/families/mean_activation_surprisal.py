"""``mean_activation_surprisal/<l>`` — the response activation weighted by each token's loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import Captured
from actindex.core.families.mean_activation import MeanActivation

if TYPE_CHECKING:
    import torch


class MeanActivationSurprisal(MeanActivation):
    """``a_l^L(x) = sum_{t in R} l_t z_out,t / sum_{t in R} l_t`` with ``l_t = -log p(x_t | x_<t)``: the block's
    output over the response, each token weighted by its share of the row's loss (docs/design.md#surprisal).

    A long answer's ordinary tokens (background the model could have written itself) have a small loss;
    the tokens that make a row unusual to the model (an invented name or date, a fabricated claim, a
    trigger's answer) carry most of it, wherever in the answer they sit. The plain mean lets the first
    drown the second; this weighting keeps a fabrication that comes after paragraphs of accurate text.
    Computed from the build's own pass (its per-token losses); a row whose response tokens all have zero
    loss gets the plain mean.
    """

    name = "mean_activation_surprisal"
    help = "mean activation over the response tokens weighted by each token's loss (length-robust)"
    token_loss = True

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        z = captured.z_out[layer].float()
        mask = captured.r_mask.to(z.dtype)
        assert captured.token_loss is not None, "the pass keeps the token losses for this family"
        weights = captured.token_loss.to(z.dtype).clamp(min=0) * mask
        weights = weights.where(weights.sum(1, keepdim=True) > 0, mask)  # no loss at all: the plain mean
        return (z * weights[..., None]).sum(1) / weights.sum(1).clamp(min=1e-30)[:, None]
