"""Stage 7b — the query context: query-side vectors computed exactly as the build computed the rows'.

A :class:`QueryContext` holds the model and the index's vector settings (layers, projection, max
length). :meth:`QueryContext.family_vectors` turns chat rows (a behaviour's pairs, test queries) into
vectors of a stored family with the build's own pass (:func:`~actindex.core.vectors.compute_many`), and
:meth:`QueryContext.weighted_gradients` into full per-module gradients for exact influence. Vectors are
kept in ``cache`` keyed by ``(family, conversation)``: one pass reaches every indexed layer, so asking
for the same rows at another layer, or with another method of the same pass, costs no model pass.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.core.families import BLOCK_GRADS, GRADIENT, RESIDUAL_CHANGE, VectorFamily, VectorSpec, family_kind
from actindex.errors import ActindexError

if TYPE_CHECKING:
    import torch

    from actindex.core.encode import Encoded
    from actindex.core.models import LoadedModel
    from actindex.query.behaviors import Behavior, Pair


def chat(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    """One chat row: an optional system turn, the user's ``prompt`` and the assistant's ``response``."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def pair_conversations(pairs: list[Pair]) -> list[list[dict[str, str]]]:
    """The chat rows of a behaviour's pairs: every ``(prompt, treatment)``, then every ``(prompt, control)``."""
    return [p.conversation(p.treatment) for p in pairs] + [p.conversation(p.control) for p in pairs]


def query_rows(behavior: Behavior) -> list[list[dict[str, str]]]:
    """The chat rows a behaviour's query is formed from: its pairs' (:func:`pair_conversations`), or for a query
    by example (:attr:`~actindex.query.behaviors.Behavior.example`) every ``(prompt, treatment)`` alone."""
    if behavior.example:
        return [p.conversation(p.treatment) for p in behavior.pairs]
    return pair_conversations(behavior.pairs)


def per_pair(behavior: Behavior, values: np.ndarray) -> np.ndarray:
    """Each pair's query-side value from the values of its :func:`query_rows` (stacked): treatment minus
    control, ``v(treatment_j) - v(control_j)``, or an example's own ``v(treatment_j)``."""
    n = len(behavior.pairs)
    return values[:n] if behavior.example else values[:n] - values[n:]


def encode_conversations(
    lm: LoadedModel, conversations: list[list[dict[str, str]]], max_length: int | None, content_only: bool = False
) -> list[Encoded]:
    """Tokenise chat rows exactly as the build tokenises training rows (loss on the responses; on their
    content alone with ``content_only``, :func:`~actindex.core.encode.encode_row`)."""
    from actindex.core.encode import encode_row
    from actindex.core.rows import Row

    rows = [Row(id=str(i), index=i, messages=c, text=None, record={}, line=0) for i, c in enumerate(conversations)]
    return [encode_row(lm.tokenizer, row, max_length, content_only) for row in rows]


#: conversation keys already made, by the conversation's items (a query forms each member's vector from the
#: same rows: their keys are made once per process); emptied when full
_KEYS: dict[tuple, str] = {}
_KEYS_MAX = 1 << 16


def conversation_key(conversation: list[dict[str, str]]) -> str:
    """The cache key of a chat row: its canonical JSON."""
    try:
        items = tuple(tuple(message.items()) for message in conversation)
        key = _KEYS.get(items)
    except TypeError:  # a value that is not hashable: no shortcut
        return json.dumps(conversation, sort_keys=True)
    if key is None:
        key = json.dumps(conversation, sort_keys=True)
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[items] = key
    return key


@dataclass
class QueryContext:
    """What a query method needs to form vectors: the model and the index's vector settings.

    ``model()`` returns the index's model, loaded on first use: a query whose vectors are all cached
    never loads it. ``families`` are the families the index holds; ``layers`` its layers; ``reduction`` its
    storage projection (:class:`~actindex.core.reduction.StorageProjection`, ``None``: full width), applied to
    every per-layer vector formed here as the build applied it.
    ``curvature(kind)`` loads the index's fitted factors (for methods that precondition). ``cache`` maps
    ``(family, conversation key)`` to a vector; ``gradients`` keeps the last behaviour gradient (a rerank
    after the search reuses it), ``stored_gradients`` the behaviour cache's (numpy, made tensors when a rerank
    asks: a search answered from the cache never imports torch); ``touched`` the conversation keys asked for
    since :meth:`start`, and ``model_seconds`` the time spent in model passes (both for the behaviour cache
    and the timings; kept per thread). The context does not serialise model passes: whoever shares one
    between threads does.
    """

    model: Callable[[], LoadedModel]
    layers: list[int]
    families: tuple[str, ...]
    grad_modules: list[str]
    grad_k: int
    seed: int
    max_length: int = 512
    batch_size: int = 8
    curvature: Callable[[str], Any] | None = None
    reduction: Any = None
    cache: MutableMapping[tuple[str, str], np.ndarray] = field(default_factory=dict)
    gradients: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stored_gradients: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    progress: bool = False
    _query: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def lm(self) -> LoadedModel:
        """The model (loaded on first use)."""
        return self.model()

    @property
    def touched(self) -> set[str]:
        """The conversation keys asked for since :meth:`start`, in this thread: a server answers several
        queries at once from one context, each in its own thread."""
        if not hasattr(self._query, "touched"):
            self._query.touched = set()
        return self._query.touched

    @property
    def model_seconds(self) -> float:
        """Seconds spent in model passes since :meth:`start`, in this thread."""
        return getattr(self._query, "model_seconds", 0.0)

    @model_seconds.setter
    def model_seconds(self, seconds: float) -> None:
        self._query.model_seconds = seconds

    def start(self) -> None:
        """Forget what this thread's last query touched and how long its model passes took."""
        self.touched.clear()
        self.model_seconds = 0.0

    def family_vectors(self, family: str, conversations: list[list[dict[str, str]]]) -> np.ndarray:
        """Vectors of one stored family (``residual_change/18``, ``gradient``) for chat rows, computed
        exactly as the build does, through the cache."""
        keys = [conversation_key(c) for c in conversations]
        self.touched.update(keys)
        missing = list(dict.fromkeys(k for k in keys if (family, k) not in self.cache))
        if missing:
            out = self._compute([json.loads(k) for k in missing], self.vector_spec(family_kind(family)))
            if not out.valid.all():
                raise ActindexError("a behaviour row produced a non-finite vector or has no response tokens")
            self._remember(missing, out.vectors)
        return np.stack([self.cache[(family, k)] for k in keys])

    def vector_spec(self, kind: str) -> VectorSpec:
        """What a pass for ``kind``'s vectors computes: a per-layer family at every indexed layer, and with
        it every per-layer family of the index the same forward and backward give for free (a residual-change
        pass fills the pooled and mean-activation families too); the gradient family alone."""
        family = VectorFamily.get(kind)
        if not family.per_layer:
            return VectorSpec(layers=[], kinds=[kind], grad_modules=self.grad_modules, grad_k=self.grad_k,
                              seed=self.seed)
        held = {family_kind(name) for name in self.families} | {kind}
        per_layer = [k for k, cls in VectorFamily.registry.items() if cls.per_layer and k in held]
        kinds = [k for k in per_layer if family.backward == BLOCK_GRADS or VectorFamily.get(k).backward != BLOCK_GRADS]
        return VectorSpec(layers=list(self.layers), kinds=kinds, grad_k=self.grad_k, seed=self.seed,
                          reduction=self.reduction)

    def _compute(self, conversations: list[list[dict[str, str]]], spec: VectorSpec, sums: Any = None,
                 measurement: str = "loss", content_only: bool = False) -> Any:
        """One pass of the build's own computation over chat rows, with a progress bar (rows/s, ETA)."""
        import time

        from actindex.core.vectors import RademacherProjector, compute_many
        from actindex.progress import bar

        lm = self.lm
        started = time.perf_counter()
        encoded = encode_conversations(lm, conversations, self.max_length, content_only)
        if sums is not None and any(e.n_response == 0 for e in encoded):
            raise ActindexError("a query row has no response tokens (truncated by max_length?)")
        projector = RademacherProjector(self.seed, self.grad_k)
        rows = bar(total=len(encoded), show=self.progress, unit="row", desc="behaviour", leave=False)
        try:
            return compute_many(lm.model, encoded, spec, lm.tokenizer.pad_token_id, projector, self.batch_size,
                                on_batch=lambda done, _tokens: rows.update(done), sums=sums, measurement=measurement)
        finally:
            rows.close()
            self.model_seconds += time.perf_counter() - started

    def _remember(self, keys: list[str], vectors: dict[str, np.ndarray]) -> None:
        for name, rows in vectors.items():
            for key, vector in zip(keys, rows):
                self.cache[(name, key)] = vector

    def behavior_gradients(
        self, behavior: Behavior, names: list[str], groups: list[list[int]] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Query gradients ``q_c = -grad phi_c = mean_{j in c} (grad L(treatment_j) - grad L(control_j))``
        per module (full, unprojected, float64), one per group ``c`` of pair numbers (default: one
        group of every pair), with ``phi_c = mean_{j in c} [log p(treatment_j) - log p(control_j)]``; for a
        query by example ``q_c = mean_{j in c} grad L(treatment_j)``, the examples' own loss gradient.

        One forward and backward pass over the pair conversations gives every group, and, since it
        reaches the shallowest module, also the pairs' vectors of every family the index holds:
        they go to the cache, so searching the same behaviour costs no further model pass. The
        last result is kept (a rerank after the search that prefetched it reuses it).
        """
        pairs = behavior.pairs
        groups = [list(range(len(pairs)))] if groups is None else [list(g) for g in groups]
        if not pairs or not all(groups):
            raise ActindexError(f"behaviour {behavior.name!r} has no contrastive pairs to form a query gradient from")
        convs = query_rows(behavior)
        self.touched.update(conversation_key(c) for c in convs)
        cache_key = json.dumps([names, groups, [conversation_key(c) for c in convs]])
        if cache_key in self.gradients:
            return self.gradients[cache_key]
        if cache_key in self.stored_gradients:  # the behaviour cache's, made tensors now
            import torch

            sums = [{name: torch.from_numpy(g) for name, g in group.items()}
                    for group in self.stored_gradients[cache_key]]
        else:
            n = len(pairs)
            weights = np.zeros((len(groups), len(convs)))
            for c, members in enumerate(groups):
                weights[c, members] += 1.0 / len(members)
                if not behavior.example:
                    weights[c, [n + j for j in members]] -= 1.0 / len(members)
            sums = self.weighted_gradients(convs, weights, names)
        self.gradients.clear()
        self.gradients[cache_key] = sums
        return sums

    def mean_gradients(
        self, groups: list[list[list[dict[str, str]]]], names: list[str], measurement: str = "loss",
        content_only: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """``q_c = mean_{x in c} grad f(x)`` per module (float64) for each group ``c`` of chat rows, from
        one pass over all of them: the treatment-only query gradient (detection's test queries). ``f`` is
        the ``measurement``: the loss, or minus the summed log-odds of the response tokens (``margin``,
        :func:`~actindex.core.vectors.token_terms`), over the response tokens that close each turn too
        unless ``content_only``."""
        if not all(groups):
            raise ActindexError("a group of query rows is empty")
        convs = [conv for group in groups for conv in group]
        weights = np.zeros((len(groups), len(convs)))
        start = 0
        for c, group in enumerate(groups):
            weights[c, start : start + len(group)] = 1.0 / len(group)
            start += len(group)
        return self.weighted_gradients(convs, weights, names, measurement, content_only)

    def weighted_gradients(
        self, convs: list[list[dict[str, str]]], weights: np.ndarray, names: list[str], measurement: str = "loss",
        content_only: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """``S_c = sum_b weights[c, b] grad f(convs_b)`` per module (full, float64), one pass over ``convs``;
        ``f`` is the loss or another ``measurement`` (:func:`~actindex.core.vectors.sequence_losses`), over
        the responses' content alone with ``content_only`` (:func:`~actindex.core.encode.encode_row`).

        The pass reaches the shallowest module, so it also gives the rows' vectors of every family
        the index holds: when they are the build's (the loss over every response token) they go to the
        cache, so searching the same rows costs no further model pass.
        """
        from actindex.core.vectors import GradientSums

        kinds = {family_kind(family) for family in self.families}
        spec = self.vector_spec(RESIDUAL_CHANGE)  # every per-layer family one forward and backward give
        spec.layers = spec.layers if kinds - {GRADIENT} else []
        spec.kinds = spec.kinds + ([GRADIENT] if GRADIENT in kinds else [])
        spec.grad_modules = self.grad_modules if GRADIENT in kinds else []
        sums = GradientSums(names, weights)
        out = self._compute(convs, spec, sums, measurement, content_only)
        if out.valid.all() and measurement == "loss" and not content_only:
            self._remember([conversation_key(c) for c in convs], out.vectors)
        return sums.sums
