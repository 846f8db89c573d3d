"""The semantic transforms of the test prompts, one registered class per file; ``Transform.get(name)``."""

from __future__ import annotations

from collections.abc import Sequence

from actindex.act.detect.transforms.base import MAX_NEW_TOKENS, ORIGINAL, Transform

# the registry lists the transforms in this order
# isort: off
from actindex.act.detect.transforms.prefix_negation import PrefixNegation
from actindex.act.detect.transforms.question_negation import QuestionNegation
from actindex.act.detect.transforms.grammatical_negation import GrammaticalNegation
from actindex.act.detect.transforms.antonym import AntonymFlip
from actindex.act.detect.transforms.clause_reorder import ClauseReorder
from actindex.act.detect.transforms.paraphrase import Paraphrase
# isort: on
from actindex.errors import ActindexError


def resolve_transforms(spec: str | Sequence[str]) -> list[Transform]:
    """``all`` (every registered transform), ``fast`` (those that need no model) or a comma list."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        names = list(Transform.registry)
    elif names == ["fast"]:
        names = [n for n, cls in Transform.registry.items() if not cls.needs_model]
    if not names:
        raise ActindexError("--transforms: name at least one transform, or all")
    return [Transform.get(n) for n in dict.fromkeys(names)]


__all__ = [
    "MAX_NEW_TOKENS", "ORIGINAL", "AntonymFlip", "ClauseReorder", "GrammaticalNegation", "Paraphrase",
    "PrefixNegation", "QuestionNegation", "Transform", "resolve_transforms",
]
