"""How ``log r`` averages the response tokens of a ``D+``/``D-`` row (``--token-weights``).

``mean`` (docs/design.md#correction) takes the per-token mean over the response tokens ``R``. ``query`` weights each
token by its share of the row's residual-change score against the behaviour: with ``psi`` the
behaviour's residual-change query vector, the row's score ``<t_l(x), psi>`` is split over its
response tokens (:func:`actindex.core.vectors.residual_change_token_scores`) and
:func:`token_weights` keeps the tokens with the row's sign, so the tokens that carry the behaviour
are the ones pushed (a memorised planted token hardly moves under the mean, see bench/RESULTS.md).
``top`` puts all the weight on the row's highest-share token. ``D0`` always uses the mean.

Each rule is one small registered class (:class:`TokenWeighting`). This module imports no tensor
library at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from actindex.progress import bar
from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.api import Index
    from actindex.core.encode import Encoded
    from actindex.query.behaviors import Behavior

#: per set name ("pos", "neg"), the token weights of each of its rows
Weights = dict[str, list[np.ndarray]]


def token_weights(scores: np.ndarray, predicted: np.ndarray, sign: float, top: bool = False) -> np.ndarray:
    """``w_t = max(sign s_t, 0) / sum_{u in R} max(sign s_u, 0)`` on the predicted positions R (zero
    elsewhere): the tokens whose score has the row's sign (+1 for D+, -1 for D-), in proportion; with
    ``top``, weight 1 on the largest ``sign s_t`` alone (the first on a tie). When no token has that
    sign the per-token mean ``1/|R|`` is returned."""
    predicted = np.asarray(predicted, dtype=bool)
    share = np.where(predicted, np.maximum(sign * np.asarray(scores, dtype=np.float64), 0.0), 0.0)
    if share.sum() <= 0:
        share = predicted.astype(np.float64)
    elif top:
        share = (np.arange(len(share)) == np.argmax(share)).astype(np.float64)
    total = share.sum()
    return share / total if total > 0 else share


def mean_weights(row: Encoded) -> np.ndarray:
    """``1/|R|`` on the predicted positions of a row: the weights of the per-token mean."""
    return token_weights(np.zeros(len(row.input_ids) - 1), np.asarray(row.loss_mask[1:], dtype=bool), 1.0)


def query_token_weights(
    index: Index, behavior: Behavior, layer: int | None, sets: dict[str, list[Encoded]], progress: bool = False,
    top: bool = False,
) -> Weights:
    """Token weights of the D+ and D- rows from their residual-change score against the behaviour.

    ``psi`` is the behaviour's residual-change query vector at ``layer``; each row's score
    ``<t_l(x), psi>`` is split over its response tokens (:func:`vectors.residual_change_token_scores`)
    and :func:`token_weights` keeps the tokens with the row's sign (positive for D+, negative for D-),
    or with ``top`` the one token with the largest share.
    """
    from actindex.core.vectors import residual_change_token_scores

    psi, _, _ = index.query_vector(behavior, method="residual-change", layer=layer)
    reduction = index.reader.reduction
    if reduction is not None:  # a stored-width direction, lifted to the residual stream: <t Q, psi> = <t, Q psi>
        psi = reduction.lift(psi)
    at = index.session.resolve_layer(layer)
    lm = index.model()
    out = {}
    for name, sign in (("pos", 1.0), ("neg", -1.0)):
        rows = bar(sets[name], show=progress, desc=f"token weights ({name})", leave=False)
        out[name] = [token_weights(residual_change_token_scores(lm.model, row, at, psi, lm.tokenizer.pad_token_id),
                                   np.asarray(row.loss_mask[1:], dtype=bool), sign, top) for row in rows]
    return out


def carriers(tokenizer: Any, encoded: Sequence[Encoded], weights: Sequence[np.ndarray], top: int = 3) -> list[list]:
    """For each row, its ``top`` heaviest tokens as ``[text, weight]`` (shown in the report)."""
    out = []
    for row, w in zip(encoded, weights):
        heaviest = np.argsort(-w)[:top]
        out.append([[tokenizer.decode([row.input_ids[p + 1]]), round(float(w[p]), 3)] for p in heaviest if w[p] > 0])
    return out


def carrier_report(tokenizer: Any, sets: dict[str, list[Encoded]], weights: Weights) -> dict[str, list]:
    """The heaviest tokens of the D+ and D- rows for ``correction.json`` (nothing under the per-token mean)."""
    if not weights:
        return {}
    return {"D+ tokens": carriers(tokenizer, sets["pos"], weights["pos"]),
            "D- tokens": carriers(tokenizer, sets["neg"], weights["neg"])}


class TokenWeighting(Registered, noun="token weighting", listed=True):
    """A rule for the token weights of the D+ and D- rows (see the module docstring)."""

    name: ClassVar[str]
    help: ClassVar[str]

    def of_sets(self, index: Index, behavior: Behavior, layer: int | None, sets: dict[str, list[Encoded]],
                progress: bool = False) -> Weights:
        """The weights of the rows of ``pos`` and ``neg``; a set left out uses the per-token mean."""
        raise NotImplementedError


class MeanWeighting(TokenWeighting):
    """Every set uses the per-token mean ``1/|R|``."""

    name = "mean"
    help = "the per-token mean over the response tokens"

    def of_sets(self, index: Index, behavior: Behavior, layer: int | None, sets: dict[str, list[Encoded]],
                progress: bool = False) -> Weights:
        return {}


class QueryWeighting(TokenWeighting):
    """Each token in proportion to its share of the row's residual-change score (:func:`query_token_weights`)."""

    name = "query"
    help = "each token weighted by its share of the row's residual-change score against the behaviour"
    top: ClassVar[bool] = False

    def of_sets(self, index: Index, behavior: Behavior, layer: int | None, sets: dict[str, list[Encoded]],
                progress: bool = False) -> Weights:
        return query_token_weights(index, behavior, layer, sets, progress, self.top)


class TopWeighting(QueryWeighting):
    """All the weight on the row's highest-share token."""

    name = "top"
    help = "all the weight on the row's highest-share token"
    top = True


#: the registry, in the order of ``--token-weights``' choices
TokenWeighting.register(MeanWeighting, QueryWeighting, TopWeighting)


def weighting_names() -> list[str]:
    """Every registered token-weight rule, for ``--token-weights``' choices."""
    return list(TokenWeighting.registry)
