"""Stage 8b — rerank: exact, curvature-aware influence on the retrieved candidates (docs/design.md#influence).

The search returns the top-K and bottom-K rows of any query method (plus, optionally, the top-K
of a lexical TF-IDF recall). Each candidate ``m`` is then re-scored with the exact (unprojected)
influence of :mod:`actindex.query.curvature`,

    I(m) = sum_modules <precond(q), G_m> = sum_t sum_modules delta_{m,t}^T precond(q) a_{m,t},
    q = -grad phi = mean_j (grad L(treatment_j) - grad L(control_j)),

with EK-FAC (per linear module) or LinFAC (per sublayer) preconditioning; positive = training on
``m`` promotes the behaviour. Ranking is by influence; the search score is kept beside it. The
per-module terms sum to ``I(m)``, and so do the per-token terms ``sum_modules delta_t^T P a_t``
(which tokens of the row carry its influence).

Clusters (``clusters = k``): the behaviour's pairs are grouped by k-means on their per-pair
projected query gradients; each cluster gets its own batch query (its members' gradients averaged
before preconditioning) and a row's merged influence is its score under the cluster where that
score has the largest magnitude (signed): a row counts as much as the sub-behaviour it drives most.

The components are injected (the index reader, the query context, the fitted curvature), so this
stage knows nothing of the pipeline above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.errors import ActindexError

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader
    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext
    from actindex.query.curvature.influence import Influence
    from actindex.query.curvature.kron import Curvature

#: extra candidate sources a rerank can add to the search's (``--recall``)
RECALLS = ("tfidf",)
CLUSTER_K = 8  # projection size per side used only to cluster pairs


@dataclass
class RowInfluence:
    """Influence of given rows, with the names needed to read the per-module and per-token arrays."""

    rows: np.ndarray
    influence: Influence
    tokens: list[list[str]] | None = None  # each token decoded to its text
    response: list[list[bool]] | None = None  # per token: it is a response token (in the loss)
    cluster: np.ndarray | None = None  # the cluster each row's merged score comes from
    cluster_sizes: list[int] | None = None


def cluster_pairs(ctx: QueryContext, behavior: Behavior, names: list[str], k: int, seed: int = 0) -> np.ndarray:
    """k-means labels of the behaviour's pairs on their projected query gradients
    ``P_out (G(treatment_j) - G(control_j)) P_in^T`` (unit-normalised), for the curvature's modules."""
    from sklearn.cluster import KMeans

    from actindex.core.families import GRADIENT, VectorSpec
    from actindex.core.vectors import RademacherProjector, compute_many
    from actindex.query.context import encode_conversations, per_pair, query_rows

    lm = ctx.lm
    pairs = behavior.pairs
    k = min(k, len(pairs))
    if k <= 1:
        return np.zeros(len(pairs), np.int64)
    encoded = encode_conversations(lm, query_rows(behavior), ctx.max_length)
    spec = VectorSpec(layers=[], kinds=[GRADIENT], grad_modules=names, grad_k=CLUSTER_K, seed=seed)
    out = compute_many(lm.model, encoded, spec, lm.tokenizer.pad_token_id, RademacherProjector(seed, CLUSTER_K))
    diffs = per_pair(behavior, out.vectors[GRADIENT])
    diffs = diffs / np.maximum(np.linalg.norm(diffs, axis=1, keepdims=True), 1e-30)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(diffs)


def row_influence(
    reader: IndexReader,
    ctx: QueryContext,
    curvature: Curvature,
    behavior: Behavior,
    rows: np.ndarray | None = None,
    per_token: bool = False,
    clusters: int = 0,
    progress: bool = False,
) -> RowInfluence:
    """Exact influence of ``rows`` (default: every valid row) on a completed behaviour, preconditioned with
    ``curvature``. Benchmarks use it on all rows; reranking on the candidates."""
    from actindex.query.curvature.influence import influence_scores
    from actindex.query.curvature.store import encode_index_rows

    if not behavior.pairs:
        raise ActindexError(f"behaviour {behavior.name!r} has no contrastive pairs to form a query gradient from")
    lm = ctx.lm
    rows = reader.table.searchable if rows is None else np.asarray(rows, dtype=np.int64)
    encoded = encode_index_rows(reader, rows, lm)
    names = curvature.names
    labels = cluster_pairs(ctx, behavior, names, clusters) if clusters > 1 else np.zeros(len(behavior.pairs), int)
    groups = [[int(j) for j in np.flatnonzero(labels == c)] for c in range(int(labels.max()) + 1)]
    gradients = ctx.behavior_gradients(behavior, names, groups)
    results = [
        influence_scores(lm.model, encoded, curvature.precondition(q), lm.tokenizer.pad_token_id, ctx.batch_size,
                         per_token, progress)
        for q in gradients
    ]
    merged, chosen = merge_clusters(results)
    tokens = response = None
    if per_token and merged.token_ids is not None:
        tokens = [[lm.tokenizer.decode([t]) for t in ids] for ids in merged.token_ids]
        response = [list(map(bool, e.loss_mask)) for e in encoded]
    sizes = [int((labels == c).sum()) for c in range(len(results))]
    return RowInfluence(rows, merged, tokens, response, chosen if len(results) > 1 else None, sizes)


def merge_clusters(results: list[Influence]) -> tuple[Influence, np.ndarray]:
    """Per row, the cluster whose total influence has the largest magnitude, keeping its sign and its
    per-module and per-token terms (so they still sum to the merged total)."""
    from actindex.query.curvature.influence import Influence

    totals = np.stack([r.total for r in results])  # (C, N)
    chosen = np.abs(totals).argmax(0)
    n = totals.shape[1]
    per_module = np.stack([results[c].per_module[i] for i, c in enumerate(chosen)]) if n else results[0].per_module
    per_token = None
    if results[0].per_token is not None:
        per_token = [results[c].per_token[i] for i, c in enumerate(chosen)]  # type: ignore[index]
    merged = Influence(
        total=totals[chosen, np.arange(n)],
        per_module=per_module,
        modules=results[0].modules,
        token_ids=results[0].token_ids,
        per_token=per_token,
    )
    return merged, chosen


def tfidf_recall(reader: IndexReader, behavior: Behavior, k: int) -> np.ndarray:
    """Lexical recall: the ``k`` valid rows whose text is most TF-IDF-similar to the treatment texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    valid = reader.table.searchable
    texts = [record_text(r) for r in reader.records(valid)]
    query = " ".join(p.treatment for p in behavior.pairs)
    if not texts or not query.strip():
        return np.zeros(0, np.int64)
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError:  # empty vocabulary
        return np.zeros(0, np.int64)
    scores = (matrix @ vectorizer.transform([query]).T).toarray()[:, 0]
    order = np.argsort(-scores, kind="stable")[:k]
    return valid[order[scores[order] > 0]]


def record_text(record: dict[str, Any]) -> str:
    """The training text of a stored record (its messages' contents, or its text)."""
    from actindex.core.rows import normalise_record

    try:
        row = normalise_record(Path("<index>"), 0, 0, record)
    except ActindexError:
        return ""
    return row.text if row.messages is None else " ".join(m["content"] for m in row.messages)


def highlight(tokens: list[str], scores: np.ndarray, share: float = 0.5) -> str:
    """Tokens joined, those with ``|score| >= share * max |score|`` marked ``[[token]]`` (``+``/``-`` sign)."""
    peak = float(np.abs(scores).max()) if len(scores) else 0.0
    out = []
    for token, score in zip(tokens, scores):
        text = token.strip() or token
        if peak > 0 and abs(score) >= share * peak:
            text = f"[[{'+' if score >= 0 else '-'}{text}]]"
        out.append(text)
    return " ".join(out)
