"""``soft-voting``: the categories average their supporter-standardised scores instead of voting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.act.detect.rules.base import ThresholdRule
from actindex.act.detect.statistics import category_means, support_z

if TYPE_CHECKING:
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.scoring import ScoreTable


@dataclass
class SoftVotingRule(ThresholdRule):
    """Flag ``mean_c mean_{T in c} u_{T,i} >= threshold``, ``u`` the scores standardised against their
    supporters (:func:`support_z`; module docstring of :mod:`actindex.act.detect`)."""

    name: ClassVar[str] = "soft-voting"
    help: ClassVar[str] = "mean over the categories of the supporter-standardised scores"
    record_field: ClassVar[str] = "soft_voting_statistic"
    threshold: float = 2.5

    @classmethod
    def from_config(cls, config: DetectConfig) -> SoftVotingRule:
        return cls(config.soft_threshold)

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return category_means(support_z(table.scores), table.categories)[1].mean(axis=1)
