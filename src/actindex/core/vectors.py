"""Stage 4 — vectors: the small per-example vectors cached by a build (docs/design.md#vector-families).

For a batch of tokenised rows, one forward pass and one backward pass (stopping at the
shallowest requested block unless projected gradients are asked for) give, per row:

* ``residual_change/<l>`` (3.1, token-level form):
  ``t_l(x) = - sum_s <zbar_in, z_in,s> g_s``,  ``zbar_in = mean_R(z_in)``,  ``g_s = dL/dz_out,s``;
* ``residual_change_pooled/<l>`` (the paper's single-vector form):
  ``t_l(x) = - <zbar_in, sum_s g_s> zbar_in``;
* ``mean_activation/<l>`` (3.2): ``a_l(x) = mean_R(z_out)``;
* ``gradient`` (3.3): for every tracked linear module the ``k x k`` block
  ``P_out G P_in^T = sum_t (P_out delta_t)(P_in a_t)^T``, blocks concatenated in module order;

plus the loss ``L(x) = -sum_{t in R} log p(x_t | x_<t)`` and token counts.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actindex.core import MEASUREMENTS
from actindex.core.capture import BlockCapture, InputGradLeaf, LinearCapture
from actindex.core.encode import Encoded, response_opening
from actindex.core.families import (
    BLOCK_GRADS,
    LINEAR_GRADS,
    Captured,
    VectorFamily,
    VectorSpec,
    family_name,
)
from actindex.core.families.residual_change import residual_change
from actindex.core.models import decoder_layers, peft_adapter_modules
from actindex.errors import ModelError


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def select_grad_modules(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """Linear modules tracked by the projected gradient.

    Default: the LoRA adapter modules when the model carries PEFT adapters, else every linear
    module inside the decoder blocks (``lm_head`` excluded). ``patterns`` are fnmatch globs on
    module names, e.g. ``*.mlp.*``.
    """
    if not patterns:
        adapters = peft_adapter_modules(model)
        if adapters:
            return adapters
    blocks = decoder_layers(model)
    inside = {id(m) for m in blocks.modules()}
    names = [n for n, m in model.named_modules() if _is_linear(m) and id(m) in inside]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not names:
            raise ModelError(f"no linear module matches --grad-modules {','.join(patterns)}")
    return names


class RademacherProjector:
    """Seeded random sign matrices ``P`` (k x n), entries ``±1/sqrt(k)``, so ``E[P^T P] = I``.

    The matrix for a module depends only on ``(seed, module name, n, k)``: the index and every
    later query regenerate the same one.
    """

    def __init__(self, seed: int, k: int):
        self.seed, self.k = seed, k
        self._cache: dict[tuple[str, int, str], torch.Tensor] = {}

    def matrix(self, name: str, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (name, n, str(device))
        if key not in self._cache:
            salt = hashlib.sha256(f"{self.seed}:{name}:{n}:{self.k}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(salt[:8], "little") & (2**63 - 1))
            signs = torch.randint(0, 2, (self.k, n), generator=gen, dtype=torch.int8)
            self._cache[key] = ((signs.float() * 2 - 1) / self.k**0.5).to(device)
        return self._cache[key].to(dtype)


@dataclass
class Batch:
    """Right-padded tensors for a list of encoded rows."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    @classmethod
    def collate(cls, rows: Sequence[Encoded], pad_id: int, device: torch.device) -> Batch:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            ids[i, :n] = torch.tensor(r.input_ids)
            attn[i, :n] = 1
            mask[i, :n] = torch.tensor(r.loss_mask)
        return cls(ids.to(device), attn.to(device), mask.to(device))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for a float64 model (exact tests), else float32: losses and products of activations run in it."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x))


def token_terms(logits: torch.Tensor, labels: torch.Tensor, measurement: str = "loss") -> torch.Tensor:
    """Per-token terms for ``logits`` (N, V) and ``labels`` (N,), lower where the label is likelier.

    ``loss``: ``-log p_y = -(z_y - log sum_k exp z_k)``. ``margin``: minus the log-odds of the label,
    ``-log(p_y / (1 - p_y)) = -(z_y - log sum_{k != y} exp z_k)`` (TRAK's margin, kronfluence's
    classification measurement). The gradient of the loss is ``(1 - p_y)`` times the margin's, so a
    confident token contributes almost nothing to a loss gradient and fully to a margin gradient.
    """
    if measurement == "loss":
        return F.cross_entropy(logits, labels, reduction="none")
    if measurement != "margin":
        raise ValueError(f"measurement: expected one of {', '.join(MEASUREMENTS)}, got {measurement!r}")
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return torch.logsumexp(others, dim=1) - label_logit


def sequence_losses(
    model: nn.Module, batch: Batch, sample: torch.Generator | None = None, weights: torch.Tensor | None = None,
    measurement: str = "loss", terms_into: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L(x) = -sum_{t in R} log p(x_t | x_<t)`` for every row, shape (B,): float32, or float64 for a
    float64 model (exact tests).

    With a ``sample`` generator the target at each predicted position is drawn from the model's own
    (detached) predictive distribution instead, ``y_t ~ p(. | x_<t)``: gradients of that loss are the
    per-sequence gradients of the true Fisher (docs/design.md#ek-fac); the data labels give the empirical Fisher.
    With ``weights`` (B, T-1), the term predicting token ``t+1`` is weighted by ``weights[:, t]``:
    ``-sum_{t in R} w_t log p(x_t | x_<t)``. ``measurement="margin"`` sums minus the log-odds of each
    token instead (:func:`token_terms`): a query's measurement, where the loss is the training objective.
    With ``terms_into`` (B, T, zeros), each response token's own (unweighted, detached) term is also written
    there at the token's position: ``terms_into[b, t] = -log p(x_t | x_<t)`` for ``t in R``.

    The output head is applied only at the positions that predict response tokens: on chat
    data the prompt is often half the tokens, and the head is a large share of a small model's
    cost in the forward and the backward pass. Models whose head does more than a linear map
    (logit soft-capping or scaling) go through the full forward pass instead.
    """
    targets = batch.input_ids[:, 1:]
    predict = batch.loss_mask[:, 1:]
    head = model.get_output_embeddings()
    config = model.config
    plain_head = isinstance(head, nn.Linear) and not any(
        getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")
    )
    if not plain_head:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits = _at_least_float32(logits[:, :-1]).flatten(0, 1)
        if sample is not None:
            targets = _sampled_targets(logits, sample).view_as(targets)
        terms = token_terms(logits, targets.flatten(), measurement).view_as(targets)
        if terms_into is not None:
            terms_into[:, 1:] = (terms * predict).detach().to(terms_into)
        return (terms * (predict if weights is None else predict * weights)).sum(dim=1)
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]
    rows, cols = predict.nonzero(as_tuple=True)
    vocab = int(head.weight.shape[0])
    if sample is None and len(rows) * vocab > LOGIT_CHUNK:
        terms = head_terms_chunked(head, hidden[rows, cols], targets[rows, cols], measurement)
    else:
        logits = _at_least_float32(head(hidden[rows, cols]))
        labels = targets[rows, cols] if sample is None else _sampled_targets(logits, sample)
        terms = token_terms(logits, labels, measurement)
    if terms_into is not None:
        terms_into[rows, cols + 1] = terms.detach().to(terms_into)
    if weights is not None:
        terms = terms * weights[rows, cols].to(terms)
    return torch.zeros(len(targets), dtype=terms.dtype, device=terms.device).index_add(0, rows, terms)


#: logits (response tokens x vocabulary) computed at once; a batch with more is run in chunks whose logits are
#: recomputed in the backward pass instead of kept (8 rows of 512 response tokens with SmolLM2's 49,152-token
#: vocabulary hold 0.8 GB of float32 logits, and as much again for their gradient)
LOGIT_CHUNK = 1 << 25


def head_terms_chunked(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, measurement: str) -> torch.Tensor:
    """:func:`token_terms` of ``head(hidden)`` for (N, d) hidden states, :data:`LOGIT_CHUNK` logits at a time, each
    chunk checkpointed (its logits are recomputed by the backward pass, never kept): the same terms, with the
    memory of one chunk."""
    from torch.utils.checkpoint import checkpoint

    def terms(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return token_terms(_at_least_float32(head(h)), y, measurement)

    step = max(1, LOGIT_CHUNK // int(head.weight.shape[0]))
    return torch.cat([checkpoint(terms, hidden[a : a + step], labels[a : a + step], use_reentrant=False)
                      for a in range(0, len(labels), step)])


def _sampled_targets(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per row of ``logits`` (N, V), drawn from ``softmax(logits)`` (no gradient flows)."""
    probs = torch.softmax(logits.detach().double(), dim=-1)
    return torch.multinomial(probs.to(generator.device), 1, generator=generator).view(-1).to(logits.device)


def residual_change_token_scores(
    model: nn.Module, row: Encoded, layer: int, psi: np.ndarray, pad_id: int, chunk: int = 32
) -> np.ndarray:
    """Per-token terms of ``<t_l(x), psi>``: which response tokens carry a row's residual-change score.

    The loss is a sum over response tokens, ``L = sum_{t in R} l_t``, so ``g_s = sum_t dl_t/dz_out,s``
    and ``t_l(x) = sum_t t_l^(t)(x)`` with ``t_l^(t) = - sum_s <zbar_in, z_in,s> dl_t/dz_out,s``.
    Returns ``<t_l^(t)(x), psi>`` at every predicted position (length ``len(input_ids) - 1``; position
    ``p`` predicts token ``p + 1``; zero outside R): the terms sum to ``<t_l(x), psi>``. Computed exactly,
    as batches of copies of the row, copy ``i`` keeping only the loss of response token ``i``.
    """
    device = next(model.parameters()).device
    predicted = np.flatnonzero(np.asarray(row.loss_mask[1:], dtype=bool))
    scores = np.zeros(len(row.input_ids) - 1)
    direction = torch.as_tensor(np.asarray(psi), device=device)
    for start in range(0, len(predicted), chunk):
        positions = torch.as_tensor(predicted[start : start + chunk], device=device)
        batch = Batch.collate([row] * len(positions), pad_id, device)
        only = torch.zeros(len(positions), batch.input_ids.shape[1] - 1, device=device)
        only[torch.arange(len(positions)), positions] = 1.0
        with torch.enable_grad():
            with BlockCapture(model, [layer]) as blocks:
                losses = sequence_losses(model, batch, weights=only)
            (g,) = torch.autograd.grad(losses.sum(), [blocks.z_out(layer)])
        with torch.no_grad():
            g = _at_least_float32(g)
            t = residual_change(blocks.z_in(layer).to(g), g, batch.loss_mask, batch.attention_mask.to(g))
            scores[predicted[start : start + chunk]] = (t @ direction.to(t)).double().cpu().numpy()
    return scores


class GradientSums:
    """Weighted sums of per-row weight gradients, accumulated batch by batch without forming any row's:

        S_c = sum_b w_{c,b} G_b = sum_b w_{c,b} sum_t delta_{b,t} a_{b,t}^T      (per module, O x I)

    for each weight set ``c`` (rows of ``weights``, shape (C, N) over the N rows of the pass). A
    behaviour's query gradient is one: ``+1/n`` on its treatments, ``-1/n`` on its controls. Each
    batch's term is one ``(O x BT) @ (BT x I)`` product in the model's precision (float32, or float64
    for a float64 model); the running sums are float64.
    """

    def __init__(self, names: Sequence[str], weights: np.ndarray):
        self.names = list(names)
        self.weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        self.sums: list[dict[str, torch.Tensor]] = [{} for _ in range(len(self.weights))]

    def add(self, rows: Sequence[int], name: str, a: torch.Tensor, delta: torch.Tensor) -> None:
        """Add the batch holding rows ``rows`` of the pass: ``a`` (B, T, I) and ``delta`` (B, T, O), zero at padding."""
        dtype = compute_dtype(a)
        a2, d2 = a.to(dtype).flatten(0, 1), delta.to(dtype)
        batch_weights = self.weights[:, list(rows)]
        w = torch.as_tensor(batch_weights, dtype=dtype, device=a.device)
        for c, total in enumerate(self.sums):
            if not batch_weights[c].any() and name in total:  # no row of this set in the batch
                continue
            g = ((d2 * w[c][:, None, None]).flatten(0, 1).T @ a2).double()
            total[name] = total[name] + g if name in total else g


@dataclass
class BatchVectors:
    """Per-row outputs of :func:`compute_vectors` as float32 numpy arrays."""

    vectors: dict[str, np.ndarray]
    loss: np.ndarray
    n_tokens: np.ndarray
    n_response: np.ndarray
    valid: np.ndarray


def compute_vectors(
    model: nn.Module,
    encoded: Sequence[Encoded],
    spec: VectorSpec,
    pad_id: int,
    projector: RademacherProjector | None = None,
    sums: GradientSums | None = None,
    rows: Sequence[int] = (),
    measurement: str = "loss",
) -> BatchVectors:
    """Run one forward and one backward pass over a batch and return every requested vector.

    With ``sums``, the same backward also adds the batch (rows ``rows`` of the pass) to those
    weighted gradient sums. Rows whose loss or any vector is not finite come back with
    ``valid = False`` and zero vectors. Everything differentiates ``measurement``
    (:func:`sequence_losses`; the returned ``loss`` is its value).
    """
    device = next(model.parameters()).device
    batch = Batch.collate(encoded, pad_id, device)
    attn = batch.attention_mask.float()
    r_mask = batch.loss_mask
    block_grads = spec.needs(BLOCK_GRADS)
    linear_names = list(dict.fromkeys([*(spec.grad_modules if spec.needs(LINEAR_GRADS) else []),
                                       *(sums.names if sums is not None else [])]))
    want_grad = bool(linear_names)
    blocks = BlockCapture(model, spec.layers, cut_graph=not want_grad)
    linears = LinearCapture(model, linear_names) if want_grad else None
    with torch.enable_grad():
        with ExitStack() as hooks:
            if want_grad:
                hooks.enter_context(InputGradLeaf(model))
                hooks.enter_context(linears)
            hooks.enter_context(blocks)
            token_loss = (torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=device)
                          if any(VectorFamily.get(kind).token_loss for kind in spec.kinds) else None)
            losses = sequence_losses(model, batch, measurement=measurement, terms_into=token_loss)
        targets: list[torch.Tensor] = []
        if block_grads:
            targets += [blocks.z_out(layer) for layer in spec.layers]
        if linears is not None:
            targets += [linears.saved[f"s.{name}"] for name in linear_names]
        grads = torch.autograd.grad(losses.sum(), targets, allow_unused=True) if targets else []
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
    offset = len(spec.layers) if block_grads else 0
    deltas = dict(zip(linear_names, grads[offset:]))

    captured = Captured(
        z_in={layer: blocks.z_in(layer) for layer in spec.layers},
        z_out={layer: blocks.z_out(layer) for layer in spec.layers},
        g=dict(zip(spec.layers, grads[: len(spec.layers)])) if block_grads else {},
        a={name: linears.saved[f"a.{name}"] * attn[..., None].to(linears.saved[f"a.{name}"]) for name in linear_names}
        if linears is not None else {},
        delta=deltas, r_mask=r_mask, attn=attn, spec=spec, projector=projector, token_loss=token_loss,
    )
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for kind in spec.kinds:
            family = VectorFamily.get(kind)
            for layer in spec.layers if family.per_layer else [None]:
                if family.backward == LINEAR_GRADS and not spec.grad_modules:
                    continue
                if family.backward == LINEAR_GRADS:
                    assert projector is not None, "projected gradients need a projector"
                vectors = family.compute(captured, layer)
                if family.per_layer and spec.reduction is not None:  # stored at the index's width
                    vectors = spec.reduction.apply(vectors)
                out[family_name(kind, layer)] = vectors
        if sums is not None:
            for name in sums.names:
                a = linears.saved[f"a.{name}"]
                sums.add(rows, name, a * batch.attention_mask[..., None].to(a), deltas[name])

    vectors = {name: t.detach().cpu().numpy().astype(np.float32) for name, t in out.items()}
    loss = losses.detach().cpu().numpy().astype(np.float32)
    valid = np.isfinite(loss)
    for arr in vectors.values():
        valid &= np.isfinite(arr).all(axis=1)
    for arr in vectors.values():
        arr[~valid] = 0.0
    return BatchVectors(
        vectors=vectors,
        loss=np.where(valid, loss, np.nan).astype(np.float32),
        n_tokens=batch.attention_mask.sum(1).cpu().numpy().astype(np.int32),
        n_response=batch.loss_mask.sum(1).cpu().numpy().astype(np.int32),
        valid=valid,
    )


def compute_many(
    model: nn.Module,
    encoded: Sequence[Encoded],
    spec: VectorSpec,
    pad_id: int,
    projector: RademacherProjector | None = None,
    batch_size: int = 8,
    include: Sequence[bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    sums: GradientSums | None = None,
    measurement: str = "loss",
) -> BatchVectors:
    """:func:`compute_vectors` over any number of rows, batched by length, returned in input order.

    Rows with no response token, or with ``include[i] = False``, are not run (``valid = False``).
    ``on_batch(rows, tokens)`` is called after each batch (progress bars); ``sums`` (weights over
    the rows of ``encoded``) are accumulated by the same passes.

    Families over the response's opening (:attr:`~actindex.core.families.VectorFamily.window`) come from a
    second pass over the rows whose response is longer than the window, cut after it
    (:func:`~actindex.core.encode.response_opening`); a shorter row's opening is the row itself, so its
    vectors are those of the whole-response family when the pass computed it (else it joins that pass).
    """
    n = len(encoded)
    hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    families = spec.families(hidden)
    result = BatchVectors(
        vectors={fam: np.zeros((n, dim), np.float32) for fam, dim in families.items()},
        loss=np.full(n, np.nan, np.float32),
        n_tokens=np.array([len(e.input_ids) for e in encoded], np.int32),
        n_response=np.array([e.n_response for e in encoded], np.int32),
        valid=np.zeros(n, np.bool_),
    )
    order = [i for i, e in enumerate(encoded) if e.n_response > 0 and (include is None or include[i])]
    windows: dict[int, list[str]] = {}
    for kind in spec.kinds:
        window = VectorFamily.get(kind).window
        if window is not None:
            windows.setdefault(window, []).append(kind)
    whole = replace(spec, kinds=[k for k in spec.kinds if VectorFamily.get(k).window is None])
    # the whole rows' pass (a forward alone when every family is an opening: the loss and validity)
    _run_batches(model, encoded, order, whole, pad_id, projector, batch_size, result, on_batch, sums, measurement)
    for window, kinds in windows.items():
        bases = {kind: str(VectorFamily.get(kind).whole) for kind in kinds}
        shared = all(base in whole.kinds for base in bases.values())
        run = [i for i in order if encoded[i].n_response > window or not shared]
        if shared:  # a short row's opening is the whole row: its vectors are the whole-response family's
            short = [i for i in order if encoded[i].n_response <= window]
            for kind, base in bases.items():
                for layer in spec.layers if VectorFamily.get(kind).per_layer else [None]:
                    result.vectors[family_name(kind, layer)][short] = result.vectors[family_name(base, layer)][short]
        cut = [response_opening(e, window) for e in encoded]
        opening = replace(spec, kinds=kinds, grad_modules=[])
        part = BatchVectors(vectors={f: result.vectors[f] for f in opening.families(hidden)}, loss=result.loss.copy(),
                            n_tokens=result.n_tokens, n_response=result.n_response, valid=np.ones(n, np.bool_))
        _run_batches(model, cut, run, opening, pad_id, projector, batch_size, part,
                     None if on_batch is None else lambda _rows, tokens: on_batch(0, tokens), None, measurement)
        result.valid[run] &= part.valid[run]
    for arr in result.vectors.values():
        arr[~result.valid] = 0.0
    return result


def _run_batches(
    model: nn.Module, encoded: Sequence[Encoded], order: list[int], spec: VectorSpec, pad_id: int,
    projector: RademacherProjector | None, batch_size: int, result: BatchVectors,
    on_batch: Callable[[int, int], None] | None, sums: GradientSums | None, measurement: str,
) -> None:
    """Run ``order``'s rows in batches of similar length, longest first, filling ``result`` in place."""
    order = sorted(order, key=lambda i: -len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out = compute_vectors(model, [encoded[i] for i in idx], spec, pad_id, projector, sums, idx, measurement)
        result.loss[idx] = out.loss
        result.valid[idx] = out.valid
        for fam, arr in out.vectors.items():
            result.vectors[fam][idx] = arr
        if on_batch is not None:
            on_batch(len(idx), int(sum(len(encoded[i].input_ids) for i in idx)))
