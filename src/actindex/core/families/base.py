"""What a vector family is: one per-example vector the build's forward and backward pass give.

A family is one small registered class (:class:`VectorFamily`) in one file of this package: its name
(the HDF5 dataset and FAISS file are ``name/<layer>`` for per-layer families, ``name`` otherwise), the
gradient it needs from the pass (``backward``), its dimension and :meth:`VectorFamily.compute`, the
formula it implements (docs/design.md#vector-families). :func:`actindex.core.vectors.compute_vectors` runs one pass
for every family a build asks for. Adding a family is adding one file here and importing it in
``__init__``; ``build --families NAME`` then caches it.

Modules here import no tensor library at import time (the CLI lists the families without loading torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from actindex.registry import Registered

if TYPE_CHECKING:
    import torch

#: what a family needs from the backward pass
NO_BACKWARD, BLOCK_GRADS, LINEAR_GRADS = "none", "blocks", "linears"
#: the response tokens an ``*_opening`` family covers (:attr:`VectorFamily.window`)
OPENING_TOKENS = 64
#: the response tokens a ``*_start`` family covers: an answer's first words, where it takes its stance
START_TOKENS = 8


@dataclass
class VectorSpec:
    """Which vectors a pass computes: the families ``kinds`` at ``layers`` (per-layer families), the
    tracked linear modules and the projection of the gradient family; ``reduction`` (a
    :class:`~actindex.core.reduction.StorageProjection`, ``None``: full width) maps every per-layer vector to the
    index's stored width."""

    layers: list[int]
    kinds: list[str] = field(default_factory=lambda: ["residual_change", "mean_activation"])
    grad_modules: list[str] = field(default_factory=list)
    grad_k: int = 16
    seed: int = 0
    reduction: Any = None

    def families(self, hidden_size: int) -> dict[str, int]:
        """Family name -> vector dimension, in storage order (per layer, then the layerless families)."""
        out: dict[str, int] = {}
        kinds = [VectorFamily.get(kind) for kind in self.kinds]
        for layer in self.layers:
            for fam in kinds:
                if fam.per_layer:
                    out[family_name(fam.name, layer)] = (fam.dim(hidden_size, self) if self.reduction is None
                                                         else self.reduction.width)
        for fam in kinds:
            if not fam.per_layer and fam.dim(hidden_size, self):
                out[fam.name] = fam.dim(hidden_size, self)
        return out

    def needs(self, backward: str) -> bool:
        """Whether some family of the spec needs ``backward`` (:data:`BLOCK_GRADS` or :data:`LINEAR_GRADS`)."""
        return any(VectorFamily.get(kind).backward == backward for kind in self.kinds) and (
            backward != LINEAR_GRADS or bool(self.grad_modules))


def family_name(kind: str, layer: int | None = None) -> str:
    """``residual_change/18``, ``mean_activation/18``, ``gradient``."""
    return kind if layer is None else f"{kind}/{layer}"


def family_kind(family: str) -> str:
    """``residual_change/18`` -> ``residual_change``."""
    return family.split("/", 1)[0]


@dataclass
class Captured:
    """What one forward and backward pass over a batch kept, for the families to compute from.

    ``z_in``/``z_out``/``g``: per layer, the block's input, output and ``g = dL/dz_out`` (B, T, d);
    ``a``/``delta``: per tracked linear module, its input (zero at padding) and output gradient;
    ``r_mask`` (B, T) the response positions R, ``attn`` (B, T) the real tokens (float);
    ``projector`` the seeded Rademacher projections (:class:`~actindex.core.vectors.RademacherProjector`);
    ``token_loss`` (B, T) each response token's loss ``l_t = -log p(x_t | x_<t)`` at its position (0 elsewhere),
    kept when a family of the pass asks for it (:attr:`VectorFamily.token_loss`).
    """

    z_in: dict[int, torch.Tensor]
    z_out: dict[int, torch.Tensor]
    g: dict[int, torch.Tensor]
    a: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    r_mask: torch.Tensor
    attn: torch.Tensor
    spec: VectorSpec
    projector: Any = None
    token_loss: torch.Tensor | None = None


class VectorFamily(Registered, noun="vector family"):
    """One per-example vector of the build (see the module docstring."""

    name: ClassVar[str]
    help: ClassVar[str]
    per_layer: ClassVar[bool] = True
    backward: ClassVar[str] = NO_BACKWARD
    #: computed over the opening of the response alone: the row cut after its first ``window`` response
    #: tokens (``None``: the whole response). A causal model's activations, loss and gradients over the
    #: cut row are exactly those of the row's opening: a long answer's tail cannot drown it.
    window: ClassVar[int | None] = None
    #: with a ``window``: the whole-response family it is the opening of (computed the same way)
    whole: ClassVar[str | None] = None
    #: computed from each response token's loss (:attr:`Captured.token_loss`)
    token_loss: ClassVar[bool] = False
    #: the query constructions (:mod:`actindex.query.constructions`) the adaptive default forms in this family
    #: (``None``: every one)
    constructions: ClassVar[tuple[str, ...] | None] = None

    def answers(self, construction: str) -> bool:
        """Whether the adaptive default forms ``construction`` in this family (:attr:`constructions`)."""
        return self.constructions is None or construction in self.constructions

    def dim(self, hidden_size: int, spec: VectorSpec) -> int:
        """The vector's dimension (per-layer families: the residual stream's width)."""
        return hidden_size

    def compute(self, captured: Captured, layer: int | None) -> torch.Tensor:
        """The (B, dim) vectors of the batch at ``layer`` (``None`` for a layerless family), float32."""
        raise NotImplementedError
