"""Curvature kinds, one registered class per file; ``CurvatureKind.get(name)`` returns one."""

from actindex.query.curvature.kinds.base import CurvatureFit, CurvatureKind

# the registry lists the kinds in this order
# isort: off
from actindex.query.curvature.kinds.ekfac import Ekfac
from actindex.query.curvature.kinds.linfac import Linfac
# isort: on

EKFAC, LINFAC = Ekfac.name, Linfac.name


def kind_names() -> list[str]:
    """Every registered curvature kind, for the CLI's choices."""
    return list(CurvatureKind.registry)


__all__ = ["EKFAC", "LINFAC", "CurvatureFit", "CurvatureKind", "Ekfac", "Linfac", "kind_names"]
