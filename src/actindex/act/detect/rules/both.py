"""``both``: the rows flagged by the variance rule and by the voting rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.act.detect.rules.base import DetectRule
from actindex.act.detect.rules.variance import VarianceRule
from actindex.act.detect.rules.voting import VotingRule

if TYPE_CHECKING:
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.scoring import ScoreTable


@dataclass
class BothRule(DetectRule):
    """Flag the rows both ``variance`` and ``voting`` flag; their order is the variance statistic's."""

    name: ClassVar[str] = "both"
    help: ClassVar[str] = "flagged by variance and by voting"
    variance: VarianceRule = field(default_factory=VarianceRule)
    voting: VotingRule = field(default_factory=VotingRule)

    @classmethod
    def from_config(cls, config: DetectConfig) -> BothRule:
        return cls(VarianceRule.from_config(config), VotingRule.from_config(config))

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return self.variance.statistic(table)

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.variance.flags(table) & self.voting.flags(table)
