"""The query methods (docs/design.md#query-methods), a registered class per file; ``QueryMethod.get(name)`` returns one.

``adaptive`` is the default ranking; where one query vector is needed (a saved vector, correction,
detection) the default is ``residual-change``.
"""

from actindex.query.methods.base import FormedMember, Member, QueryMethod

# the registry lists the methods in this order
# isort: off
from actindex.query.methods.residual_change import ResidualChangeMethod
from actindex.query.methods.residual_change_pooled import PooledResidualChangeMethod
from actindex.query.methods.residual_difference import ResidualDifferenceMethod
from actindex.query.methods.persona import PersonaMethod
from actindex.query.methods.activation import ActivationMethod
from actindex.query.methods.gradient import GradientMethod
from actindex.query.methods.ekfac import EkfacGradientMethod
from actindex.query.methods.ensemble import EnsembleMethod
from actindex.query.methods.adaptive import AdaptiveMethod
# isort: on

#: the default ranking of ``query`` and ``filter``: chosen by its worst case over the benchmark sets
DEFAULT_METHOD = AdaptiveMethod.name
#: the default where one query vector is needed (a saved vector, correction, detection)
DEFAULT_VECTOR_METHOD = ResidualChangeMethod.name


def default_method(needs_vector: bool) -> str:
    """``adaptive`` for a plain ranking; ``residual-change`` when the caller needs one query vector."""
    return DEFAULT_VECTOR_METHOD if needs_vector else DEFAULT_METHOD


def method_names() -> list[str]:
    """Every registered method, for the CLI's choices."""
    return list(QueryMethod.registry)


__all__ = [
    "DEFAULT_METHOD", "DEFAULT_VECTOR_METHOD", "ActivationMethod", "AdaptiveMethod", "EkfacGradientMethod",
    "EnsembleMethod", "FormedMember", "GradientMethod", "Member", "PersonaMethod", "PooledResidualChangeMethod",
    "QueryMethod", "ResidualChangeMethod", "ResidualDifferenceMethod", "default_method", "method_names",
]
