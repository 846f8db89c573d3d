"""What a curvature kind is: which modules it covers, which passes over the sampled rows it needs and
what it accumulates from each (docs/design.md#curvature-and-reranking).

A kind is one small registered class (:class:`CurvatureKind`) in one file of this package. It names its
modules (:meth:`CurvatureKind.modules`) and starts a :class:`CurvatureFit`, which is fed every batch's
per-module ``(a, delta)`` of each pass it needs and returns one :class:`~actindex.query.curvature.kron.KronEigen`
per module. Kinds fitted together share their passes (:func:`~actindex.query.curvature.passes.fit_kronecker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from actindex.registry import Registered

if TYPE_CHECKING:
    import torch
    from torch import nn

    from actindex.query.curvature.kron import KronEigen


class CurvatureFit:
    """The sums one kind accumulates over its passes, for the modules ``names``; ``progress`` shows a bar
    over the modules in the steps between passes (eigendecompositions)."""

    passes: int = 1
    progress: bool = False

    def __init__(self, names: Sequence[str], damping: float | None):
        self.names, self.damping = list(names), damping

    def add(self, number: int, captured: dict[str, tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Feed one batch of pass ``number``: per module ``(a, delta)`` (B, T, dim) and the (B, T) token mask."""
        raise NotImplementedError

    def end_pass(self, number: int) -> None:
        """Called after the last batch of pass ``number``."""

    def result(self) -> dict[str, KronEigen]:
        raise NotImplementedError


class CurvatureKind(Registered, noun="curvature kind"):
    """A Kronecker-factored curvature (see the module docstring)."""

    name: ClassVar[str]
    help: ClassVar[str]

    def modules(self, model: nn.Module, projection_modules: Sequence[str], config: Any,
                layers: Sequence[int] | None = None) -> list[str]:
        """The modules this kind fits for ``model``, given the index's projected modules, its ``layers`` (the
        default scope) and the :class:`~actindex.query.curvature.config.CurvatureConfig`."""
        raise NotImplementedError

    def factor_floats(self, shape: tuple[int, int]) -> int:
        """Numbers stored for one module of weight shape ``(O, I)``: ``Q_A`` (I x I), ``Q_S`` (O x O) and
        ``Lambda`` (O x I)."""
        out_dim, in_dim = shape
        return in_dim * in_dim + out_dim * out_dim + out_dim * in_dim

    def fit(self, names: Sequence[str], damping: float | None) -> CurvatureFit:
        """A fresh accumulator for ``names``."""
        raise NotImplementedError
