"""The query methods with a fixed query: one vector formed by a formula (docs/design.md#constructions), or the
``ensemble``'s fixed members fused. Each is a few lines: its family (``kind``), its help, and how it forms ``psi``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from actindex.core.families import GRADIENT, MEAN_ACTIVATION, RESIDUAL_CHANGE, RESIDUAL_CHANGE_POOLED
from actindex.errors import ActindexError, IndexFileError
from actindex.query.constructions import unit
from actindex.query.context import chat
from actindex.query.methods.base import Member, QueryMethod, no_single_vector

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class ResidualChangeMethod(QueryMethod):
    """``psi = norm(mean_j (t_l(treatment_j) - t_l(control_j)))`` against residual-change vectors."""

    name, kind = "residual-change", RESIDUAL_CHANGE
    help = "residual-change vectors of treatment minus control"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior, layer))


class PooledResidualChangeMethod(ResidualChangeMethod):
    """``psi = norm(mean_j (t_l(treatment_j) - t_l(control_j)))`` with the pooled ``t_l``."""

    name, kind = "residual-change-pooled", RESIDUAL_CHANGE_POOLED
    help = "residual-change, pooled single-vector variant (index built with --pooled)"


class ResidualDifferenceMethod(QueryMethod):
    """``psi = norm(mean_j (a_l(treatment_j) - a_l(control_j)))`` against mean activations."""

    name, kind = "residual-difference", MEAN_ACTIVATION
    help = "mean-activation difference of treatment minus control"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior, layer))


class PersonaMethod(QueryMethod):
    """``psi = norm(mean_j (a_l(resp_j | positive prompt) - a_l(resp_j | neutral prompt)))``.

    Activations are read with the system prompt in context, as persona vectors are.
    """

    name, kind = "persona", MEAN_ACTIVATION
    help = "persona vector: activations under the positive minus the neutral system prompt"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        if behavior.persona is None:
            raise ActindexError(f"method persona needs a persona spec (JSON), but {behavior.name!r} is a pairs file")
        responses = behavior.persona.responses
        convs = [chat(r["question"], r["pos"], r["pos_system"]) for r in responses]
        convs += [chat(r["question"], r["neg"], r["neg_system"]) for r in responses]
        vectors = ctx.family_vectors(self.family(layer), convs)
        n = len(responses)
        return unit((vectors[:n] - vectors[n:]).mean(axis=0))


class ActivationMethod(QueryMethod):
    """Baseline: project each row's mean activation on the unit persona (or difference) vector.

    Score = ``<a_l(x), psi>`` (a projection, not a cosine), as in persona-vector data screening.
    """

    name, kind = "activation", MEAN_ACTIVATION
    help = "baseline: projection of mean activations on the behaviour direction"
    projection_scores = True

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        if behavior.persona is not None:
            return PersonaMethod().vector(ctx, behavior, layer)
        return unit(self.pair_difference(ctx, behavior, layer))


class GradientMethod(QueryMethod):
    """``psi = -grad phi`` projected, ``phi = mean_j [log p(treatment_j) - log p(control_j)]``.

    For pairs ``-grad phi = mean_j (grad L(treatment_j) - grad L(control_j))``; the projection is
    linear, so the projected query is the mean difference of projected gradients.
    """

    name, kind = "gradient", GRADIENT
    help = "Hessian-free projected gradient of the behaviour's log-odds (index built with --grad)"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior, layer))


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


class EnsembleMethod(QueryMethod):
    """Rank fusion of several (method, layer) rankings (docs/design.md#fusion).

    Members: ``residual-change`` and ``residual-change-pooled`` at every layer the index holds (the
    ones it has vectors for), or at ``--layer`` alone; the fusion rule (:mod:`actindex.query.fusion`,
    reciprocal rank fusion by default) combines their rankings. A fixed member set: the adaptive default
    (:mod:`.adaptive`) chooses its members per behaviour instead; a rerank re-scores the fused candidates.
    """

    name, kind = "ensemble", RESIDUAL_CHANGE
    help = "rank fusion of residual-change and its pooled variant over every indexed layer (fixed members)"
    fused = True
    member_methods: ClassVar[tuple[str, ...]] = ("residual-change", "residual-change-pooled")

    def members(self, layers: list[int], layer: int | None, families: tuple[str, ...]) -> list[Member]:
        at = layers if layer is None else [layer]
        return [(m, a) for m in self.member_methods for a in at if QueryMethod.get(m).family(a) in families]

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        raise no_single_vector(self.name)
