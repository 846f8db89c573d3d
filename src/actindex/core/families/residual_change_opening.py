"""``residual_change_opening/<l>`` — the residual change of the response's opening (a length-robust variant)."""

from __future__ import annotations

from actindex.core.families.base import OPENING_TOKENS
from actindex.core.families.residual_change import ResidualChange


class ResidualChangeOpening(ResidualChange):
    """``t_l^W(x)``: the residual change ``- sum_s <zbar_in, z_in,s> g_s`` of the row cut after its
    first ``W`` response tokens, so the loss, ``zbar_in`` and the sum over ``s`` all cover the opening alone.

    The whole-response vector sums ``|R|`` token terms: in a long answer the tail's many ordinary tokens
    outweigh the few that show a behaviour (a compliance, a false claim, a trigger's answer), which mostly
    open it. The opening keeps the weight of those tokens whatever the answer's length; a row no longer than
    ``W`` tokens has the same vector in both families.
    """

    name = "residual_change_opening"
    help = f"residual change over the first {OPENING_TOKENS} response tokens (length-robust)"
    window = OPENING_TOKENS
    whole = ResidualChange.name
