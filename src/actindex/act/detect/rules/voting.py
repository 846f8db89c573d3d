"""``voting``: each category of transforms votes for the rows in its top set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.act.detect.rules.base import DetectRule
from actindex.act.detect.statistics import category_means, support_z, top_count
from actindex.configs import check_choice
from actindex.errors import ActindexError

if TYPE_CHECKING:
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.scoring import ScoreTable

#: what each score column is standardised against: the rows that support the queries, or all of them
VOTE_SCALES = ("support", "all")


@dataclass
class VotingRule(DetectRule):
    """Each category votes for rows in its top ``top`` with mean standardised score ``>= z``; flag
    ``votes >= min_votes``.

    ``min_votes = None`` asks for every category present. ``scale``: ``support`` standardises each column
    against the rows with ``s > 0`` (:func:`support_z`), ``all`` against the whole column (:func:`robust_z`).
    """

    name: ClassVar[str] = "voting"
    help: ClassVar[str] = "votes of the transform categories (original, negation, lexical, syntax, paraphrase)"
    record_field: ClassVar[str] = "votes"
    record_type: ClassVar[type] = int
    top: float = 0.1
    z: float = 2.0
    min_votes: int | None = None
    scale: str = "support"

    def __post_init__(self) -> None:
        if self.top <= 0:
            raise ActindexError(f"--vote-top must be positive, got {self.top}")
        if self.min_votes is not None and self.min_votes < 1:
            raise ActindexError(f"--min-votes must be at least 1, got {self.min_votes}")
        check_choice("--vote-scale", self.scale, VOTE_SCALES)

    @classmethod
    def from_config(cls, config: DetectConfig) -> VotingRule:
        return cls(config.vote_top, config.vote_z, config.min_votes, config.vote_scale)

    def category_z(self, table: ScoreTable) -> tuple[list[str], np.ndarray]:
        z = support_z(table.scores) if self.scale == "support" else table.z()
        return category_means(z, table.categories)

    def votes(self, table: ScoreTable) -> np.ndarray:
        _, cz = self.category_z(table)
        n = len(cz)
        k = top_count(self.top, n)
        out = np.zeros(n, np.int64)
        for c in range(cz.shape[1]):
            top = np.argsort(-cz[:, c], kind="stable")[:k]
            vote = np.zeros(n, bool)
            vote[top] = True
            out += vote & (cz[:, c] >= self.z)
        return out

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return self.votes(table).astype(np.float64)

    def flags(self, table: ScoreTable) -> np.ndarray:
        needed = self.min_votes if self.min_votes is not None else len(set(table.categories))
        return self.votes(table) >= needed
