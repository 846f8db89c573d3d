"""What an exact-influence score is divided by (``--norm``), one registered class each; ``Norm.get(name)``.

With ``rerank`` a row's score is ``s_{T,m} = <precond(q_T), G_m> / N(G_m)`` (module docstring of
:mod:`actindex.act.detect`): RelatIF's ``N`` scores a row's direction, not its size, like the index's
cosines, so a row the model has memorised (a small gradient) stays in view.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from actindex.registry import Registered


class Norm(Registered, noun="norm", listed=True):
    """``N(G_m)``: ``curvature`` asks :func:`~actindex.query.curvature.influence.influence_matrix` for
    ``sqrt(<G_m, precond(G_m)>)`` instead of ``||G_m||``; :meth:`divide` applies it."""

    name: ClassVar[str]
    help: ClassVar[str]
    curvature: ClassVar[bool] = False

    def divide(self, scores: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """``scores[m, c] / norms[m]`` (0 where the norm is 0)."""
        return np.divide(scores, norms[:, None], out=np.zeros_like(scores), where=norms[:, None] > 0)


class RelatifNorm(Norm):
    """RelatIF (Barshan et al. 2020): the square root of the row's self-influence."""

    name, help, curvature = "relatif", "sqrt of its self-influence <G, precond(G)>", True


class GradientNorm(Norm):
    """The Euclidean norm of the row's gradient."""

    name, help = "gradient", "||G||"


class NoNorm(Norm):
    """The plain influence, larger for rows with larger gradients."""

    name, help = "none", "nothing"

    def divide(self, scores: np.ndarray, norms: np.ndarray) -> np.ndarray:
        return scores


#: the registry, in the order of ``--norm``'s choices
Norm.register(RelatifNorm, GradientNorm, NoNorm)


def norm_names() -> list[str]:
    """Every registered norm, for the choices of ``--norm``."""
    return list(Norm.registry)
