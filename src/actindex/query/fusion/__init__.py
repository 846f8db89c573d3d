"""Fusion rules for ensemble rankings, one registered class per file; ``FusionRule.get(name)``."""

from actindex.query.fusion.base import FusionRule
from actindex.query.fusion.rrf import RRF_K, ReciprocalRankFusion, reciprocal_rank_fusion

__all__ = ["RRF_K", "FusionRule", "ReciprocalRankFusion", "reciprocal_rank_fusion"]
