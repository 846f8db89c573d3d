"""What a detection rule is: a way to flag rows of a score table (``--ensemble``).

A rule is one small registered class (:class:`DetectRule`) in one file of this package. It reads its
settings from a :class:`~actindex.act.detect.config.DetectConfig` (:meth:`~DetectRule.from_config`,
where it also checks them), gives every row a ``statistic`` (what orders its flagged rows) and a
boolean ``flags`` mask; ``record_field`` names the statistic in the flagged rows written by ``--out``.
Modules here import no tensor library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.scoring import ScoreTable


class DetectRule(Registered, noun="ensemble"):
    """A rule that flags rows of a :class:`~actindex.act.detect.scoring.ScoreTable`; ``statistic`` orders the
    flagged rows."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: the key of the row's statistic in a written record (``None``: not written), and its type there
    record_field: ClassVar[str | None] = None
    record_type: ClassVar[type] = float

    @classmethod
    def from_config(cls, config: DetectConfig) -> DetectRule:
        """This rule with the config's settings (checked)."""
        raise NotImplementedError

    def statistic(self, table: ScoreTable) -> np.ndarray:
        raise NotImplementedError

    def flags(self, table: ScoreTable) -> np.ndarray:
        """Boolean mask over ``table.rows``."""
        raise NotImplementedError

    @classmethod
    def record(cls, statistic: float) -> dict[str, Any]:
        """A row's statistic as its record writes it (``{}`` when the rule writes none)."""
        return {cls.record_field: cls.record_type(statistic)} if cls.record_field else {}


class ThresholdRule(DetectRule):
    """A rule that flags the rows whose statistic is at least the rule's ``threshold`` (a dataclass field of
    the subclass)."""

    threshold: float

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.statistic(table) >= self.threshold
