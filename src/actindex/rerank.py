"""Stage 8b — rerank: exact, curvature-aware influence on the retrieved candidates (DESIGN section 5).

The search returns the top-K and bottom-K rows of any query method (plus, optionally, the top-K
of a lexical TF-IDF recall). Each candidate ``m`` is then re-scored with the exact (unprojected)
influence of :mod:`actindex.curvature`,

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .curvature import (
    Curvature,
    Influence,
    encode_index_rows,
    influence_scores,
)
from .errors import ActindexError
from .queries import Behavior, complete_behavior, encode_conversations, load_behavior, pair_conversations
from .vectors import RademacherProjector, VectorSpec, compute_many

if TYPE_CHECKING:
    from .index import Index

RECALLS = ("tfidf",)
CLUSTER_K = 8  # projection size per side used only to cluster pairs


@dataclass
class RowInfluence:
    """Influence of given rows, with the names needed to read the per-module and per-token arrays."""

    rows: np.ndarray
    influence: Influence
    tokens: list[list[str]] | None = None
    cluster: np.ndarray | None = None  # the cluster each row's merged score comes from
    cluster_sizes: list[int] | None = None


def cluster_pairs(index: Index, behavior: Behavior, names: list[str], k: int, seed: int = 0) -> np.ndarray:
    """k-means labels of the behaviour's pairs on their projected query gradients
    ``P_out (G(treatment_j) - G(control_j)) P_in^T`` (unit-normalised), for the curvature's modules."""
    from sklearn.cluster import KMeans

    lm = index.model()
    pairs = behavior.pairs
    k = min(k, len(pairs))
    if k <= 1:
        return np.zeros(len(pairs), np.int64)
    encoded = encode_conversations(lm, pair_conversations(pairs), index.manifest["build"].get("max_length", 512))
    spec = VectorSpec(layers=[], residual_change=False, mean_activation=False, grad_modules=names, grad_k=CLUSTER_K,
                      seed=seed)
    out = compute_many(lm.model, encoded, spec, lm.tokenizer.pad_token_id, RademacherProjector(seed, CLUSTER_K))
    vectors = out.vectors["gradient"]
    diffs = vectors[: len(pairs)] - vectors[len(pairs) :]
    diffs /= np.maximum(np.linalg.norm(diffs, axis=1, keepdims=True), 1e-30)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(diffs)


def row_influence(
    index: Index,
    behavior: str | Behavior,
    kind: str = "ekfac",
    rows: list[int] | np.ndarray | None = None,
    per_token: bool = False,
    clusters: int = 0,
    progress: bool = False,
) -> RowInfluence:
    """Exact influence of ``rows`` (default: every valid row) on a behaviour, preconditioned with the
    index's fitted ``kind`` factors. Benchmarks use it on all rows; reranking on the candidates."""
    lm = index.model()
    curv: Curvature = index.curvature(kind)
    behavior = load_behavior(behavior) if isinstance(behavior, str) else behavior
    behavior = complete_behavior(behavior, lm)
    if not behavior.pairs:
        raise ActindexError(f"behaviour {behavior.name!r} has no contrastive pairs to form a query gradient from")
    if rows is None:
        rows = np.flatnonzero(index._meta["valid"])
    rows = np.asarray(rows, dtype=np.int64)
    build = index.manifest["build"]
    batch_size = build.get("batch_size", 8)
    encoded = encode_index_rows(index, rows, lm)
    labels = (
        cluster_pairs(index, behavior, curv.names, clusters) if clusters > 1 else np.zeros(len(behavior.pairs), int)
    )
    groups = [[int(j) for j in np.flatnonzero(labels == c)] for c in range(int(labels.max()) + 1)]
    gradients = index.query_context().behavior_gradients(behavior, curv.names, groups)
    results = [
        influence_scores(lm.model, encoded, curv.precondition(q), lm.tokenizer.pad_token_id, batch_size, per_token,
                         progress)
        for q in gradients
    ]
    merged, chosen = merge_clusters(results)
    tokens = None
    if per_token and merged.token_ids is not None:
        tokens = [lm.tokenizer.convert_ids_to_tokens(ids) for ids in merged.token_ids]
    sizes = [int((labels == c).sum()) for c in range(len(results))]
    return RowInfluence(rows, merged, tokens, chosen if len(results) > 1 else None, sizes)


def merge_clusters(results: list[Influence]) -> tuple[Influence, np.ndarray]:
    """Per row, the cluster whose total influence has the largest magnitude, keeping its sign and its
    per-module and per-token terms (so they still sum to the merged total)."""
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


def tfidf_recall(index: Index, behavior: Behavior, k: int) -> np.ndarray:
    """Lexical recall: the ``k`` valid rows whose text is most TF-IDF-similar to the treatment texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    valid = np.flatnonzero(index._meta["valid"])
    texts = [_record_text(r) for r in index.records(valid)]
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


def _record_text(record: dict[str, Any]) -> str:
    from pathlib import Path

    from .data import normalise_record

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
        text = token.replace("Ġ", " ").replace("▁", " ").strip() or token
        if peak > 0 and abs(score) >= share * peak:
            text = f"[[{'+' if score >= 0 else '-'}{text}]]"
        out.append(text)
    return " ".join(out)
