"""The query methods (docs/design.md#query-methods): those with a fixed query in :mod:`.fixed`, the adaptive
default in :mod:`.adaptive`; ``QueryMethod.get(name)`` returns one.

``adaptive`` is the default ranking; where one query vector is needed (a saved vector, correction,
detection) the default is ``residual-change``.
"""

from actindex.query.methods.adaptive import AdaptiveMethod
from actindex.query.methods.base import FormedMember, Member, QueryMethod
from actindex.query.methods.fixed import (
    ActivationMethod,
    EkfacGradientMethod,
    EnsembleMethod,
    GradientMethod,
    PersonaMethod,
    PooledResidualChangeMethod,
    ResidualChangeMethod,
    ResidualDifferenceMethod,
)

#: the registry, in the order of the CLI's choices and of ``--help-methods``
QueryMethod.register(
    ResidualChangeMethod, PooledResidualChangeMethod, ResidualDifferenceMethod, PersonaMethod, ActivationMethod,
    GradientMethod, EkfacGradientMethod, EnsembleMethod, AdaptiveMethod,
)

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
