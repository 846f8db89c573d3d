"""The checkpoint-fusion rules: how the rankings of several checkpoints' indexes of the same rows become one.

Each checkpoint ``c`` of a training run answers a query with its own index and model: a
:class:`CheckpointRanking` holds its members (the (method, layer) rankings of the query, each calibrated
over that index, :class:`~actindex.query.fusion.MemberRanking`) and the rows its own answer ranked on
each side. Its score of a row is the calibrated score of a single index,

    s_c(x) = sum_m w_m z_{c,m}(x) / sum_m w_m,     z_{c,m}(x) = (cos_{c,m}(x) - median_{c,m}) / (1.4826 MAD_{c,m})

and its cosine ``cos_c(x) = sum_m w_m cos_{c,m}(x) / sum_m w_m`` (one member: its cosine). A rule is a few
lines (:class:`CheckpointFusion`, listed in :data:`CHECKPOINT_FUSIONS`); :meth:`CheckpointFusion.fuse` returns
one side's rows, best first, with the rule's own score, over the rows some checkpoint ranked on that side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actindex.query.fusion import TOP, MemberRanking, calibrated, mean_cosines, rank_fused
from actindex.registry import Registered


@dataclass
class CheckpointRanking:
    """One checkpoint's answer to a query: its label, its members and the rows it ranked on each side."""

    label: str
    members: list[MemberRanking]
    top: np.ndarray
    bottom: np.ndarray

    def ranked(self, side: str) -> np.ndarray:
        return self.top if side == TOP else self.bottom

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """``s_c(x)``: the checkpoint's calibrated score of ``rows``."""
        return calibrated(self.members, rows)

    def cosines(self, rows: np.ndarray) -> np.ndarray:
        """``cos_c(x)``: the weighted mean of the members' cosines of ``rows``."""
        return mean_cosines(self.members, rows)


def candidates(rankings: list[CheckpointRanking], side: str) -> np.ndarray:
    """The rows some checkpoint ranked on ``side``, in row order."""
    return np.unique(np.concatenate([r.ranked(side) for r in rankings])).astype(np.int64)


def tracin_scores(rankings: list[CheckpointRanking], rows: np.ndarray) -> np.ndarray:
    """``S(x) = sum_c s_c(x)``: the calibrated TracIn score every fused hit is shown with."""
    return np.sum([r.scores(rows) for r in rankings], axis=0) if len(rows) else np.zeros(0)


class CheckpointFusion(Registered, noun="checkpoint fusion rule", listed=True):
    """Combine several checkpoints' rankings of the same rows into one ranking of one side."""

    name: ClassVar[str]
    help: ClassVar[str]

    def fuse(self, rankings: list[CheckpointRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of ``side``, best first (the top's most positive, the bottom's most negative)."""
        raise NotImplementedError


class TracInSum(CheckpointFusion):
    """``S(x) = sum_c s_c(x)``, each checkpoint's calibrated score (robust standard deviations over its own
    index), so that no checkpoint weighs more because its cosines run larger; computed exactly for every
    row some checkpoint ranked on the side. TracIn sums ``eta_c <grad L(z', theta_c), grad L(x, theta_c)>``
    over checkpoints; here each checkpoint's term is its calibrated score, with equal weights."""

    name = "tracin"
    help = "sum over checkpoints of each checkpoint's calibrated score s_c(x)"

    def score(self, ranking: CheckpointRanking, rows: np.ndarray) -> np.ndarray:
        """One checkpoint's term of the sum."""
        return ranking.scores(rows)

    def fuse(self, rankings: list[CheckpointRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        rows = candidates(rankings, side)
        scores = np.sum([self.score(r, rows) for r in rankings], axis=0) if len(rows) else np.zeros(0)
        order = np.argsort(-scores if side == TOP else scores, kind="stable")
        return rows[order], scores[order]


class TracInCosine(TracInSum):
    """``S(x) = sum_c cos_c(x)``, each checkpoint's (members' mean) cosine, uncalibrated: a checkpoint whose
    cosines spread wider weighs more."""

    name = "tracin-cosine"
    help = "sum over checkpoints of each checkpoint's cosine cos_c(x) (uncalibrated)"

    def score(self, ranking: CheckpointRanking, rows: np.ndarray) -> np.ndarray:
        return ranking.cosines(rows)


class CheckpointRRF(CheckpointFusion):
    """``S(x) = sum_c 1 / (60 + rank_c(x))``, ``rank_c`` the row's rank (from 0) in checkpoint ``c``'s own answer
    of the side: agreement between checkpoints, whatever their scales (the bottom side's score is negated)."""

    name = "rrf"
    help = "reciprocal rank fusion of the checkpoints' answers: sum over checkpoints of 1 / (60 + rank)"

    def fuse(self, rankings: list[CheckpointRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        return rank_fused([r.ranked(side) for r in rankings], side)


#: the registry, in the order of ``--checkpoint-fusion``'s choices
CHECKPOINT_FUSIONS = (TracInSum, TracInCosine, CheckpointRRF)
CheckpointFusion.register(*CHECKPOINT_FUSIONS)
