"""``gradient`` — Hessian-free projected per-row gradients of tracked linears (docs/design.md#projected-gradient)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families.base import LINEAR_GRADS, Captured, VectorFamily, VectorSpec

if TYPE_CHECKING:
    import torch


def projected_gradient(a: torch.Tensor, delta: torch.Tensor, p_in: torch.Tensor, p_out: torch.Tensor) -> torch.Tensor:
    """``P_out G P_in^T = sum_t (P_out delta_t)(P_in a_t)^T`` per row, flattened to (B, k*k)."""
    import torch

    pa = a @ p_in.T
    pd = delta @ p_out.T
    return torch.einsum("bto,bti->boi", pd, pa).flatten(1)


class ProjectedGradient(VectorFamily):
    """For every tracked module the ``k x k`` block ``P_out G P_in^T`` of its weight gradient
    ``G = sum_t delta_t a_t^T`` (never formed), blocks concatenated in module order; ``P`` are seeded
    Rademacher matrices, so inner products approximate those of the full gradients (JL)."""

    name = "gradient"
    help = "Hessian-free projected gradient of the tracked linear modules"
    per_layer = False
    backward = LINEAR_GRADS

    def dim(self, hidden_size: int, spec: VectorSpec) -> int:
        return len(spec.grad_modules) * spec.grad_k**2

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        import torch

        blocks = []
        for name in captured.spec.grad_modules:
            a = captured.a[name].float()
            delta = captured.delta[name].float()
            p_in = captured.projector.matrix(f"{name}.in", a.shape[-1], a.device)
            p_out = captured.projector.matrix(f"{name}.out", delta.shape[-1], a.device)
            blocks.append(projected_gradient(a, delta, p_in, p_out))
        return torch.cat(blocks, dim=1)
