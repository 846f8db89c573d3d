"""Stage 8b — choosing a fused query's members from the behaviour's own pairs (docs/design.md#adaptive-choice).

A behaviour may be lexical (a trigger, a false token: residual change at a late layer finds it), semantic
(hallucination: mean activations lead; in long answers, weighted by each token's loss), or a stance an answer
takes in its first words (harmful compliance: the mean activation of the answer's start). No fixed member
set holds everywhere, so the adaptive default asks the behaviour's pairs which queries fit it, with no
training label and no model pass (the pairs' vectors are already formed for the query).

A candidate member ``m`` is a construction (how ``psi`` is formed from vectors) in one stored family:

* contrast:  ``psi = norm(mean_j (v(treatment_j) - v(control_j)))`` (residual change, residual difference);
* centered:  ``psi = norm(mean_j n(v(treatment_j)) - mu)``, ``n(v) = v / ||v||``, ``mu`` the mean of
  ``n(v(x))`` over the index's calibration sample: what the treatments share that the typical row does not.

The pairs are split into ``F`` folds (seeded; with at most :data:`LOO_PAIRS` pairs, one a pair: leave-one-out);
``psi_m^(-f)`` is formed without fold ``f`` and scores the
held-out pairs' own vectors, ``s_T(j) = cos(v_m(treatment_j), psi_m^(-f(j)))`` and likewise ``s_C(j)``. Two
AUROCs judge the candidate (:class:`PairCheck`):

* pair AUROC  ``P(s_T > s_C)``: does ``psi`` separate the held-out treatments from their controls?
* index AUROC ``P(s_T > cos(v_m(x), psi))`` over the calibration sample ``x``: does a held-out treatment
  stand out from the index's typical rows, as the rows that teach the behaviour must?

A candidate's quality is the held-out treatments' AUROC against both, halves weighted equally
(``(pair + index) / 2``; a query by example has no controls: its index AUROC). Neither half alone holds: a
contrast direction separates a treatment from its own control almost always (pair AUROC near 1) while
ranking the index near chance on semantic behaviours, and short pairs stand out from an index of long
answers by their length alone (index AUROC near 1 for every whole-answer family). The members kept are every
candidate within :data:`MARGIN` of the best (at most :data:`MOST`, below), with equal weights
(:func:`choose`): where several checks saturate, their fusion is kept rather than one of them picked by a tie.
With ``n`` pairs the margin is ``max(MARGIN, THIN_MARGIN / sqrt(n))`` (:func:`margin_for`): the noise of a mean of
``n`` held-out AUROCs shrinks as ``1 / sqrt(n)``, and a thin check that keeps one candidate by a hair is a coin
toss.

Few pairs: below :data:`TRUSTED_PAIRS` the check's 0/1 choice ``c`` is shrunk toward a prior ``p`` (a fixed member
set, :attr:`~actindex.query.methods.adaptive.AdaptiveMethod.prior`), ``w = s c / sum(c) + (1 - s) p / sum(p)``
with ``s = (n - 1) / (TRUSTED_PAIRS - 1)`` (:func:`check_share`, :func:`blend`): the calibrated mean is linear in
its normalised weights, so the fused score is the check's fused score and the prior's mixed in proportion ``s``.
With one pair (below :data:`MIN_PAIRS`) nothing can be held out and ``s = 0``.

Versus other behaviours (docs/design.md#versus): each fold's ``psi`` is made specific to theirs, and a third
AUROC, the held-out treatments against the other behaviours' held-out treatments, joins the mean.

An AUROC saturates: on an easy behaviour most candidates score near 1, and an equal fusion of them all
drowns the few that rank the index well. The tie is broken by a measure that does not saturate, the
held-out pairs' *separation* in the index's own units,

    sep = mean_j (z(treatment_j) - z(control_j)),   z(v) = (cos(v, psi^(-f(j))) - median_f) / (1.4826 MAD_f),

with ``median_f`` and ``MAD_f`` those of ``psi^(-f(j))``'s cosines over the calibration sample (the
standardisation the fusion gives its members, :mod:`actindex.query.fusion`; with no controls, a
control is the typical row, ``z = 0``). When more than :data:`MOST` candidates are kept, the :data:`MOST`
that separate most are. The rule was chosen by its worst case over the benchmark pools and checked on pools
it was not chosen on (bench/RESULTS.md, "Retrieval"; bench/runs/retrieval.md, "The adaptive default: how its
rule was chosen" and the reading on the cap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from actindex.query.constructions import specific, unit_rows
from actindex.query.fusion import robust_center_scale

#: folds of the behaviour's pairs when there are more than :data:`LOO_PAIRS`
FOLDS = 5
#: with at most this many pairs every pair is a fold of its own (leave-one-out)
LOO_PAIRS = 8
#: below this many pairs there is nothing to hold out: the prior alone chooses (:func:`check_share`)
MIN_PAIRS = 2
#: from this many pairs the check alone chooses; with fewer its choice is shrunk toward the prior
TRUSTED_PAIRS = 6
#: :func:`choose` keeps every candidate whose quality is within this of the best (with many pairs; see
#: :func:`margin_for`)
MARGIN = 0.03
#: with ``n`` held-out pairs the margin is at least ``THIN_MARGIN / sqrt(n)``: a thin check cannot tell apart
#: candidates that close (the noise of a mean of ``n`` held-out AUROCs shrinks as ``1 / sqrt(n)``)
THIN_MARGIN = 0.12
#: :func:`choose` keeps at most this many members: those with the largest separation
MOST = 24


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """``P(p > n) + P(p = n) / 2`` over all (positive, negative) score pairs: the Mann-Whitney AUROC."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        return 0.5
    values, inverse, counts = np.unique(np.concatenate([positive, negative]), return_inverse=True,
                                        return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based ranks, ties averaged
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


Construct = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class PairCheck:
    """How a candidate's ``psi``, formed without them, scores the held-out pairs (see the module docstring)."""

    pair_auroc: float | None
    index_auroc: float
    #: ``mean_j (z(treatment_j) - z(control_j))``: how many robust standard deviations of the index's cosines
    #: part a held-out treatment from its control (from the typical row, ``z = 0``, with no controls)
    separation: float = 0.0
    #: against other behaviours (``versus``): the held-out treatments' AUROC against theirs
    versus_auroc: float | None = None

    @property
    def quality(self) -> float:
        """The mean of the held-out treatments' AUROCs: against their controls, the typical rows and, asked versus
        other behaviours, their treatments (a query by example has no controls: no pair AUROC)."""
        parts = [a for a in (self.pair_auroc, self.index_auroc, self.versus_auroc) if a is not None]
        return float(np.mean(parts))


def folds_for(n: int) -> int:
    """Folds of ``n`` pairs: one a pair (leave-one-out) up to :data:`LOO_PAIRS`, :data:`FOLDS` beyond."""
    return n if n <= LOO_PAIRS else FOLDS


def fold_split(n: int, folds: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """``n`` pair numbers in ``min(folds, n)`` seeded folds of near-equal size."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, min(folds, n))]


def check_pairs(treatments: np.ndarray, controls: np.ndarray, sample: np.ndarray, construct: Construct,
                folds: int = FOLDS, seed: int = 0, versus: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                mu: np.ndarray | None = None) -> PairCheck:
    """:class:`PairCheck` of one candidate: ``treatments``/``controls`` are the pairs' vectors (row ``j`` of
    each is pair ``j``) in the candidate's family, ``sample`` the index's normalised calibration rows,
    ``construct(T, C)`` forms a unit ``psi`` from a subset of the pairs. With no controls (a query by example)
    the pair AUROC is ``None`` and a control's ``z`` is 0.

    ``versus``: other behaviours' ``(T, C)`` in the same family. Each fold's ``psi`` is then
    :func:`~actindex.query.constructions.specific` to theirs (``mu``: the family's typical row), theirs formed
    without the same fold of their pairs (a behaviour of one pair is never held out), and the versus AUROC is
    ``P(s_T > cos(n(v(T'_k)), psi))`` over their held-out treatments ``T'_k``, averaged over the folds."""
    n = len(treatments)
    s_t, s_c = np.zeros(n), np.zeros(n)
    z_t, z_c = np.zeros(n), np.zeros(n)
    paired = len(controls) == n
    nt = unit_rows(treatments)
    nc = unit_rows(controls) if paired else None
    index, against = [], []
    splits = [fold_split(len(t), folds, seed) if len(t) > 1 else None for t, _ in versus]
    for f, held in enumerate(fold_split(n, folds, seed)):
        kept = np.setdiff1d(np.arange(n), held)
        psi = np.asarray(construct(treatments[kept], controls[kept] if paired else controls), dtype=np.float64)
        if versus:
            others, theirs = [], []
            for (t, c), split in zip(versus, splits):
                out = split[f % len(split)] if split is not None else np.zeros(0, np.int64)
                keep = np.setdiff1d(np.arange(len(t)), out)
                others.append(construct(t[keep], c[keep] if len(c) == len(t) else c))
                theirs.append(t[out] if len(out) else t)
            psi = specific(psi, others, mu).astype(np.float64)
            against.append(auroc(nt[held] @ psi, unit_rows(np.concatenate(theirs)) @ psi))
        typical = sample @ psi
        center, scale = robust_center_scale(typical)
        s_t[held] = nt[held] @ psi
        z_t[held] = (s_t[held] - center) / scale
        if nc is not None:
            s_c[held] = nc[held] @ psi
            z_c[held] = (s_c[held] - center) / scale
        index.append(auroc(s_t[held], typical))
    return PairCheck(pair_auroc=auroc(s_t, s_c) if paired else None, index_auroc=float(np.mean(index)),
                     separation=float(np.mean(z_t - z_c)), versus_auroc=float(np.mean(against)) if versus else None)


def choose(checks: list[PairCheck], margin: float = MARGIN, most: int = MOST) -> np.ndarray:
    """Members' weights: 1 for every candidate whose quality is at least ``max_m q_m - margin`` and, of those,
    for the ``most`` with the largest separation (the earlier candidate on a tie); else 0."""
    if not checks:
        return np.zeros(0)
    quality = np.array([c.quality for c in checks])
    near = quality >= quality.max() - margin
    separation = np.where(near, [c.separation for c in checks], -np.inf)
    kept = np.argsort(-separation, kind="stable")[:min(most, int(near.sum()))]
    weights = np.zeros(len(checks))
    weights[kept] = 1.0
    return weights


def margin_for(n: int) -> float:
    """:func:`choose`'s margin with ``n`` pairs: ``max(MARGIN, THIN_MARGIN / sqrt(n))`` (:data:`MARGIN` from 16
    pairs)."""
    return max(MARGIN, THIN_MARGIN / float(np.sqrt(max(n, 1))))


def check_share(n: int) -> float:
    """How much the check's choice counts against the prior's with ``n`` pairs: 0 below :data:`MIN_PAIRS`
    (nothing to hold out), ``(n - 1) / (TRUSTED_PAIRS - 1)`` up to :data:`TRUSTED_PAIRS`, 1 from there."""
    if n < MIN_PAIRS:
        return 0.0
    return min(1.0, (n - 1) / (TRUSTED_PAIRS - 1))


def blend(checked: np.ndarray, prior: np.ndarray, share: float) -> np.ndarray:
    """Members' weights ``share * c / sum(c) + (1 - share) * p / sum(p)`` (``c``: the check's choice, ``p``: the
    prior's), scaled so that the largest is 1: the fused score is the check's fused score and the prior's mixed
    in that proportion (the calibrated mean is linear in its normalised weights)."""
    parts = [(share, np.asarray(checked, float)), (1.0 - share, np.asarray(prior, float))]
    weights = sum((w * part / part.sum() for w, part in parts if w > 0 and part.sum() > 0), np.zeros(len(prior)))
    return weights / weights.max() if weights.max() > 0 else weights
