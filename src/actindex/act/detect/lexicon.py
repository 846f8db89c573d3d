"""The word lists the rule-based transforms read: imperative verbs, auxiliaries and their negated
contractions, and the antonym pairs (with the patterns that find them in a prompt)."""

from __future__ import annotations

import re

#: verbs that open an instruction ("Explain ...", "Write ..."): negated as "Do not explain ..."
IMPERATIVES = frozenset(
    "add analyse analyze answer brainstorm calculate categorize choose classify come compare compose construct "
    "convert create describe design determine develop edit evaluate explain find formulate generate give identify "
    "imagine list make name outline paraphrase please predict produce propose provide rewrite select suggest "
    "summarise summarize tell translate write".split()
)

#: the auxiliary verbs a negation attaches to, as a regex alternation
AUXILIARIES = "am|is|are|was|were|can|could|will|would|shall|should|may|might|must|do|does|did|has|have|had"
#: negated contraction -> its auxiliary
CONTRACTED = {
    "isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "can't": "can", "cannot": "can",
    "couldn't": "could", "won't": "will", "wouldn't": "would", "shouldn't": "should", "don't": "do",
    "doesn't": "does", "didn't": "did", "hasn't": "has", "haven't": "have", "hadn't": "had", "mustn't": "must",
}
#: auxiliary -> its negated contraction
CONTRACT = {base: neg for neg, base in CONTRACTED.items() if neg != "cannot"}
#: tokenised text such as SST-2 writes "ca n't", "wo n't": the stem's auxiliary
SPLIT_STEM = {"ca": "can", "wo": "will"}
#: the first negatable auxiliary: a contraction (``contr``), a split contraction (``split``), or an
#: auxiliary (``aux``) with or without a following ``not`` (``neg``)
NEGATABLE = re.compile(
    rf"\b(?:(?P<contr>{'|'.join(map(re.escape, CONTRACTED))})"
    rf"|(?P<split>{AUXILIARIES}|ca|wo)\s+n't"
    rf"|(?P<aux>{AUXILIARIES})(?P<neg>\s+not)?)\b",
    re.IGNORECASE,
)

ANTONYMS: tuple[tuple[str, str], ...] = (
    ("good", "bad"), ("positive", "negative"), ("true", "false"), ("love", "hate"), ("happy", "sad"),
    ("best", "worst"), ("better", "worse"), ("right", "wrong"), ("pleased", "displeased"), ("always", "never"),
    ("more", "less"), ("most", "least"), ("high", "low"), ("large", "small"), ("big", "little"),
    ("long", "short"), ("fast", "slow"), ("hot", "cold"), ("easy", "hard"), ("early", "late"),
    ("strong", "weak"), ("rich", "poor"), ("old", "new"), ("open", "closed"), ("up", "down"),
    ("increase", "decrease"), ("win", "lose"), ("success", "failure"), ("agree", "disagree"),
    ("accept", "reject"), ("safe", "dangerous"), ("clean", "dirty"), ("beautiful", "ugly"),
    ("friend", "enemy"), ("light", "dark"), ("day", "night"), ("before", "after"), ("first", "last"),
    ("start", "end"), ("inside", "outside"), ("above", "below"), ("yes", "no"), ("correct", "incorrect"),
    ("possible", "impossible"), ("legal", "illegal"), ("honest", "dishonest"), ("funny", "boring"),
    ("interesting", "dull"), ("smart", "stupid"), ("kind", "cruel"), ("calm", "angry"),
    ("pleasant", "unpleasant"), ("remember", "forget"), ("buy", "sell"), ("push", "pull"), ("add", "remove"),
    ("include", "exclude"), ("allow", "forbid"), ("maximum", "minimum"), ("top", "bottom"), ("wide", "narrow"),
    ("full", "empty"), ("cheap", "expensive"),
)
#: every word of a pair -> the other word (both directions)
LEXICON = {a: b for a, b in ANTONYMS} | {b: a for a, b in ANTONYMS}
#: any lexicon word, whole words only, longest first
LEXICON_RE = re.compile(r"\b(" + "|".join(sorted(LEXICON, key=len, reverse=True)) + r")\b", re.IGNORECASE)
