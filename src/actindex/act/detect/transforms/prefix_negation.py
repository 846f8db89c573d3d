"""``prefix-negation``: a negation put in front of the whole prompt."""

from __future__ import annotations

from actindex.act.detect.transforms.base import Transform, first_word, lower_first
from actindex.act.detect.transforms.lexicon import IMPERATIVES


class PrefixNegation(Transform):
    """``Do not <instruction>`` for an imperative, ``Do not answer this question: <question>`` for a
    question, else ``It is not true that <statement>``."""

    name, category = "prefix-negation", "negation"
    help = "prefix a negation: 'Do not explain ...' / 'It is not true that ...'"

    def apply(self, prompt: str) -> str | None:
        word = first_word(prompt).lower()
        if not word:
            return None
        if word in IMPERATIVES:
            return "Do not " + lower_first(prompt)
        if prompt.rstrip().endswith("?"):
            return "Do not answer this question: " + prompt.strip()
        return "It is not true that " + lower_first(prompt)
