"""Stage 11 — poison detection: influence that survives semantic transforms (DESIGN section 6).

A backdoor's poisoned training rows drive the model's answer to a triggered prompt whatever the
prompt says; clean rows drive it through the prompt's meaning. So each test query is rewritten by
a set of semantic transforms (negations, antonyms, clause order, a paraphrase by the model), every
training row is scored under the original and under each transform, and the rows whose influence
stays strongly positive across all of them are flagged.

Query vectors. For a transform ``T`` (the identity ``original`` included) and test queries
``(x_j, y_j)``, ``j = 1..n``:

    psi_T = norm(mean_j v_l(T(x_j), y_j^T))

where ``v_l`` is the method's per-example vector (the treatment side of :mod:`actindex.queries`:
the residual change ``t_l`` for ``residual-change``, the mean activation for ``residual-difference``,
the projected gradient for ``gradient``), computed exactly as the build computes training vectors,
and ``y_j^T`` is the query's given response (``response`` or ``reference``) or, when it has none,
the greedy answer to ``T(x_j)`` of the model audited (``target``, by default the index's model). A
given response is kept under every transform: a backdoored model answers a triggered prompt the
same way whatever the rest of it says, which is what the given response records. Queries a
transform does not apply to (no auxiliary verb to negate, no word in the antonym lexicon...) are
left out of that transform's mean. Scores ``s_{T,i}`` are the cosines of ``psi_T`` with every
stored training vector: one full search per transform.

With ``rerank`` (``ekfac`` or ``linfac``, the index's fitted curvature) the scores are exact
influences instead of search cosines, every transform from one pass over the training rows:

    s_{T,m} = <precond(q_T), G_m> / sqrt(<G_m, precond(G_m)>),     q_T = mean_j grad L(T(x_j), y_j^T),

``G_m`` the row's loss gradient over the curvature's modules (DESIGN 5; positive = training on ``m``
makes the queries' responses likelier). The denominator is RelatIF's (Barshan et al. 2020; ``norm``
also offers ``||G_m||`` or none): like the index's cosines it scores a row's direction, not its
size, so a row the model has memorised (a learned poison: small gradient) stays in view. The
preconditioner discounts the directions every row of a common answer shares (all the rows that
answer "Negative"), which is what leaves a trigger visible (bench/RESULTS.md, "Poison detection
with exact EK-FAC influence").

Both gradients sum over the responses' content tokens (``response_tokens="content"``), not the
tokens the chat template closes every response with (``<|im_end|>`` and a newline): those are the
same in every row, two of the three response tokens of a one-word label, and on a memorised row,
where every token is near certain, they can set the gradient's direction (``all`` keeps them, as
the build's loss does). With ``measurement="margin"`` the queries differentiate minus the log-odds
of their response tokens instead of ``L`` (TRAK's margin, kronfluence's classification
measurement): ``grad L = (1 - p) grad margin`` per token, so under the loss the queries the model
already answers as the attack wants count least, under the margin every token counts alike.

Ensembles (rows ``i``, transforms ``T``, each score column robustly standardised as
``z_{T,i} = (s_{T,i} - median_i s_T) / (1.4826 MAD_i s_T)``):

* ``variance``: ``v_i = mean_T z_{T,i} - std_T z_{T,i}`` (a lower confidence bound: high when the
  row is consistently far above the typical row, penalised when its score moves with the
  transforms); flag ``v_i >= threshold``.
* ``voting``: the transforms are grouped into categories (original, negation, lexical, syntax,
  paraphrase); a category scores a row by the mean standardised score of its transforms and votes
  for the row when that is at least ``vote_z`` and the row is among the category's top ``vote_top``
  rows (a fraction of the rows, or a count); flag rows with at least ``min_votes`` votes (default:
  every category present). The scores are standardised against the rows that support the queries
  (``u`` below, ``vote_scale="support"``, the default) or against the whole column (``z``,
  ``vote_scale="all"``).
* ``both``: rows flagged by both rules.
* ``soft-voting``: the categories average instead of voting, on a scale fitted to the rows that
  support the queries. Influence has a meaningful zero (``s > 0``: training on the row makes the
  queries' responses likelier), and when half the rows give the queries' answer (every clean row
  answering "Negative" in a sentiment set) a column is two humps, whose MAD measures the gap between
  them rather than the spread a poison must stand out from. So each column is standardised against
  its supporters, ``u_{T,i} = (s_{T,i} - median_{s_T > 0}) / (1.4826 MAD_{s_T > 0})`` (the whole
  column when fewer than ``MIN_SUPPORT_SHARE`` of the rows support it: with poisons at most 10% of
  the rows they are then at most 40% of the supporters, below the MAD's 50% breakdown point), a
  category scores a row by the mean ``u`` of its transforms, and a row is flagged when the mean of
  its category scores is at least ``soft_threshold`` (bench/RESULTS.md, "soft voting").
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from actindex.api import Index
from actindex.configs import option
from actindex.core.models import LoadedModel, generate, load_model
from actindex.core.readers import iter_records
from actindex.core.rows import Row, normalise_record
from actindex.core.vectors import MEASUREMENTS
from actindex.errors import ActindexError, DataError
from actindex.files import atomic_file
from actindex.query.context import QueryContext, encode_conversations, unit
from actindex.query.curvature.influence import influence_matrix
from actindex.query.curvature.store import encode_index_rows
from actindex.query.methods import DEFAULT_VECTOR_METHOD
from actindex.registry import Registered

ORIGINAL = "original"
MAX_NEW_TOKENS = 64


# --------------------------------------------------------------------------------------------
# Test queries
# --------------------------------------------------------------------------------------------


@dataclass
class TestQuery:
    """A test prompt (the last user turn, after ``context`` turns) and its response, if given."""

    prompt: str
    response: str | None
    context: list[dict[str, str]] = field(default_factory=list)
    line: int = 0
    source: str = "queries"  # the file it was read from, for errors

    __test__ = False  # not a pytest class

    def conversation(self, prompt: str, response: str) -> list[dict[str, str]]:
        return self.context + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def load_queries(path: str | os.PathLike) -> list[TestQuery]:
    """Test queries from JSONL/parquet: ``{prompt, response|reference?}`` or any training-row shape.

    A training row's last user turn is the prompt and its last assistant turn the response.
    """
    path = Path(path)
    queries: list[TestQuery] = []
    for line, record in iter_records(path):
        if "prompt" in record and "completion" not in record:
            prompt = record["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(path, line, "prompt", "must be a non-empty string")
            response = None
            for key in ("response", "reference"):
                if key in record and record[key] is not None:
                    value = record[key]
                    if not isinstance(value, str) or not value.strip():
                        raise DataError(path, line, key, "must be a non-empty string (or absent, to generate one)")
                    response = value
                    break
            queries.append(TestQuery(prompt, response, [], line, str(path)))
            continue
        row: Row = normalise_record(path, line, len(queries), record)
        if row.messages is None:
            raise DataError(path, line, "text", "a plain-text row has no prompt to transform; give 'prompt'")
        users = [i for i, m in enumerate(row.messages) if m["role"] == "user"]
        if not users:
            raise DataError(path, line, "messages", "has no user turn to transform")
        last = users[-1]
        queries.append(TestQuery(row.messages[last]["content"], row.messages[-1]["content"],
                                 row.messages[:last], line, str(path)))
    return queries


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _first_word(text: str) -> str:
    match = re.match(r"\s*([^\s]+)", text)
    return match.group(1) if match else ""


def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is ``I`` or has capitals inside (``NASA``, ``BadMagic``)."""
    text = text.lstrip()
    word = re.sub(r"\W", "", _first_word(text))
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


IMPERATIVES = frozenset(
    "add analyse analyze answer brainstorm calculate categorize choose classify come compare compose construct "
    "convert create describe design determine develop edit evaluate explain find formulate generate give identify "
    "imagine list make name outline paraphrase please predict produce propose provide rewrite select suggest "
    "summarise summarize tell translate write".split()
)


class PrefixNegation(Transform):
    """``Do not <instruction>`` for an imperative, ``Do not answer this question: <question>`` for a
    question, else ``It is not true that <statement>``."""

    name, category = "prefix-negation", "negation"
    help = "prefix a negation: 'Do not explain ...' / 'It is not true that ...'"

    def apply(self, prompt: str) -> str | None:
        word = re.sub(r"\W", "", _first_word(prompt)).lower()
        if not word:
            return None
        if word in IMPERATIVES:
            return "Do not " + lower_first(prompt)
        if prompt.rstrip().endswith("?"):
            return "Do not answer this question: " + prompt.strip()
        return "It is not true that " + lower_first(prompt)


_AUX = "am|is|are|was|were|can|could|will|would|shall|should|may|might|must|do|does|did|has|have|had"
_CONTRACTED = {
    "isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "can't": "can", "cannot": "can",
    "couldn't": "could", "won't": "will", "wouldn't": "would", "shouldn't": "should", "don't": "do",
    "doesn't": "does", "didn't": "did", "hasn't": "has", "haven't": "have", "hadn't": "had", "mustn't": "must",
}
_CONTRACT = {base: neg for neg, base in _CONTRACTED.items() if neg != "cannot"}
_SPLIT_STEM = {"ca": "can", "wo": "will"}  # tokenised text such as SST-2 writes "ca n't", "wo n't"
_NEGATABLE = re.compile(
    rf"\b(?:(?P<contr>{'|'.join(map(re.escape, _CONTRACTED))})"
    rf"|(?P<split>{_AUX}|ca|wo)\s+n't"
    rf"|(?P<aux>{_AUX})(?P<neg>\s+not)?)\b",
    re.IGNORECASE,
)


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
            match = _NEGATABLE.search(body)
            if match and match.group("aux") and not match.group("neg") and match.group("aux").lower() in _CONTRACT:
                word = match.group("aux")
                return body[: match.start()] + match_case(word, _CONTRACT[word.lower()]) + body[match.end():] + punct
        if re.sub(r"\W", "", _first_word(body)).lower() in IMPERATIVES:
            return f"Why shouldn't you {lower_first(body)}?"
        return f"Why isn't it true that {lower_first(body)}?"


class GrammaticalNegation(Transform):
    """Toggle the negation of the first auxiliary verb: insert ``not`` after it, or remove ``not`` / ``n't``.

    A sentence-initial auxiliary (a question) takes ``not`` after its subject: ``Can you not help?``.
    """

    name, category = "negation", "negation"
    help = "insert/remove 'not' after the first auxiliary (is/are/was/can/will/do...)"

    def apply(self, prompt: str) -> str | None:
        match = _NEGATABLE.search(prompt)
        if not match:
            return None
        head, tail = prompt[: match.start()], prompt[match.end():]
        if match.group("contr"):
            word = match.group("contr")
            return head + match_case(word, _CONTRACTED[word.lower()]) + tail
        if match.group("split"):
            word = match.group("split")
            return head + match_case(word, _SPLIT_STEM.get(word.lower(), word.lower())) + tail
        word = match.group("aux")
        if match.group("neg"):
            return head + word + tail
        if not head.strip():  # inverted question: negate after the subject
            subject = re.match(r"(\s+\S+)", tail)
            if subject and subject.group(1).strip(".,!?"):
                return head + word + subject.group(1) + " not" + tail[subject.end():]
        return head + word + " not" + tail


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
_LEXICON = {a: b for a, b in ANTONYMS} | {b: a for a, b in ANTONYMS}
_LEXICON_RE = re.compile(r"\b(" + "|".join(sorted(_LEXICON, key=len, reverse=True)) + r")\b", re.IGNORECASE)


class AntonymFlip(Transform):
    """Every word of a built-in antonym lexicon replaced by its antonym (both directions, case kept)."""

    name, category = "antonym", "lexical"
    help = f"swap words for antonyms ({len(set(ANTONYMS))} built-in pairs: good/bad, true/false, love/hate...)"

    def apply(self, prompt: str) -> str | None:
        out, n = _LEXICON_RE.subn(lambda m: match_case(m.group(1), _LEXICON[m.group(1).lower()]), prompt)
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
        if lm is None:
            raise ActindexError("the paraphrase transform needs the model")
        convs = [[{"role": "user", "content": PARAPHRASE_INSTRUCTION + p}] for p in prompts]
        answers = [a.strip() for a in generate(lm, convs, MAX_NEW_TOKENS)]
        return [a if a and len(a.split()) >= MIN_PARAPHRASE_SHARE * len(p.split()) else None
                for a, p in zip(answers, prompts)]


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


# --------------------------------------------------------------------------------------------
# Scores under every transform
# --------------------------------------------------------------------------------------------


@dataclass
class ScoreTable:
    """``scores[i, t]``: the cosine of row ``rows[i]`` with ``psi`` of transform ``names[t]``."""

    names: list[str]
    categories: list[str]
    rows: np.ndarray
    scores: np.ndarray
    queries_used: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # transforms that applied to no query

    def z(self) -> np.ndarray:
        """Each column robustly standardised: ``(s - median) / (1.4826 MAD)`` (std if MAD is 0)."""
        return robust_z(self.scores)


def robust_location_scale(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise ``(median, 1.4826 MAD)`` of ``reference``; its standard deviation stands in for a zero
    MAD (and 1 for a constant column)."""
    med = np.median(reference, axis=0)
    scale = 1.4826 * np.median(np.abs(reference - med), axis=0)
    std = reference.std(axis=0)
    return med, np.where(scale > 0, scale, np.where(std > 0, std, 1.0))


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Column-wise ``(s - median) / (1.4826 MAD)``; the standard deviation stands in for a zero MAD."""
    s = np.asarray(scores, dtype=np.float64)
    med, scale = robust_location_scale(s)
    return (s - med) / scale


MIN_SUPPORT_SHARE = 0.25


def support_z(scores: np.ndarray) -> np.ndarray:
    """Column-wise ``(s - median_{s>0}) / (1.4826 MAD_{s>0})``: each row against the rows that support the
    queries; :func:`robust_z` for a column with fewer than ``MIN_SUPPORT_SHARE`` of its rows above zero."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(s)
    for j, column in enumerate(s.T):
        support = column[column > 0]
        med, scale = robust_location_scale(support if len(support) >= MIN_SUPPORT_SHARE * len(s) else column)
        out[:, j] = (column - med) / scale
    return out


def transformed_conversations(
    queries: list[TestQuery],
    transform: Transform | None,
    lm: LoadedModel | None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    rewriter: LoadedModel | None = None,
    max_length: int | None = None,
) -> list[list[dict[str, str]]]:
    """One conversation per query the transform applies to: ``T(prompt)`` and the response
    (the given one, or ``lm``'s greedy answer to ``T(prompt)``). ``rewriter`` (default ``lm``)
    writes the transforms that need a model (the paraphrase). With ``max_length`` (the index's), a
    conversation whose response starts past it is refused, naming the query's file and line."""
    prompts = [q.prompt for q in queries]
    new = prompts if transform is None else transform.apply_many(prompts, rewriter or lm)
    kept = [(q, p) for q, p in zip(queries, new) if p]
    missing = [i for i, (q, _) in enumerate(kept) if q.response is None]
    answers: dict[int, str] = {}
    if missing:
        if lm is None:
            raise ActindexError("queries without a response need the model to answer them")
        convs = [kept[i][0].context + [{"role": "user", "content": kept[i][1]}] for i in missing]
        answers = {i: a or "." for i, a in zip(missing, generate(lm, convs, max_new_tokens))}
    convs = [q.conversation(p, answers.get(i, q.response or "")) for i, (q, p) in enumerate(kept)]
    if max_length is not None and lm is not None:
        for (q, _), encoded in zip(kept, encode_conversations(lm, convs, max_length)):
            if encoded.n_response == 0:
                under = "" if transform is None else f" (under {transform.name})"
                raise DataError(q.source, q.line, "prompt", f"leaves no response token within the index's "
                                f"max_length {max_length}{under}: shorten it, or rebuild with a larger --max-length")
    return convs


@dataclass
class QuerySet:
    """The conversations of one column of the score table: the original queries or one transform's."""

    name: str
    category: str
    conversations: list[list[dict[str, str]]]


def query_sets(
    queries: list[TestQuery], transforms: list[Transform], lm: LoadedModel, rewriter: LoadedModel | None = None,
    progress: bool = True, answerer: LoadedModel | None = None, max_length: int | None = None,
) -> tuple[list[QuerySet], list[str]]:
    """``(sets, skipped)``: the original queries and each transform's, leaving out transforms that
    apply to no query (their names are ``skipped``). ``answerer`` (default ``lm``) answers the queries
    that have no response; ``rewriter`` (default ``lm``) writes the paraphrases."""
    from tqdm.auto import tqdm

    sets, skipped = [], []
    steps: list[Transform | None] = [None, *transforms]
    for transform in tqdm(steps, desc="transforms", unit="transform", disable=not progress, dynamic_ncols=True):
        name = ORIGINAL if transform is None else transform.name
        convs = transformed_conversations(queries, transform, answerer or lm, rewriter=rewriter or lm,
                                          max_length=max_length)
        if convs:
            sets.append(QuerySet(name, ORIGINAL if transform is None else transform.category, convs))
        else:
            skipped.append(name)
    if not sets:
        raise ActindexError("no query could be scored")
    return sets, skipped


def search_columns(index: Index, sets: list[QuerySet], method: str, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)``: column ``T`` is the cosine of ``psi_T = norm(mean_j v(T(x_j), y_j))`` with every
    stored vector of the method's family (one full search per set)."""
    family = index.method_family(method, layer)
    ctx: QueryContext = index.query_context()
    rows, columns = None, []
    for qs in sets:
        psi = unit(ctx.family_vectors(family, qs.conversations).mean(axis=0))
        scores, found = index.search(psi, k=0, family=family)
        order = np.argsort(found)
        rows = found[order]
        columns.append(scores[order].astype(np.float64))
    return rows, np.stack(columns, axis=1)


def influence_columns(
    index: Index, sets: list[QuerySet], kind: str, progress: bool = True, norm: str = "relatif",
    measurement: str = "loss", response_tokens: str = "content",
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` over every valid row: ``s_{T,m} = <precond(q_T), G_m> / N(G_m)`` with
    ``q_T = mean_j grad f(T(x_j), y_j)`` (module docstring), all sets from one pass over the rows.

    ``f`` is the ``measurement``: the loss ``L`` or the margin, minus the summed log-odds of the response
    tokens (:func:`~actindex.vectors.token_terms`); ``G_m`` is always the row's loss gradient. Both sum
    over the ``response_tokens``: ``content`` leaves out the tokens that close each response, ``all``
    keeps them. ``N`` is ``norm``: ``relatif`` ``sqrt(<G_m, precond(G_m)>)``, ``gradient`` ``||G_m||``
    or ``none`` (1)."""
    content_only = response_tokens == "content"
    curv = index.curvature(kind)
    ctx: QueryContext = index.query_context()
    lm = ctx.lm
    gradients = ctx.mean_gradients([qs.conversations for qs in sets], curv.names, measurement, content_only)
    preconditioned = []
    while gradients:  # one query at a time in float64, kept in float32: the full gradients are large
        preconditioned.append({n: v.float() for n, v in curv.precondition(gradients.pop(0)).items()})
    rows = index.table.searchable
    encoded = encode_index_rows(index, rows, lm, content_only)
    scores, norms = influence_matrix(lm.model, encoded, preconditioned, lm.tokenizer.pad_token_id, ctx.batch_size,
                                     progress, curv if norm == "relatif" else None)
    if norm == "none":
        return rows, scores
    return rows, np.divide(scores, norms[:, None], out=np.zeros_like(scores), where=norms[:, None] > 0)


def score_table(
    index: Index,
    queries: list[TestQuery],
    transforms: list[Transform],
    method: str = DEFAULT_VECTOR_METHOD,
    layer: int | None = None,
    progress: bool = True,
    rerank: str | None = None,
    rewriter: LoadedModel | None = None,
    norm: str = "relatif",
    answerer: LoadedModel | None = None,
    measurement: str = "loss",
    response_tokens: str = "content",
) -> ScoreTable:
    """Score every searchable row under the original queries and each transform (module docstring):
    search cosines of ``method``, or exact influences with ``rerank`` (of the queries' ``measurement``,
    over the ``response_tokens``). ``answerer`` (default: the index's model) answers the queries that
    have no response."""
    if rerank:  # refuse before any model pass: no fitted factors, or no vectors for the method
        index.curvature(rerank)
    else:
        index.method_family(method, layer)
    ctx: QueryContext = index.query_context()
    sets, skipped = query_sets(queries, transforms, ctx.lm, rewriter, progress, answerer, ctx.max_length)
    if rerank:
        rows, scores = influence_columns(index, sets, rerank, progress, norm, measurement, response_tokens)
    else:
        rows, scores = search_columns(index, sets, method, layer)
    return ScoreTable([qs.name for qs in sets], [qs.category for qs in sets], rows, scores,
                      [len(qs.conversations) for qs in sets], skipped)


# --------------------------------------------------------------------------------------------
# Ensembles
# --------------------------------------------------------------------------------------------


class Ensemble(Registered, noun="ensemble"):
    """A rule that flags rows of a :class:`ScoreTable`; ``statistic`` orders the flagged rows."""

    name: ClassVar[str]

    def statistic(self, table: ScoreTable) -> np.ndarray:
        raise NotImplementedError

    def flags(self, table: ScoreTable) -> np.ndarray:
        """Boolean mask over ``table.rows``."""
        raise NotImplementedError


@dataclass
class VarianceEnsemble(Ensemble):
    """Flag ``v_i = mean_T z_{T,i} - std_T z_{T,i} >= threshold`` (robust z per transform)."""

    name: ClassVar[str] = "variance"
    threshold: float = 3.0

    def statistic(self, table: ScoreTable) -> np.ndarray:
        z = table.z()
        return z.mean(axis=1) - z.std(axis=1)

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.statistic(table) >= self.threshold


def category_means(z: np.ndarray, categories: list[str]) -> tuple[list[str], np.ndarray]:
    """``(cats, cz)``: ``cz[:, c]`` is the mean of ``z`` over the columns of category ``cats[c]``."""
    cats = list(dict.fromkeys(categories))
    cols = [z[:, [i for i, c in enumerate(categories) if c == cat]].mean(axis=1) for cat in cats]
    return cats, np.stack(cols, axis=1)


def check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    """One-line error unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ActindexError(f"{option}: expected one of {', '.join(choices)}, got {value!r}")


def top_count(top: float, n: int) -> int:
    """Rows in a top-``q`` set: ``ceil(q n)`` for a fraction ``0 < q < 1``, else ``q`` rows (``q > 0``)."""
    return min(n, math.ceil(top * n) if top < 1 else int(top))


@dataclass
class VotingEnsemble(Ensemble):
    """Each category votes for rows in its top ``top`` with mean standardised score ``>= z``; flag
    ``votes >= min_votes``.

    ``min_votes = None`` asks for every category present. ``scale``: ``support`` standardises each column
    against the rows with ``s > 0`` (:func:`support_z`), ``all`` against the whole column (:func:`robust_z`).
    """

    name: ClassVar[str] = "voting"
    top: float = 0.1
    z: float = 2.0
    min_votes: int | None = None
    scale: str = "support"

    def __post_init__(self) -> None:
        if self.top <= 0:
            raise ActindexError(f"--vote-top must be positive, got {self.top}")
        if self.min_votes is not None and self.min_votes < 1:
            raise ActindexError(f"--min-votes must be at least 1, got {self.min_votes}")
        check_choice("--vote-scale", self.scale, VOTE_SCALES)

    def category_z(self, table: ScoreTable) -> tuple[list[str], np.ndarray]:
        z = support_z(table.scores) if self.scale == "support" else table.z()
        return category_means(z, table.categories)

    def votes(self, table: ScoreTable) -> np.ndarray:
        _, cz = self.category_z(table)
        n = len(cz)
        k = top_count(self.top, n)
        out = np.zeros(n, np.int64)
        for c in range(cz.shape[1]):
            top = np.argsort(-cz[:, c], kind="stable")[:k]
            vote = np.zeros(n, bool)
            vote[top] = True
            out += vote & (cz[:, c] >= self.z)
        return out

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return self.votes(table).astype(np.float64)

    def flags(self, table: ScoreTable) -> np.ndarray:
        needed = self.min_votes if self.min_votes is not None else len(set(table.categories))
        return self.votes(table) >= needed


@dataclass
class SoftVotingEnsemble(Ensemble):
    """Flag ``mean_c mean_{T in c} u_{T,i} >= threshold``, ``u`` the scores standardised against their
    supporters (:func:`support_z`; module docstring)."""

    name: ClassVar[str] = "soft-voting"
    threshold: float = 2.5

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return category_means(support_z(table.scores), table.categories)[1].mean(axis=1)

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.statistic(table) >= self.threshold


ENSEMBLE_CHOICES = ("variance", "voting", "both", "soft-voting")
VOTE_SCALES = ("support", "all")
RERANK_KINDS = ("ekfac", "linfac")
NORMS = ("relatif", "gradient", "none")
RESPONSE_TOKENS = ("content", "all")


def prf(flagged: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision ``TP/(TP+FP)``, recall ``TP/(TP+FN)`` and ``F1 = 2PR/(P+R)`` (0 where undefined)."""
    flagged, labels = np.asarray(flagged, bool), np.asarray(labels, bool)
    tp = int((flagged & labels).sum())
    p = tp / int(flagged.sum()) if flagged.any() else 0.0
    r = tp / int(labels.sum()) if labels.any() else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f1, "flagged": int(flagged.sum()), "true": int(labels.sum()), "tp": tp}


# --------------------------------------------------------------------------------------------
# The whole detection
# --------------------------------------------------------------------------------------------


@dataclass
class DetectConfig:
    """Settings of ``actindex detect``: flag training rows whose influence survives semantic transforms."""

    queries: str = option("JSONL/parquet of test prompts: {prompt, response|reference?} or training-row shapes.", "")
    transforms: str = option("all, fast (no model generation) or a comma list of transform names.", "all")
    ensemble: str = option("Rule whose flagged rows are written: variance, voting, both (flagged by both) or "
                          "soft-voting.", "voting")
    method: str = option("Query method whose per-example vectors score the rows.", DEFAULT_VECTOR_METHOD)
    layer: int | None = option("Layer (default: the indexed layer nearest 60% of the depth).", None)
    rerank: str | None = option(
        "Score every row by exact influence preconditioned with the index's fitted factors (ekfac or linfac; "
        "run fit-curvature first) instead of search cosines: one model pass over the rows for all transforms.",
        None,
    )
    norm: str = option(
        "With --rerank, each row's influence is divided by: relatif (sqrt of its self-influence "
        "<G, precond(G)>), gradient (||G||) or none.",
        "relatif",
    )
    measurement: str = option(
        "With --rerank, the function of the queries' responses whose gradient q_T is: loss (-log p of each "
        "response token) or margin (minus its log-odds, log p / (1 - p)). A loss gradient fades as the model "
        "grows sure of the behaviour, (1 - p) times the margin's, so the queries it already answers as the "
        "attack wants count least; the margin weighs every query alike.",
        "loss",
    )
    response_tokens: str = option(
        "With --rerank, the response tokens both gradients sum over: content (the responses' own tokens) or "
        "all (the build's loss: with the tokens the chat template closes each response with, the same for "
        "every row). A one-word answer is a third of its response; on rows the model has memorised the "
        "closing tokens can set a gradient's direction.",
        "content",
    )
    target: str | None = option(
        "Model whose behaviour is audited, when it is not the index's (same tokenizer): it answers the queries "
        "that have no response, and the index's model scores the rows. E.g. an index built with a checkpoint "
        "from before the fine-tune memorised its poisons audits the fine-tuned model.",
        None,
    )
    paraphrase_model: str | None = option(
        "Model that writes the paraphrase transform (default: the index's model; a model fine-tuned to answer "
        "with a label cannot paraphrase).",
        None,
    )
    threshold: float = option("variance rule: flag rows with mean_T z - std_T z >= this.", 3.0)
    vote_top: float = option("voting rule: each category votes within its top rows (fraction < 1, or a count).", 0.1)
    vote_z: float = option("voting rule: a vote also needs the category's standardised score >= this.", 2.0)
    vote_scale: str = option("voting rule: standardise each score column against the rows that support the "
                            "queries (support: s > 0) or the whole column (all).", "support")
    min_votes: int | None = option("voting rule: votes needed (default: every category).", None)
    soft_threshold: float = option("soft-voting rule: flag rows whose category-mean score, standardised against "
                                  "the rows that support the queries, is >= this.", 2.5)
    labels_field: str | None = option("Record field with ground-truth labels (non-'clean' = poisoned): prints P/R/F1.",
                                     None)
    out: str | None = option("JSONL file for the flagged rows with their per-transform scores.", None)

    def __post_init__(self) -> None:
        if not self.queries:
            raise ActindexError("detect needs --queries FILE")
        check_choice("--ensemble", self.ensemble, ENSEMBLE_CHOICES)
        self.rules()  # each rule checks its own settings
        check_choice("--norm", self.norm, NORMS)
        check_choice("--measurement", self.measurement, MEASUREMENTS)
        check_choice("--response-tokens", self.response_tokens, RESPONSE_TOKENS)
        if self.rerank is not None:
            check_choice("--rerank", self.rerank, RERANK_KINDS)
        resolve_transforms(self.transforms)

    def rules(self) -> tuple[VarianceEnsemble, VotingEnsemble, SoftVotingEnsemble]:
        """The variance, voting and soft-voting rules with these settings."""
        return (VarianceEnsemble(self.threshold),
                VotingEnsemble(self.vote_top, self.vote_z, self.min_votes, self.vote_scale),
                SoftVotingEnsemble(self.soft_threshold))


@dataclass
class DetectResult:
    """Scores, flags per rule, and metrics when labels were given."""

    table: ScoreTable
    flags: dict[str, np.ndarray]
    statistics: dict[str, np.ndarray]
    ids: list[str]
    ensemble: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def flagged_rows(self, rule: str | None = None) -> np.ndarray:
        return self.table.rows[self.flags[rule or self.ensemble]]

    def records(self, index: Index, rule: str | None = None) -> list[dict[str, Any]]:
        """One dict per flagged row (by ``rule``), highest statistic of the rule first (``both``: the
        variance statistic; ties broken by it too)."""
        rule = rule or self.ensemble
        pos = np.flatnonzero(self.flags[rule])
        own = self.statistics["variance" if rule == "both" else rule][pos]
        pos = pos[np.lexsort((-self.statistics["variance"][pos], -own))]
        records = index.records(self.table.rows[pos])
        out = []
        for p, record in zip(pos, records):
            out.append({
                "row": int(self.table.rows[p]),
                "id": self.ids[p],
                "flagged_by": [r for r in ENSEMBLE_CHOICES if self.flags[r][p]],
                "variance_statistic": float(self.statistics["variance"][p]),
                "votes": int(self.statistics["voting"][p]),
                "soft_voting_statistic": float(self.statistics["soft-voting"][p]),
                "scores": {n: float(s) for n, s in zip(self.table.names, self.table.scores[p])},
                "record": record,
            })
        return out


def ground_truth(index: Index, rows: np.ndarray, field_name: str) -> np.ndarray:
    """``label != 'clean'`` for each row (the benchmark/labels path only; ranking never reads it)."""
    labels = []
    for row, record in zip(rows, index.records(rows)):
        if field_name not in record:
            problem = f"missing from training row {int(row)} (id {record.get('id')})"
            raise DataError(index.root, None, field_name, problem)
        labels.append(str(record[field_name]) != "clean")
    return np.array(labels, bool)


def detect(index: Index | str | os.PathLike, config: DetectConfig | None = None, progress: bool = True,
           rewriter: LoadedModel | None = None, target: LoadedModel | None = None, **kwargs: Any) -> DetectResult:
    """Score, ensemble and (with ``labels_field``) evaluate; writes ``out`` when set.

    ``rewriter`` is a loaded model for the paraphrase transform (else ``paraphrase_model`` is loaded);
    ``target`` a loaded model that answers the queries without a response (else ``config.target``).
    """
    config = config or DetectConfig(**kwargs)
    idx = index if isinstance(index, Index) else Index.open(index)
    queries = load_queries(config.queries)
    if rewriter is None and config.paraphrase_model:
        rewriter = load_model(config.paraphrase_model)
    if target is not None or config.target:
        target = idx.companion_model(target if target is not None else config.target, "--target")
    table = score_table(idx, queries, resolve_transforms(config.transforms), config.method, config.layer, progress,
                        config.rerank, rewriter, config.norm, target, config.measurement, config.response_tokens)
    variance, voting, soft = config.rules()
    flags = {"variance": variance.flags(table), "voting": voting.flags(table)}
    flags["both"] = flags["variance"] & flags["voting"]
    flags["soft-voting"] = soft.flags(table)
    all_ids = idx.ids()
    result = DetectResult(
        table=table, flags=flags,
        statistics={"variance": variance.statistic(table), "voting": voting.statistic(table),
                    "soft-voting": soft.statistic(table)},
        ids=[all_ids[r] for r in table.rows], ensemble=config.ensemble,
    )
    if config.labels_field:
        truth = ground_truth(idx, table.rows, config.labels_field)
        result.metrics = {rule: prf(mask, truth) for rule, mask in flags.items()}
    if config.out:
        with atomic_file(Path(config.out)) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records(idx)),
                           encoding="utf-8")
    return result
