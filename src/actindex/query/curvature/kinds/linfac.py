"""LinFAC: per sublayer taken as one linear map, sequence-level Kronecker factors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from actindex.errors import ActindexError
from actindex.query.curvature.kinds.base import CurvatureFit, CurvatureKind

if TYPE_CHECKING:
    import torch
    from torch import nn

    from actindex.query.curvature.kron import KronEigen


class LinfacFit(CurvatureFit):
    """One pass over ``N`` sequences of ``T_n`` tokens: ``A = 1/N sum_n (sum_t a_t / T_n)(...)^T``,
    ``S = 1/N sum_n (sum_t delta_t)(...)^T``; ``A ⊗ S`` in its own eigenbasis, ``Lambda = lambda_S lambda_A^T``."""

    def __init__(self, names: Sequence[str], damping: float | None):
        from actindex.query.curvature.kron import KroneckerSums

        super().__init__(names, damping)
        self.sums = {name: KroneckerSums() for name in self.names}

    def add(self, number: int, captured: dict[str, tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        for name in self.names:
            self.sums[name].add_sequences(*captured[name], mask.sum(1))

    def result(self) -> dict[str, KronEigen]:
        from actindex.query.curvature.kron import linfac_from_factors

        return {name: linfac_from_factors(*self.sums[name].factors(), self.damping) for name in self.names}


class Linfac(CurvatureKind):
    """LinFAC per sublayer: every block's MLP (``--sublayer mlp``), or the decoder blocks themselves."""

    name = "linfac"
    help = "LinFAC per sublayer (MLP or whole block), sequence-level factors"

    def modules(self, model: nn.Module, projection_modules: Sequence[str], config: Any,
                layers: Sequence[int] | None = None) -> list[str]:
        from actindex.core.models import decoder_layers

        blocks = decoder_layers(model)
        prefix = next(name for name, m in model.named_modules() if m is blocks)
        wanted = range(len(blocks)) if layers is None or config.every_module else layers
        names = [f"{prefix}.{i}" for i in wanted]
        if config.sublayer == "block":
            return names
        found = []
        for name in names:
            children = dict(blocks[int(name.rsplit(".", 1)[1])].named_children())
            if "mlp" not in children:
                raise ActindexError(f"LinFAC --sublayer mlp: block {name} has no 'mlp' child; use --sublayer block")
            found.append(f"{name}.mlp")
        return found

    def fit(self, names: Sequence[str], damping: float | None) -> CurvatureFit:
        return LinfacFit(names, damping)

    def factor_floats(self, shape: tuple[int, int]) -> int:
        """A sublayer's ``A`` (d x d), ``S`` (d x d) eigenbases and ``Lambda`` (d x d), ``d`` its width."""
        return 3 * shape[0] * shape[0]
