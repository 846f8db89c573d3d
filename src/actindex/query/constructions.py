"""Constructions of a query vector: how ``psi`` is formed from a behaviour's vectors in one family.

Every pair method forms ``psi`` from the same three ingredients, in one stored family
(docs/design.md#constructions): the vectors of the treatment rows ``v(treatment_j)``, of their controls
``v(control_j)`` (row ``j`` of each is pair ``j``), and the index's typical row ``mu = mean_x n(v(x))`` over
its calibration sample, with ``n(v) = v / ||v||``. A construction is a few lines (:class:`Construction`), listed
in :data:`CONSTRUCTIONS`; the adaptive default (:mod:`actindex.query.methods.adaptive`) tries each in every
family and keeps those the behaviour's own held-out pairs vouch for (:mod:`actindex.query.selection`)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from actindex.errors import ActindexError
from actindex.registry import Registered


def unit(v: np.ndarray) -> np.ndarray:
    """``norm(v) = v / ||v||`` (float32); a zero or non-finite ``v`` is refused in one line."""
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        raise ActindexError("the query vector is zero or not finite: treatment and control look identical")
    return (v / n).astype(np.float32)


def unit_rows(v: np.ndarray) -> np.ndarray:
    """``n(v) = v / ||v||`` row-wise (zero rows stay zero), float64."""
    v = np.asarray(v, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def specific(psi: np.ndarray, others: list[np.ndarray], typical: np.ndarray | None = None) -> np.ndarray:
    """``norm(psi - Q Q^T psi)``, ``Q`` an orthonormal basis of the ``others``' query vectors ``o_k`` taken
    orthogonal to the typical row first, ``o_k - (o_k . m) m`` with ``m = norm(mu)``: what ``psi`` asks that none
    of them shares (a query versus other behaviours, docs/design.md#versus). The typical row's part stays in
    ``psi``: every behaviour's query stands out from the typical row (``centered`` and ``hybrid`` subtract ``mu``),
    and removing that shared part would rank typical rows as high as the behaviour's. ``psi`` itself without
    ``others``; refused in one line when nothing but the typical row's part is left (``psi`` lies in their span)."""
    psi = np.asarray(psi, dtype=np.float64)
    if not others:
        return unit(psi)
    directions = np.stack([np.asarray(o, dtype=np.float64) for o in others], axis=1)
    m = None if typical is None or not np.linalg.norm(typical) > 0 else np.asarray(typical, np.float64)
    if m is not None:
        m = m / np.linalg.norm(m)
        directions = directions - np.outer(m, m @ directions)
    basis, sizes, _ = np.linalg.svd(directions, full_matrices=False)
    basis = basis[:, sizes > 1e-9 * max(float(sizes.max(initial=0.0)), 1e-300)]  # their span, rank-revealing
    rest = psi - basis @ (basis.T @ psi)
    own = rest if m is None else rest - (rest @ m) * m
    if not np.linalg.norm(own) > 1e-6 * np.linalg.norm(psi):
        raise ActindexError("the behaviour's query lies within its versus behaviours': nothing specific to it is left")
    return unit(rest)


class Construction(Registered, noun="construction", listed=True):
    """How ``psi`` is formed from the treatments' and controls' vectors (and the typical row)."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: the formula, as ``--explain`` and the report show it
    formula: ClassVar[str]
    #: formed from the controls too (a query by example has none: only the others take part)
    needs_controls: ClassVar[bool] = True

    def psi(self, treatments: np.ndarray, controls: np.ndarray, typical: np.ndarray) -> np.ndarray:
        """The unit query vector from aligned ``treatments``/``controls`` (n, d) and the typical row ``mu`` (d,)."""
        raise NotImplementedError


class Contrast(Construction):
    """``psi = norm(mean_j (v(treatment_j) - v(control_j)))``: what changes between the two answers to one
    prompt (the residual-change and residual-difference queries)."""

    name = "contrast"
    help = "treatment minus control, averaged over the pairs"
    formula = "norm(mean_j (v(T_j) - v(C_j)))"

    def psi(self, treatments: np.ndarray, controls: np.ndarray, typical: np.ndarray) -> np.ndarray:
        return unit((np.asarray(treatments, np.float64) - controls).mean(axis=0))


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


class Hybrid(Construction):
    """``psi = norm(mean_j n(v(T_j)) - (mean_j n(v(C_j)) + mu) / 2)``: rows like the treatments, unlike their
    controls (same prompt, answer without the behaviour) and unlike the typical row (another prompt) at once."""

    name = "hybrid"
    help = "the treatments' mean direction minus the mean of their controls' and the index's typical row"
    formula = "norm(mean_j n(v(T_j)) - (mean_j n(v(C_j)) + mu) / 2)"

    def psi(self, treatments: np.ndarray, controls: np.ndarray, typical: np.ndarray) -> np.ndarray:
        return unit(unit_rows(treatments).mean(axis=0) - (unit_rows(controls).mean(axis=0) + typical) / 2)


#: the registry, in the order the adaptive default tries the constructions (the first of equal candidates is kept)
CONSTRUCTIONS = (Contrast, Centered, Hybrid)
Construction.register(*CONSTRUCTIONS)
