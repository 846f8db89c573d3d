"""``residual_change/<l>`` — the token-level residual change of block ``l`` (docs/design.md#residual-change)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import BLOCK_GRADS, Captured, VectorFamily

if TYPE_CHECKING:
    import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_R(x)``: average of ``x`` (B, T, d) over the positions where ``mask`` (B, T) is True."""
    weights = mask.to(x.dtype)
    return (x * weights[..., None]).sum(1) / weights.sum(1).clamp(min=1)[:, None]


def residual_change(z_in: torch.Tensor, g: torch.Tensor, r_mask: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Token-level residual change ``t = - sum_s <zbar_in, z_in,s> g_s`` with ``zbar_in = mean_R(z_in)``.

    This is the change of the block output, averaged over response tokens, after one gradient
    step (step size dropped) on the block viewed as a linear map ``z_out = z_in W``.
    """
    import torch

    zbar = masked_mean(z_in, r_mask)
    coef = torch.einsum("btd,bd->bt", z_in, zbar) * attn
    return -torch.einsum("bt,btd->bd", coef, g)


class ResidualChange(VectorFamily):
    """``t_l(x) = - sum_s <zbar_in, z_in,s> g_s``: one gradient step on block ``l`` as a linear map, seen
    in the change of its output averaged over the response tokens."""

    name = "residual_change"
    help = "residual change of the block output after one step on the row (token-level form)"
    backward = BLOCK_GRADS

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        return residual_change(captured.z_in[layer].float(), captured.g[layer].float(), captured.r_mask,
                               captured.attn)
