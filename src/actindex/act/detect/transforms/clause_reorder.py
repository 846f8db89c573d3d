"""``reorder``: the prompt's two clauses swapped."""

from __future__ import annotations

import re

from actindex.act.detect.transforms.base import Transform, lower_first, strip_final_punct, upper_first

_CLAUSE = re.compile(r"\s*,(?!\d)\s*|\s+(and|because)\s+", re.IGNORECASE)


class ClauseReorder(Transform):
    """Swap the clauses around the first comma, ``and`` or ``because``.

    ``A, B.`` -> ``B, A.``; ``A and B.`` -> ``B and A.``; ``A because B.`` -> ``Because B, A.``.
    The first letter's case moves with the sentence start; the final punctuation stays last.
    """

    name, category = "reorder", "syntax"
    help = "swap the clauses around the first comma / 'and' / 'because'"

    def apply(self, prompt: str) -> str | None:
        text = prompt.strip()
        for match in _CLAUSE.finditer(text):
            a, rest = text[: match.start()], text[match.end():]
            b, punct = strip_final_punct(rest)
            if not a.strip() or not b.strip():
                continue
            capital = a[:1].isupper()
            word = (match.group(1) or "").lower()
            if word == "because":
                return "Because " + lower_first(b) + ", " + lower_first(a) + punct
            sep = ", " if not word else f" {word} "
            first = upper_first(b) if capital else b
            return first + sep + (lower_first(a) if capital else a) + punct
        return None
