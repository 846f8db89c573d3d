"""``mean_activation_opening/<l>`` — the mean activation of the response's opening (a length-robust variant)."""

from __future__ import annotations

from actindex.core.families.base import OPENING_TOKENS
from actindex.core.families.mean_activation import MeanActivation


class MeanActivationOpening(MeanActivation):
    """``a_l^W(x) = mean z_out`` over the first ``W`` response tokens (docs/design.md#response-opening):
    a long answer's tail cannot dilute what its opening shows; a row no longer than ``W`` tokens has the same
    vector in both families."""

    name = "mean_activation_opening"
    help = f"mean activation over the first {OPENING_TOKENS} response tokens (length-robust)"
    window = OPENING_TOKENS
    whole = MeanActivation.name
