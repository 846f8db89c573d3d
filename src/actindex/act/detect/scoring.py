"""The score table: every searchable row scored under the original queries and under each transform.

Each column is one query set (the original queries, or one transform's rewrites answered as the
module docstring of :mod:`actindex.act.detect` says): the cosines of its query vector ``psi_T`` with
every stored vector of the method's family (:func:`search_columns`), or with ``rerank`` the exact
influences of every row on it, divided by a :mod:`~actindex.act.detect.norms` entry
(:func:`influence_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from actindex.act.detect.norms import Norm
from actindex.act.detect.queries import TestQuery
from actindex.act.detect.statistics import robust_z
from actindex.act.detect.transforms import MAX_NEW_TOKENS, ORIGINAL, Transform
from actindex.core.models import LoadedModel, generate
from actindex.errors import ActindexError, DataError
from actindex.progress import bar
from actindex.query.constructions import unit
from actindex.query.context import QueryContext, encode_conversations
from actindex.query.curvature.influence import influence_matrix
from actindex.query.curvature.store import encode_index_rows
from actindex.query.methods import DEFAULT_VECTOR_METHOD

if TYPE_CHECKING:
    from actindex.api import Index


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
    sets, skipped = [], []
    steps: list[Transform | None] = [None, *transforms]
    for transform in bar(steps, show=progress, desc="transforms", unit="transform"):
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
    family = index.session.method_family(method, layer)
    ctx: QueryContext = index.session.query_context()
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
    tokens (:func:`~actindex.core.vectors.token_terms`); ``G_m`` is always the row's loss gradient. Both sum
    over the ``response_tokens``: ``content`` leaves out the tokens that close each response, ``all``
    keeps them. ``N`` is the :class:`~actindex.act.detect.norms.Norm` named ``norm``: ``relatif``
    ``sqrt(<G_m, precond(G_m)>)``, ``gradient`` ``||G_m||`` or ``none`` (1)."""
    content_only = response_tokens == "content"
    divisor: Norm = Norm.get(norm)
    curv = index.curvature(kind)
    ctx: QueryContext = index.session.query_context()
    lm = ctx.lm
    gradients = ctx.mean_gradients([qs.conversations for qs in sets], curv.names, measurement, content_only)
    preconditioned = []
    while gradients:  # one query at a time in float64, kept in float32: the full gradients are large
        preconditioned.append({n: v.float() for n, v in curv.precondition(gradients.pop(0)).items()})
    rows = index.reader.table.searchable
    encoded = encode_index_rows(index.reader, rows, lm, content_only)
    scores, norms = influence_matrix(lm.model, encoded, preconditioned, lm.tokenizer.pad_token_id, ctx.batch_size,
                                     progress, curv if divisor.curvature else None)
    return rows, divisor.divide(scores, norms)


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
        index.session.method_family(method, layer)
    ctx: QueryContext = index.session.query_context()
    sets, skipped = query_sets(queries, transforms, ctx.lm, rewriter, progress, answerer, ctx.max_length)
    if rerank:
        rows, scores = influence_columns(index, sets, rerank, progress, norm, measurement, response_tokens)
    else:
        rows, scores = search_columns(index, sets, method, layer)
    return ScoreTable([qs.name for qs in sets], [qs.category for qs in sets], rows, scores,
                      [len(qs.conversations) for qs in sets], skipped)
