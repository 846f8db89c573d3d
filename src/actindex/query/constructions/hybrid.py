"""``hybrid``: the treatments against both their controls and the index's typical row."""

from __future__ import annotations

import numpy as np

from actindex.query.constructions.base import Construction, unit, unit_rows


class Hybrid(Construction):
    """``psi = norm(mean_j n(v(T_j)) - (mean_j n(v(C_j)) + mu) / 2)``: rows like the treatments, unlike their
    controls (same prompt, answer without the behaviour) and unlike the typical row (another prompt) at once."""

    name = "hybrid"
    help = "the treatments' mean direction minus the mean of their controls' and the index's typical row"
    formula = "norm(mean_j n(v(T_j)) - (mean_j n(v(C_j)) + mu) / 2)"

    def psi(self, treatments: np.ndarray, controls: np.ndarray, typical: np.ndarray) -> np.ndarray:
        return unit(unit_rows(treatments).mean(axis=0) - (unit_rows(controls).mean(axis=0) + typical) / 2)
