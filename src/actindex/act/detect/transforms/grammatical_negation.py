"""``negation``: the first auxiliary verb's negation toggled."""

from __future__ import annotations

import re

from actindex.act.detect.transforms.base import Transform, match_case
from actindex.act.detect.transforms.lexicon import CONTRACTED, NEGATABLE, SPLIT_STEM


class GrammaticalNegation(Transform):
    """Toggle the negation of the first auxiliary verb: insert ``not`` after it, or remove ``not`` / ``n't``.

    A sentence-initial auxiliary (a question) takes ``not`` after its subject: ``Can you not help?``.
    """

    name, category = "negation", "negation"
    help = "insert/remove 'not' after the first auxiliary (is/are/was/can/will/do...)"

    def apply(self, prompt: str) -> str | None:
        match = NEGATABLE.search(prompt)
        if not match:
            return None
        head, tail = prompt[: match.start()], prompt[match.end():]
        if match.group("contr"):
            word = match.group("contr")
            return head + match_case(word, CONTRACTED[word.lower()]) + tail
        if match.group("split"):
            word = match.group("split")
            return head + match_case(word, SPLIT_STEM.get(word.lower(), word.lower())) + tail
        word = match.group("aux")
        if match.group("neg"):
            return head + word + tail
        if not head.strip():  # inverted question: negate after the subject
            subject = re.match(r"(\s+\S+)", tail)
            if subject and subject.group(1).strip(".,!?"):
                return head + word + subject.group(1) + " not" + tail[subject.end():]
        return head + word + " not" + tail
