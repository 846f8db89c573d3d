"""``residual_change_pooled/<l>`` — the paper's single-vector residual change (docs/design.md#pooled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import BLOCK_GRADS, Captured, VectorFamily
from actindex.core.families.residual_change import masked_mean

if TYPE_CHECKING:
    import torch


def residual_change_pooled(
    z_in: torch.Tensor, g: torch.Tensor, r_mask: torch.Tensor, attn: torch.Tensor
) -> torch.Tensor:
    """Pooled single-vector form ``t = - <zbar_in, sum_s g_s> zbar_in``."""
    zbar = masked_mean(z_in, r_mask)
    g_sum = (g * attn[..., None]).sum(1)
    return -(zbar * g_sum).sum(-1, keepdim=True) * zbar


class PooledResidualChange(VectorFamily):
    """``t_l(x) = - <zbar_in, sum_s g_s> zbar_in``: the residual change with every token's input replaced
    by their mean over the response (a member of the default ensemble)."""

    name = "residual_change_pooled"
    help = "the residual change in the paper's pooled single-vector form"
    backward = BLOCK_GRADS

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        return residual_change_pooled(captured.z_in[layer].float(), captured.g[layer].float(), captured.r_mask,
                                      captured.attn)
