"""The correction objectives, one registered class per file; ``Objective.get(name)`` returns one."""

from actindex.act.correct.objectives.base import Objective, StepInputs, objective_names
from actindex.act.correct.objectives.losses import bregman_loss, correction_loss, proximity_loss

# the registry lists the objectives in this order
# isort: off
from actindex.act.correct.objectives.ibo import IBO
from actindex.act.correct.objectives.ga import GradientAscent
from actindex.act.correct.objectives.pbo import PBO
# isort: on

__all__ = [
    "IBO", "PBO", "GradientAscent", "Objective", "StepInputs", "bregman_loss", "correction_loss", "objective_names",
    "proximity_loss",
]
