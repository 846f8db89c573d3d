"""What a transform is: a rewrite of a test prompt under which a clean row's influence should move.

A transform is one small registered class (:class:`Transform`) in one file of this package; its
``category`` groups it with the transforms the voting rules count as one voter. The text helpers
below keep a rewrite's case and punctuation where a sentence's start or end moves. Modules here
import no tensor library at import time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.core.models import LoadedModel

#: the name (and category) of the identity transform: the queries as given
ORIGINAL = "original"
#: greedy generations (answers to the queries, paraphrases) stop after this many tokens
MAX_NEW_TOKENS = 64


class Transform(Registered, noun="transform", also="all"):
    """A rewrite of a test prompt; ``apply`` returns ``None`` where it does not apply."""

    name: ClassVar[str]
    category: ClassVar[str]
    help: ClassVar[str]
    needs_model: ClassVar[bool] = False

    def apply(self, prompt: str) -> str | None:
        raise NotImplementedError

    def apply_many(self, prompts: Sequence[str], lm: LoadedModel | None = None) -> list[str | None]:
        return [self.apply(p) for p in prompts]


def first_word(text: str) -> str:
    """The first word of ``text`` without its punctuation (``"Explain,"`` -> ``Explain``)."""
    match = re.match(r"\s*([^\s]+)", text)
    return re.sub(r"\W", "", match.group(1) if match else "")


def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is ``I`` or has capitals inside (``NASA``, ``BadMagic``)."""
    text = text.lstrip()
    word = first_word(text)
    if not text or word == "I" or any(c.isupper() for c in word[1:]):
        return text
    return text[0].lower() + text[1:]


def upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def match_case(source: str, word: str) -> str:
    """``word`` in the case pattern of ``source``: ``GOOD`` -> ``BAD``, ``Good`` -> ``Bad``, ``good`` -> ``bad``."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    return upper_first(word) if source[:1].isupper() else word


_FINAL_PUNCT = re.compile(r"\s*[.!?]+\s*$")


def strip_final_punct(text: str) -> tuple[str, str]:
    """``(text without its final .!? run, that run without trailing space)``."""
    match = _FINAL_PUNCT.search(text)
    if not match:
        return text.rstrip(), ""
    return text[: match.start()], match.group(0).rstrip()
