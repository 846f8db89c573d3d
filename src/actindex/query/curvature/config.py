"""Settings of ``actindex fit-curvature`` (:class:`CurvatureConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from actindex.configs import check_choices, option
from actindex.errors import ActindexError
from actindex.query.curvature.kinds import kind_names

SUBLAYERS = ("mlp", "block")
BOTH = "both"
ALL = "all"


def _kinds_or_both() -> list[str]:
    return [*kind_names(), BOTH]


@dataclass
class CurvatureConfig:
    """Settings of ``actindex fit-curvature``."""

    kind: str = option("Which factors to fit (both = every kind).", "ekfac", choices=_kinds_or_both)
    samples: int = option("Training rows sampled (seeded, without replacement) to fit the factors.", 256, minimum=1)
    modules: list[str] | None = option(
        "Modules to fit, as fnmatch patterns, or `all`. Default: EK-FAC on the modules of the index's "
        "projected-gradient family, else the LoRA adapters, else the MLP linear modules of the indexed layers "
        "(a first fit that finishes in minutes on a CPU); LinFAC on the indexed layers' sublayers. `all`: every "
        "linear module (EK-FAC) or every block (LinFAC).",
        None,
    )
    sublayer: str = option("LinFAC sublayer: mlp (the MLP of a block) or block (the whole decoder block).", "mlp",
                           choices=SUBLAYERS)
    empirical_fisher: bool = option("Use the data's own labels (empirical Fisher) instead of sampled labels.", False)
    damping: float | None = option("Damping lambda added to every eigenvalue (default 0.1 x mean(Lambda)).", None)
    batch_size: int = option("Rows per forward/backward pass.", 8, minimum=1)
    seed: int = option("Seed of the row sample and the sampled labels.", 0)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.damping is not None and not (math.isfinite(self.damping) and self.damping >= 0):
            raise ActindexError(f"--damping must be a non-negative number, got {self.damping}")

    @property
    def kinds(self) -> list[str]:
        return kind_names() if self.kind == BOTH else [self.kind]

    @property
    def every_module(self) -> bool:
        """``--modules all``: every linear module (EK-FAC), every block (LinFAC)."""
        return self.modules == [ALL]
