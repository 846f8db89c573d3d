"""What a fusion rule is: how the rankings of several (method, layer) members become one ranking.

A rule is one small registered class (:class:`FusionRule`) in one file of this package:
:meth:`FusionRule.fuse` takes each member's ranked rows (best first) and returns a score per row;
rows with score 0 were ranked by no member.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from actindex.registry import Registered


class FusionRule(Registered, noun="fusion rule"):
    """Combine members' rankings into one score per row (higher = ranked higher)."""

    name: ClassVar[str]
    help: ClassVar[str]

    def fuse(self, rankings: list[np.ndarray], rows: int) -> np.ndarray:
        """``score[row]`` over ``rows`` rows from ranked lists of row numbers (best first)."""
        raise NotImplementedError
