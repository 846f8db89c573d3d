"""``antonym``: every lexicon word flipped to its antonym."""

from __future__ import annotations

from actindex.act.detect.transforms.base import Transform, match_case
from actindex.act.detect.transforms.lexicon import ANTONYMS, LEXICON, LEXICON_RE


class AntonymFlip(Transform):
    """Every word of a built-in antonym lexicon replaced by its antonym (both directions, case kept)."""

    name, category = "antonym", "lexical"
    help = f"swap words for antonyms ({len(set(ANTONYMS))} built-in pairs: good/bad, true/false, love/hate...)"

    def apply(self, prompt: str) -> str | None:
        out, n = LEXICON_RE.subn(lambda m: match_case(m.group(1), LEXICON[m.group(1).lower()]), prompt)
        return out if n else None
