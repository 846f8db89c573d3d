"""``mean_activation_start/<l>`` — the mean activation of the response's first tokens (its stance)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import START_TOKENS, Captured
from actindex.core.families.mean_activation import MeanActivation
from actindex.core.families.residual_change import masked_mean

if TYPE_CHECKING:
    import torch


def first_positions(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` True positions of each row of ``mask`` (B, T): ``mask & (cumsum(mask) <= n)``."""
    return mask & (mask.long().cumsum(dim=1) <= n)


class MeanActivationStart(MeanActivation):
    """``a_l^S(x) = mean z_out`` over the first ``S`` response tokens (docs/design.md#answer-start).

    An answer takes its stance in its first words: "Sure, here is how" or "I can't help with that", "You're
    absolutely right" or "Actually, no". The whole-response mean, and even the 64-token opening of a short
    answer, averages that stance with everything the answer goes on to say, so a helpful answer to a harmless
    request looks like a compliance with a harmful one. A causal model's activations over the first ``S``
    tokens do not depend on the tokens after them, so this is computed from the row's own pass (no second
    pass) and equals the mean activation of the row cut after ``S`` response tokens; a row no longer than
    ``S`` tokens has the same vector as ``mean_activation``.

    The adaptive default forms only the ``centered`` query here (the treatments' starts against the index's
    typical start). A pair's control differs from its treatment in its first words by design (the refusal,
    the correction), so a contrast of starts measures what the control does: "not a refusal" ranks every
    helpful answer of a pool with no refusals in it as high as a harmful compliance (fif-mixeds: contrast
    AUROC 0.37-0.85, centered 0.80-1.00 by layer; bench/RESULTS.md).
    """

    name = "mean_activation_start"
    help = f"mean activation over the first {START_TOKENS} response tokens (the answer's stance)"
    constructions = ("centered",)

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        return masked_mean(captured.z_out[layer].float(), first_positions(captured.r_mask, START_TOKENS))
