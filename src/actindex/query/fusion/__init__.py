"""Fusion rules for ensemble rankings, one registered class per file; ``FusionRule.get(name)``."""

from actindex.query.fusion.base import (
    BOTTOM,
    TOP,
    FusionRule,
    MemberRanking,
    calibrated,
    robust_center_scale,
)

# the registry lists the rules in this order
# isort: off
from actindex.query.fusion.rrf import RRF_K, ReciprocalRankFusion, rank_fused, reciprocal_rank_fusion
from actindex.query.fusion.zmean import CalibratedMean
# isort: on


def fusion_names() -> list[str]:
    """Every registered fusion rule, for the CLI's choices."""
    return list(FusionRule.registry)


__all__ = [
    "BOTTOM", "RRF_K", "TOP", "CalibratedMean", "FusionRule", "MemberRanking", "ReciprocalRankFusion", "calibrated",
    "fusion_names", "rank_fused", "reciprocal_rank_fusion", "robust_center_scale",
]
