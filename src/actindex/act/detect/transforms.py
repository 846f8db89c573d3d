"""The semantic transforms of the test prompts: each a rewrite under which a clean row's influence should move.

A transform is a few lines (:class:`Transform`), listed in :data:`TRANSFORMS`; its ``category`` groups it with
the transforms the voting rules count as one voter. The text helpers below keep a rewrite's case and
punctuation where a sentence's start or end moves; the word lists are :mod:`.lexicon`'s. This module imports no
tensor library at import time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from actindex.act.detect.lexicon import (
    ANTONYMS,
    CONTRACT,
    CONTRACTED,
    IMPERATIVES,
    LEXICON,
    LEXICON_RE,
    NEGATABLE,
    SPLIT_STEM,
)
from actindex.errors import ActindexError
from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.core.models import LoadedModel

#: the name (and category) of the identity transform: the queries as given
ORIGINAL = "original"
#: greedy generations (answers to the queries, paraphrases) stop after this many tokens
MAX_NEW_TOKENS = 64


class Transform(Registered, noun="transform", also="all", listed=True):
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


class AntonymFlip(Transform):
    """Every word of a built-in antonym lexicon replaced by its antonym (both directions, case kept)."""

    name, category = "antonym", "lexical"
    help = f"swap words for antonyms ({len(set(ANTONYMS))} built-in pairs: good/bad, true/false, love/hate...)"

    def apply(self, prompt: str) -> str | None:
        out, n = LEXICON_RE.subn(lambda m: match_case(m.group(1), LEXICON[m.group(1).lower()]), prompt)
        return out if n else None


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


PARAPHRASE_INSTRUCTION = "Paraphrase the following text. Keep its meaning and reply with the paraphrase only.\n\n"
#: a paraphrase keeps at least this share of the prompt's word count
MIN_PARAPHRASE_SHARE = 1 / 3


class Paraphrase(Transform):
    """The model's own paraphrase of the prompt (greedy), asked with :data:`PARAPHRASE_INSTRUCTION`."""

    name, category = "paraphrase", "paraphrase"
    help = "a paraphrase generated by the model itself (greedy; slow on CPU)"
    needs_model = True

    def apply(self, prompt: str) -> str | None:  # pragma: no cover - needs the model
        raise ActindexError("the paraphrase transform needs the model: use apply_many")

    def apply_many(self, prompts: Sequence[str], lm: LoadedModel | None = None) -> list[str | None]:
        """Answers with fewer than :data:`MIN_PARAPHRASE_SHARE` of the prompt's words are not
        paraphrases (a model fine-tuned to answer with a label answers ``Negative``): ``None``."""
        from actindex.core.models import generate

        if lm is None:
            raise ActindexError("the paraphrase transform needs the model")
        convs = [[{"role": "user", "content": PARAPHRASE_INSTRUCTION + p}] for p in prompts]
        answers = [a.strip() for a in generate(lm, convs, MAX_NEW_TOKENS)]
        return [a if a and len(a.split()) >= MIN_PARAPHRASE_SHARE * len(p.split()) else None
                for a, p in zip(answers, prompts)]


#: the registry, in the order of ``--transforms all`` and of the score table's columns
TRANSFORMS = (PrefixNegation, QuestionNegation, GrammaticalNegation, AntonymFlip, ClauseReorder, Paraphrase)
Transform.register(*TRANSFORMS)


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
