"""``ekfac``: the behaviour gradient preconditioned with EK-FAC, projected like the gradient family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families import GRADIENT
from actindex.errors import ActindexError, IndexFileError
from actindex.query.constructions import unit
from actindex.query.methods.base import QueryMethod

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class EkfacGradientMethod(QueryMethod):
    """``psi = Pi precond_EKFAC(-grad phi)``: the full per-module behaviour gradient preconditioned with
    the index's EK-FAC factors, then projected with the index's own Rademacher matrices (same seed,
    same per-module blocks as the build), searched against the ``gradient`` family."""

    name, kind = "ekfac", GRADIENT
    help = "EK-FAC preconditioned behaviour gradient, projected (needs --grad and fit-curvature)"
    curvature = "ekfac"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        from actindex.core.vectors import RademacherProjector
        from actindex.query.curvature.influence import project_blocks

        if ctx.curvature is None:
            raise ActindexError("method ekfac needs an index with fitted curvature (query it through Index)")
        curv = ctx.curvature(self.curvature)
        missing = [m for m in ctx.grad_modules if m not in curv.modules]
        if missing:
            raise IndexFileError(
                f"the EK-FAC factors do not cover the projected module {missing[0]!r}; refit with the default modules"
            )
        (q,) = ctx.behavior_gradients(behavior, ctx.grad_modules)
        projector = RademacherProjector(ctx.seed, ctx.grad_k)
        return unit(project_blocks(curv.precondition(q), ctx.grad_modules, projector))
