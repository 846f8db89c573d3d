"""EK-FAC: per linear module, a Kronecker eigenbasis from token covariances and the exact diagonal in it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from actindex.query.curvature.kinds.base import CurvatureFit, CurvatureKind

if TYPE_CHECKING:
    import torch
    from torch import nn

    from actindex.query.curvature.kron import KronEigen


class EkfacFit(CurvatureFit):
    """Pass 0: ``A = E_tok[a a^T]``, ``S = E_tok[delta delta^T]``, eigendecomposed (float64) into ``Q_A``,
    ``Q_S``; pass 1: the eigenvalue correction ``Lambda = E_n[(Q_S^T G_n Q_A)^2]`` from per-sequence
    gradients ``G_n = sum_t delta_t a_t^T``, the exact diagonal of the Fisher in that basis (so the
    scale of ``A`` and ``S`` does not matter). Damping ``lambda = 0.1 mean(Lambda)`` unless given."""

    passes = 2

    def __init__(self, names: Sequence[str], damping: float | None):
        from actindex.query.curvature.kron import KroneckerSums

        super().__init__(names, damping)
        self.sums = {name: KroneckerSums() for name in self.names}
        self.bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.lam_sum: dict[str, Any] = {name: 0.0 for name in self.names}
        self.sequences = 0

    def add(self, number: int, captured: dict[str, tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        from actindex.query.curvature.kron import row_gradients

        if number == 0:
            for name in self.names:
                self.sums[name].add_tokens(*captured[name], float(mask.sum()))
            return
        self.sequences += len(mask)
        for name in self.names:
            q_a, q_s = (q.to(mask.device) for q in self.bases[name])
            rotated = q_s.T @ row_gradients(*captured[name]) @ q_a
            self.lam_sum[name] = self.lam_sum[name] + (rotated**2).sum(0).cpu()

    def end_pass(self, number: int) -> None:
        from actindex.progress import bar
        from actindex.query.curvature.kron import eigh64

        if number == 0:
            for name in bar(self.names, show=self.progress, desc="curvature: eigenbases", unit="module"):
                a, s = self.sums[name].factors()
                self.bases[name] = (eigh64(a)[1], eigh64(s)[1])

    def result(self) -> dict[str, KronEigen]:
        from actindex.query.curvature.kron import KronEigen, default_damping

        out = {}
        for name in self.names:
            lam = self.lam_sum[name] / self.sequences
            damping = default_damping(lam) if self.damping is None else float(self.damping)
            out[name] = KronEigen(*self.bases[name], lam, damping)
        return out


class Ekfac(CurvatureKind):
    """EK-FAC per tracked linear module: the modules of the index's projected-gradient family (LoRA adapters
    when present), ``--modules`` patterns, or every linear module of the decoder blocks."""

    name = "ekfac"
    help = "EK-FAC per linear module (eigenbasis from token covariances, exact eigenvalue correction)"

    def modules(self, model: nn.Module, projection_modules: Sequence[str], config: Any,
                layers: Sequence[int] | None = None) -> list[str]:
        from actindex.core.models import peft_adapter_modules
        from actindex.core.vectors import select_grad_modules

        if config.every_module:
            return select_grad_modules(model)
        if config.modules:
            return select_grad_modules(model, config.modules)
        if projection_modules:
            return list(projection_modules)
        return peft_adapter_modules(model) or mlp_modules(model, layers)

    def fit(self, names: Sequence[str], damping: float | None) -> CurvatureFit:
        return EkfacFit(names, damping)


def mlp_modules(model: nn.Module, layers: Sequence[int] | None) -> list[str]:
    """The linear modules inside the MLP (``mlp`` child) of the given decoder blocks (every block: ``None``)."""
    from actindex.core.models import decoder_layers
    from actindex.core.vectors import select_grad_modules

    blocks = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    wanted = range(len(blocks)) if layers is None else layers
    patterns = [f"{prefix}.{layer}.mlp.*" for layer in wanted]
    return select_grad_modules(model, patterns)
