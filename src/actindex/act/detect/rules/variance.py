"""``variance``: a lower confidence bound on a row's standardised score across the transforms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from actindex.act.detect.rules.base import ThresholdRule

if TYPE_CHECKING:
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.scoring import ScoreTable


@dataclass
class VarianceRule(ThresholdRule):
    """Flag ``v_i = mean_T z_{T,i} - std_T z_{T,i} >= threshold`` (robust z per transform)."""

    name: ClassVar[str] = "variance"
    help: ClassVar[str] = "mean_T z - std_T z over the robustly standardised columns"
    record_field: ClassVar[str] = "variance_statistic"
    threshold: float = 3.0

    @classmethod
    def from_config(cls, config: DetectConfig) -> VarianceRule:
        return cls(config.threshold)

    def statistic(self, table: ScoreTable) -> np.ndarray:
        z = table.z()
        return z.mean(axis=1) - z.std(axis=1)
