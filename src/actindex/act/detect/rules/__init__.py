"""The rules that flag rows of a score table (``--ensemble``), one registered class per file;
``DetectRule.get(name)`` returns one with its default settings, ``DetectRule.registry[name].from_config``
one with a config's."""

from actindex.act.detect.rules.base import DetectRule

# the registry lists the rules in this order (the order of the CLI's table and of a record's fields)
# isort: off
from actindex.act.detect.rules.variance import VarianceRule
from actindex.act.detect.rules.voting import VOTE_SCALES, VotingRule
from actindex.act.detect.rules.both import BothRule
from actindex.act.detect.rules.soft_voting import SoftVotingRule
# isort: on

#: the rule whose statistic breaks ties in the order of any rule's flagged rows
TIE_BREAK = VarianceRule.name


def rule_names() -> list[str]:
    """Every registered rule, for the choices of ``--ensemble``."""
    return list(DetectRule.registry)


__all__ = ["TIE_BREAK", "VOTE_SCALES", "BothRule", "DetectRule", "SoftVotingRule", "VarianceRule", "VotingRule",
           "rule_names"]
