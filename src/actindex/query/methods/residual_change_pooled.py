"""``residual-change-pooled``: the same query in the pooled single-vector variant's family."""

from __future__ import annotations

from actindex.core.families import RESIDUAL_CHANGE_POOLED
from actindex.query.methods.residual_change import ResidualChangeMethod


class PooledResidualChangeMethod(ResidualChangeMethod):
    """``psi = norm(mean_j (t_l(treatment_j) - t_l(control_j)))`` with the pooled ``t_l``."""

    name, kind = "residual-change-pooled", RESIDUAL_CHANGE_POOLED
    help = "residual-change, pooled single-vector variant (index built with --pooled)"
