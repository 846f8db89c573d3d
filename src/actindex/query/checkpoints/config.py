"""Settings of a checkpoint-set query (:class:`CheckpointConfig`), and the names of the checkpoint-fusion rules;
light (numpy only), so the CLI reads the choices without loading a tensor library."""

from __future__ import annotations

from dataclasses import dataclass

from actindex.configs import check_choices, option
from actindex.query.checkpoints.fusion import CheckpointFusion, CheckpointRRF, TracInCosine, TracInSum

#: the default rule of a checkpoint-set query
DEFAULT_CHECKPOINT_FUSION = TracInSum.name


def checkpoint_fusion_names() -> list[str]:
    """Every registered checkpoint-fusion rule, for the CLI's choices."""
    return list(CheckpointFusion.registry)


@dataclass
class CheckpointConfig:
    """How a query of several checkpoints' indexes of the same rows is answered."""

    checkpoint_fusion: str = option(
        "How the answers of several checkpoints' indexes of the same rows combine (several --index, or a checkpoint "
        "set): tracin = sum of the checkpoints' calibrated scores, tracin-cosine = sum of their cosines, rrf = "
        "reciprocal rank fusion.", DEFAULT_CHECKPOINT_FUSION, choices=checkpoint_fusion_names)
    checkpoint: int | None = option("Query only the index of this training step of a checkpoint set.", None,
                                    minimum=0, metavar="STEP")

    def __post_init__(self) -> None:
        check_choices(self)


__all__ = ["DEFAULT_CHECKPOINT_FUSION", "CheckpointConfig", "CheckpointRRF", "TracInCosine", "TracInSum",
           "checkpoint_fusion_names"]
