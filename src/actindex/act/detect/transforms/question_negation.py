"""``question-negation``: the prompt asked as a negated question."""

from __future__ import annotations

from actindex.act.detect.transforms.base import Transform, first_word, lower_first, match_case, strip_final_punct
from actindex.act.detect.transforms.lexicon import CONTRACT, IMPERATIVES, NEGATABLE


class QuestionNegation(Transform):
    """A negated question: the first auxiliary of a question contracted (``What isn't ...?``), an
    instruction turned into ``Why shouldn't you <instruction>?``, a statement into
    ``Why isn't it true that <statement>?``."""

    name, category = "question-negation", "negation"
    help = "negated question: 'Why isn't it true that ...?' / 'What isn't ...?'"

    def apply(self, prompt: str) -> str | None:
        body, punct = strip_final_punct(prompt)
        if not body.strip():
            return None
        if punct.endswith("?"):
            match = NEGATABLE.search(body)
            if match and match.group("aux") and not match.group("neg") and match.group("aux").lower() in CONTRACT:
                word = match.group("aux")
                return body[: match.start()] + match_case(word, CONTRACT[word.lower()]) + body[match.end():] + punct
        if first_word(body).lower() in IMPERATIVES:
            return f"Why shouldn't you {lower_first(body)}?"
        return f"Why isn't it true that {lower_first(body)}?"
