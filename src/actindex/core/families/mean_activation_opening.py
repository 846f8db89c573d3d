"""``mean_activation_opening/<l>`` — the mean activation of the response's opening (a length-robust variant)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import OPENING_TOKENS, Captured
from actindex.core.families.mean_activation import MeanActivation
from actindex.core.families.mean_activation_start import first_positions
from actindex.core.families.residual_change import masked_mean

if TYPE_CHECKING:
    import torch


class MeanActivationOpening(MeanActivation):
    """``a_l^W(x) = mean z_out`` over the first ``W`` response tokens (docs/design.md#response-opening):
    a long answer's tail cannot dilute what its opening shows; a row no longer than ``W`` tokens has the same
    vector in both families.

    A causal model's activations over the first ``W`` response tokens do not depend on the tokens after them, so
    this is the mean activation of the row cut after ``W`` response tokens, computed from the row's own pass (no
    second pass: unlike the residual change's opening, it needs no gradient of the opening's loss)."""

    name = "mean_activation_opening"
    help = f"mean activation over the first {OPENING_TOKENS} response tokens (length-robust)"

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        return masked_mean(captured.z_out[layer].float(), first_positions(captured.r_mask, OPENING_TOKENS))
