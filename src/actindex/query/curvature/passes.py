"""The model passes behind the factors and the influence: per module ``(a, delta)`` of every batch.

``a`` is a tracked module's input and ``delta = dL/ds`` the gradient of the loss with respect to its
output ``s``; a row's weight gradient is ``G = sum_t delta_t a_t^T`` (never formed here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from actindex.core.capture import InputGradLeaf, LinearCapture
from actindex.core.encode import Encoded
from actindex.core.vectors import Batch, sequence_losses
from actindex.progress import bar
from actindex.query.curvature.kinds import CurvatureKind
from actindex.query.curvature.kron import Curvature, KronEigen


def batches(
    encoded: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device
) -> Iterator[tuple[list[int], Batch]]:
    """``(positions, Batch)`` over ``encoded``, longest rows first (least padding)."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, Batch.collate([encoded[i] for i in idx], pad_id, device)


def capture(
    model: nn.Module,
    batch: Batch,
    names: Sequence[str],
    sample: torch.Generator | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One forward and one backward pass: per module ``(a, delta)``, each (B, T, dim), zero at padding.

    ``a`` is the module's input and ``delta = dL/ds`` the gradient of ``L = sum_b L(x_b)`` with
    respect to its output ``s``. Rows do not interact, so row ``b``'s ``delta`` is ``dL(x_b)/ds``
    and ``sum_t delta_t a_t^T`` is its weight gradient.
    ``sample`` draws the labels from the model (true Fisher), see :func:`~actindex.core.vectors.sequence_losses`.
    """
    linears = LinearCapture(model, names)
    with torch.enable_grad():
        with InputGradLeaf(model), linears:
            losses = sequence_losses(model, batch, sample)
        outs = [linears.saved[f"s.{name}"] for name in names]
        grads = torch.autograd.grad(losses.sum(), outs, allow_unused=True)
    out = {}
    for name, s, g in zip(names, outs, grads):
        mask = batch.attention_mask[..., None].to(s.dtype)
        a = linears.saved[f"a.{name}"].detach() * mask
        delta = torch.zeros_like(s) if g is None else g.detach() * mask
        out[name] = (a, delta)
    return out


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    """A row-counting progress bar (hidden unless ``progress``)."""
    return bar(total=total, show=progress, unit="row", desc=desc)


Captured = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: ``run(pass_number, names)`` yields, batch by batch, ``(captured, attention_mask)``: per module in
#: ``names`` ``(a, delta)`` (B, T, dim), zero at padding, and the (B, T) mask of real tokens. Each call
#: may draw fresh labels.
CapturePass = Callable[[int, Sequence[str]], Iterable[tuple[Captured, torch.Tensor]]]


def model_passes(
    model: nn.Module,
    encoded: Sequence[Encoded],
    pad_id: int,
    names: Sequence[str],
    empirical_fisher: bool = False,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> CapturePass:
    """Passes over ``encoded`` rows through the model; labels sampled from the model (fresh per pass,
    seeded) unless ``empirical_fisher``; each pass captures the modules it is asked for."""
    device = next(model.parameters()).device
    titles = ("curvature: covariances", "curvature: eigenvalue correction")

    def run(number: int, only: Sequence[str] | None = None) -> Iterator[tuple[Captured, torch.Tensor]]:
        sample = None if empirical_fisher else torch.Generator(device=device).manual_seed(seed * 7919 + number)
        bar = progress_bar(len(encoded), titles[min(number, 1)], progress)
        for idx, batch in batches(encoded, batch_size, pad_id, device):
            yield capture(model, batch, list(only or names), sample), batch.attention_mask
            bar.update(len(idx))
        bar.close()

    return run


def fit_kronecker(
    run: CapturePass, plan: dict[str, Sequence[str]], damping: float | None = None, progress: bool = False
) -> dict[str, dict[str, KronEigen]]:
    """Fit each kind of ``plan`` (``{kind: modules}``) from any source of ``(a, delta)``: the model
    (:func:`fit_factors`) or a toy model in the tests. Kinds share their passes: pass ``p`` captures the
    modules of every kind that needs it. Returns ``{kind: {module: KronEigen}}``."""
    fits = {kind: CurvatureKind.get(kind).fit(names, damping) for kind, names in plan.items() if names}
    for fit in fits.values():
        fit.progress = progress
    for number in range(max((f.passes for f in fits.values()), default=0)):
        active = [f for f in fits.values() if number < f.passes]
        names = list(dict.fromkeys(name for f in active for name in f.names))
        for captured, mask in run(number, names):
            for fit in active:
                fit.add(number, captured, mask)
        for fit in active:
            fit.end_pass(number)
    return {kind: fit.result() for kind, fit in fits.items()}


def fit_factors(
    model: nn.Module,
    encoded: Sequence[Encoded],
    pad_id: int,
    plan: dict[str, Sequence[str]],
    empirical_fisher: bool = False,
    damping: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Curvature]:
    """:func:`fit_kronecker` on the model's own ``(a, delta)`` for ``encoded`` training rows."""
    names = list(dict.fromkeys(name for modules in plan.values() for name in modules))
    run = model_passes(model, encoded, pad_id, names, empirical_fisher, batch_size, seed, progress)
    fitted = fit_kronecker(run, plan, damping, progress)
    info = {"rows": len(encoded), "labels": "data" if empirical_fisher else "sampled"}
    return {kind: Curvature(kind, modules, dict(info)) for kind, modules in fitted.items()}
