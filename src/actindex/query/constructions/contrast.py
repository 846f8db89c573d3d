"""``contrast``: the mean difference of treatment and control (residual change, residual difference)."""

from __future__ import annotations

import numpy as np

from actindex.query.constructions.base import Construction, unit


class Contrast(Construction):
    """``psi = norm(mean_j (v(treatment_j) - v(control_j)))``: what changes between the two answers to one
    prompt (the residual-change and residual-difference queries)."""

    name = "contrast"
    help = "treatment minus control, averaged over the pairs"
    formula = "norm(mean_j (v(T_j) - v(C_j)))"

    def psi(self, treatments: np.ndarray, controls: np.ndarray, typical: np.ndarray) -> np.ndarray:
        return unit((np.asarray(treatments, np.float64) - controls).mean(axis=0))
