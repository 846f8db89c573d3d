"""``centered``: the treatments against the index's typical row."""

from __future__ import annotations

import numpy as np

from actindex.query.constructions.base import Construction, unit, unit_rows


class Centered(Construction):
    """``psi = norm(mean_j n(v(treatment_j)) - mu)``, ``mu = mean_x n(v(x))`` over the index: what the
    treatments share that the typical training row does not, the prompt included (the multi-example form of
    query by example, with the component every row shares removed)."""

    name = "centered"
    help = "the treatments' mean direction minus the index's typical row"
    formula = "norm(mean_j n(v(T_j)) - mu)"
    needs_controls = False

    def psi(self, treatments: np.ndarray, controls: np.ndarray, typical: np.ndarray) -> np.ndarray:
        return unit(unit_rows(treatments).mean(axis=0) - typical)
