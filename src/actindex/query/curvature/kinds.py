"""The curvature kinds, EK-FAC and LinFAC: which modules each covers, which passes over the sampled rows it
needs and what it accumulates from each (docs/design.md#curvature-and-reranking).

A kind (:class:`CurvatureKind`, listed in :data:`KINDS`) names its modules (:meth:`CurvatureKind.modules`) and
starts a :class:`CurvatureFit`, which is fed every batch's per-module ``(a, delta)`` of each pass it needs and
returns one :class:`~actindex.query.curvature.kron.KronEigen` per module. Kinds fitted together share their passes
(:func:`~actindex.query.curvature.passes.fit_kronecker`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from actindex.errors import ActindexError
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


class CurvatureKind(Registered, noun="curvature kind", listed=True):
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


#: the registry, in the order of the CLI's choices
KINDS = (Ekfac, Linfac)
CurvatureKind.register(*KINDS)
EKFAC, LINFAC = Ekfac.name, Linfac.name


def kind_names() -> list[str]:
    """Every registered curvature kind, for the CLI's choices."""
    return list(CurvatureKind.registry)
