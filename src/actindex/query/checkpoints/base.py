"""What a checkpoint-fusion rule is: how the rankings of several checkpoints' indexes of the same rows become one.

Each checkpoint ``c`` of a training run answers a query with its own index and model: a
:class:`CheckpointRanking` holds its members (the (method, layer) rankings of the query, each calibrated
over that index, :class:`~actindex.query.fusion.MemberRanking`) and the rows its own answer ranked on
each side. Its score of a row is the calibrated score of a single index,

    s_c(x) = sum_m w_m z_{c,m}(x) / sum_m w_m,     z_{c,m}(x) = (cos_{c,m}(x) - median_{c,m}) / (1.4826 MAD_{c,m})

and its cosine ``cos_c(x) = sum_m w_m cos_{c,m}(x) / sum_m w_m`` (one member: its cosine). A rule is one small
registered class (:class:`CheckpointFusion`) in one file of this package; :meth:`CheckpointFusion.fuse` returns
one side's rows, best first, with the rule's own score, over the rows some checkpoint ranked on that side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actindex.query.fusion import TOP, MemberRanking, calibrated
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
        rows = np.asarray(rows, dtype=np.int64)
        weights = np.array([m.weight for m in self.members], dtype=np.float64)
        values = np.stack([m.cosines(rows) for m in self.members]) if len(rows) else np.zeros((len(weights), 0))
        return (weights[:, None] * values).sum(0) / max(float(weights.sum()), 1e-12)


def candidates(rankings: list[CheckpointRanking], side: str) -> np.ndarray:
    """The rows some checkpoint ranked on ``side``, in row order."""
    return np.unique(np.concatenate([r.ranked(side) for r in rankings])).astype(np.int64)


def tracin_scores(rankings: list[CheckpointRanking], rows: np.ndarray) -> np.ndarray:
    """``S(x) = sum_c s_c(x)``: the calibrated TracIn score every fused hit is shown with."""
    return np.sum([r.scores(rows) for r in rankings], axis=0) if len(rows) else np.zeros(0)


class CheckpointFusion(Registered, noun="checkpoint fusion rule"):
    """Combine several checkpoints' rankings of the same rows into one ranking of one side."""

    name: ClassVar[str]
    help: ClassVar[str]

    def fuse(self, rankings: list[CheckpointRanking], side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of ``side``, best first (the top's most positive, the bottom's most negative)."""
        raise NotImplementedError
