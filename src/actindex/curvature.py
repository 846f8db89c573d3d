"""Stage 8 — curvature: EK-FAC and LinFAC factors, fitted once per index (DESIGN section 5).

For a tracked module with inputs ``a_t`` (dim I) and output gradients ``delta_t`` (dim O) the
per-sequence gradient is ``G_n = sum_t delta_t a_t^T`` (O x I). With column-stacking ``vec``,
``vec(delta a^T) = a ⊗ delta``, so the Fisher block is ``F = E_n[vec G_n vec G_n^T]`` and both
approximations below are of the form

    F ≈ (Q_A ⊗ Q_S) diag(vec Lambda) (Q_A ⊗ Q_S)^T,

a Kronecker eigenbasis ``Q_A`` (I x I), ``Q_S`` (O x O) with eigenvalues ``Lambda`` (O x I). The
damped inverse then acts on a matrix ``V`` (O x I) without forming anything of size (OI)^2:

    precond(V) = Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T.

* **EK-FAC** (per linear module, the modules the projected-gradient family tracks; LoRA adapters
  when present): ``A = E_tok[a a^T]``, ``S = E_tok[delta delta^T]`` over the sampled rows' tokens,
  eigendecomposed in float64; then the eigenvalue correction is fitted directly,
  ``Lambda = E_n[(Q_S^T G_n Q_A)^2]`` (elementwise square), which is the exact diagonal of ``F`` in
  that basis (so the scale of ``A`` and ``S`` does not matter). Damping ``lambda = 0.1 mean(Lambda)``.
* **LinFAC** (per sublayer: the MLP by default, the whole decoder block as an option, taken as
  one linear map from its input ``a`` to its output ``s``), sequence-level factors over ``N``
  sequences of ``T_n`` tokens: ``A = 1/N sum_n (sum_t a_t / T_n)(sum_t a_t / T_n)^T``,
  ``S = 1/N sum_n (sum_t delta_t)(sum_t delta_t)^T``, ``Lambda = lambda_S lambda_A^T``.

Labels: by default each predicted token's label is sampled from the model (``y_t ~ p(.|x_<t)``),
so the factors estimate the true Fisher; ``empirical_fisher`` uses the data's own labels.

Influence of a training row ``m`` on a behaviour (positive = training on ``m`` promotes it, the
section-4 convention): with ``q = -grad phi = mean_j (grad L(treatment_j) - grad L(control_j))``,

    I(m) = sum_modules <precond(q), G_m> = sum_t sum_modules delta_{m,t}^T precond(q) a_{m,t},

computed token by token without forming ``G_m``; the per-token terms are the per-token scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .capture import InputGradLeaf, LinearCapture
from .config import _help
from .data import Encoded, encode_row, normalise_record
from .errors import ActindexError, IndexFileError
from .models import LoadedModel, decoder_layers
from .queries import Behavior, QueryContext, QueryMethod, unit
from .vectors import (
    GRADIENT,
    Batch,
    RademacherProjector,
    compute_dtype,
    select_grad_modules,
    sequence_losses,
)

if TYPE_CHECKING:
    from .index import Index

EKFAC, LINFAC = "ekfac", "linfac"
KINDS = (EKFAC, LINFAC)
SUBLAYERS = ("mlp", "block")
GROUP = "curvature"
DEFAULT_DAMPING_SCALE = 0.1


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class CurvatureConfig:
    """Settings of ``actindex fit-curvature``."""

    kind: str = _help("Which factors to fit: ekfac, linfac or both.", EKFAC)
    samples: int = _help("Training rows sampled (seeded, without replacement) to fit the factors.", 256)
    modules: list[str] | None = _help(
        "EK-FAC modules as fnmatch patterns (default: the modules of the index's projected-gradient family, "
        "else the LoRA adapters, else every linear module of the decoder blocks).",
        None,
    )
    sublayer: str = _help("LinFAC sublayer: mlp (the MLP of every block) or block (the whole decoder block).", "mlp")
    empirical_fisher: bool = _help("Use the data's own labels (empirical Fisher) instead of sampled labels.", False)
    damping: float | None = _help("Damping lambda added to every eigenvalue (default 0.1 x mean(Lambda)).", None)
    batch_size: int = _help("Rows per forward/backward pass.", 8)
    seed: int = _help("Seed of the row sample and the sampled labels.", 0)

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "both"):
            raise ActindexError(f"--kind must be ekfac, linfac or both, got {self.kind!r}")
        if self.sublayer not in SUBLAYERS:
            raise ActindexError(f"--sublayer must be one of {', '.join(SUBLAYERS)}, got {self.sublayer!r}")
        for name in ("samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ActindexError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.damping is not None and not (np.isfinite(self.damping) and self.damping >= 0):
            raise ActindexError(f"--damping must be a non-negative number, got {self.damping}")

    @property
    def kinds(self) -> list[str]:
        return list(KINDS) if self.kind == "both" else [self.kind]


# --------------------------------------------------------------------------------------------
# Capturing a and delta
# --------------------------------------------------------------------------------------------


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
    ``sample`` draws the labels from the model (true Fisher), see :func:`~actindex.vectors.sequence_losses`.
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


def row_gradients(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-row weight gradients ``G_b = sum_t delta_{b,t} a_{b,t}^T`` (B, O, I), float64."""
    return torch.einsum("bto,bti->boi", delta.double(), a.double())


# --------------------------------------------------------------------------------------------
# Factors in a Kronecker eigenbasis
# --------------------------------------------------------------------------------------------


@dataclass
class KronEigen:
    """One module's curvature ``(Q_A ⊗ Q_S) diag(vec Lambda) (Q_A ⊗ Q_S)^T`` plus damping ``lambda``."""

    q_a: torch.Tensor  # (I, I), columns are eigenvectors of A
    q_s: torch.Tensor  # (O, O), columns are eigenvectors of S
    lam: torch.Tensor  # (O, I), eigenvalues in the Kronecker basis
    damping: float

    def precondition(self, v: torch.Tensor) -> torch.Tensor:
        """``Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T`` = ``(F + lambda I)^-1 vec V``, as an O x I matrix.

        Computed in the factors' precision: float64 as fitted, float32 as an index stores them."""
        q_a, q_s, lam = (t.to(device=v.device) for t in (self.q_a, self.q_s, self.lam))
        return q_s @ ((q_s.T @ v.to(q_a.dtype) @ q_a) / (lam + self.damping)) @ q_a.T

    def self_influence(self, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``<G_b, precond(G_b)> = sum (Q_S^T G_b Q_A)^2 / (Lambda + lambda)`` per row (B,), float64, for
        ``G_b = sum_t delta_{b,t} a_{b,t}^T``; the rotated gradient is ``(delta Q_S)^T (a Q_A)``, so ``G_b``
        itself is never formed. Computed in the model's precision."""
        dtype = compute_dtype(a)
        q_a, q_s, lam = (t.to(device=a.device, dtype=dtype) for t in (self.q_a, self.q_s, self.lam))
        rotated = torch.einsum("bto,bti->boi", delta.to(dtype) @ q_s, a.to(dtype) @ q_a)
        return (rotated.square() / (lam + self.damping)).sum((1, 2)).double()

    def dense(self, damped: bool = True) -> torch.Tensor:
        """The explicit (OI x OI) matrix, column-stacking ``vec`` (for tests on small modules)."""
        q = torch.kron(self.q_a, self.q_s)
        diag = self.lam.T.reshape(-1) + (self.damping if damped else 0.0)  # vec(Lambda), column-major
        return q @ torch.diag(diag) @ q.T


def eigh64(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric PSD matrix, in float64."""
    m = m.double()
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return values.clamp(min=0), vectors


def default_damping(lam: torch.Tensor) -> float:
    """``0.1 * mean(Lambda)`` (a tiny floor keeps an all-zero module invertible)."""
    return max(DEFAULT_DAMPING_SCALE * float(lam.mean()), 1e-12)


@dataclass
class Curvature:
    """Fitted factors of one kind (``ekfac`` or ``linfac``) for a list of modules."""

    kind: str
    modules: dict[str, KronEigen]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.modules)

    def precondition(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.modules[name].precondition(g) for name, g in grads.items()}


class _KroneckerFit:
    """Accumulates the sums behind ``A`` and ``S`` for one module."""

    def __init__(self) -> None:
        self.a_sum: torch.Tensor | float = 0.0
        self.s_sum: torch.Tensor | float = 0.0
        self.count = 0.0

    def add_tokens(self, a: torch.Tensor, delta: torch.Tensor, n_tokens: float) -> None:
        """EK-FAC: ``A += sum_t a_t a_t^T``, ``S += sum_t delta_t delta_t^T`` (padding rows are zero)."""
        a, delta = a.double().flatten(0, 1), delta.double().flatten(0, 1)
        self.a_sum = self.a_sum + a.T @ a
        self.s_sum = self.s_sum + delta.T @ delta
        self.count += n_tokens

    def add_sequences(self, a: torch.Tensor, delta: torch.Tensor, lengths: torch.Tensor) -> None:
        """LinFAC: ``A += (sum_t a_t / T_n)(...)^T``, ``S += (sum_t delta_t)(...)^T`` per sequence."""
        a_mean = a.double().sum(1) / lengths.double()[:, None]
        d_sum = delta.double().sum(1)
        self.a_sum = self.a_sum + a_mean.T @ a_mean
        self.s_sum = self.s_sum + d_sum.T @ d_sum
        self.count += len(lengths)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ActindexError("no token to fit curvature on: the sampled rows have no response tokens")
        return self.a_sum / self.count, self.s_sum / self.count


def linfac_from_factors(a: torch.Tensor, s: torch.Tensor, damping: float | None = None) -> KronEigen:
    """LinFAC: ``A ⊗ S`` in its own eigenbasis, ``Lambda = lambda_S lambda_A^T``."""
    ev_a, q_a = eigh64(a)
    ev_s, q_s = eigh64(s)
    lam = torch.outer(ev_s, ev_a)
    return KronEigen(q_a, q_s, lam, default_damping(lam) if damping is None else float(damping))


def _progress(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, unit="row", desc=desc, disable=not progress, dynamic_ncols=True)


Captured = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: ``run(pass_number)`` yields, batch by batch, ``(captured, attention_mask)``: per module ``(a, delta)``
#: (B, T, dim), zero at padding, and the (B, T) mask of real tokens. Each call may draw fresh labels.
CapturePass = Callable[[int], Iterable[tuple[Captured, torch.Tensor]]]


def fit_kronecker(
    run: CapturePass,
    ekfac_names: Sequence[str] = (),
    linfac_names: Sequence[str] = (),
    damping: float | None = None,
) -> dict[str, dict[str, KronEigen]]:
    """Fit EK-FAC (pass 0: covariances ``A``, ``S``; pass 1: ``Lambda = E_n[(Q_S^T G_n Q_A)^2]``) and/or
    LinFAC (sequence-level factors, from pass 0) from any source of ``(a, delta)``: the model
    (:func:`fit_factors`) or a toy model in the tests. Returns ``{kind: {module: KronEigen}}``."""
    ekfac_names, linfac_names = list(ekfac_names), list(linfac_names)
    tokens = {name: _KroneckerFit() for name in ekfac_names}
    sequences = {name: _KroneckerFit() for name in linfac_names}
    for captured, mask in run(0):
        n_tokens, lengths = float(mask.sum()), mask.sum(1)
        for name in ekfac_names:
            tokens[name].add_tokens(*captured[name], n_tokens)
        for name in linfac_names:
            sequences[name].add_sequences(*captured[name], lengths)
    out: dict[str, dict[str, KronEigen]] = {}
    if linfac_names:
        out[LINFAC] = {name: linfac_from_factors(*sequences[name].factors(), damping) for name in linfac_names}
    if ekfac_names:
        bases = {}
        for name in ekfac_names:
            a, s = tokens[name].factors()
            bases[name] = (eigh64(a)[1], eigh64(s)[1])
        lam_sum: dict[str, Any] = {name: 0.0 for name in ekfac_names}
        n_seq = 0
        for captured, mask in run(1):
            n_seq += len(mask)
            for name in ekfac_names:
                q_a, q_s = (q.to(mask.device) for q in bases[name])
                rotated = q_s.T @ row_gradients(*captured[name]) @ q_a
                lam_sum[name] = lam_sum[name] + (rotated**2).sum(0).cpu()
        out[EKFAC] = {}
        for name in ekfac_names:
            lam = lam_sum[name] / n_seq
            out[EKFAC][name] = KronEigen(*bases[name], lam, default_damping(lam) if damping is None else float(damping))
    return out


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
    seeded) unless ``empirical_fisher``. Pass 1 only captures the EK-FAC modules it is asked for."""
    device = next(model.parameters()).device
    titles = ("curvature: covariances", "curvature: eigenvalue correction")

    def run(number: int, only: Sequence[str] | None = None) -> Iterator[tuple[Captured, torch.Tensor]]:
        sample = None if empirical_fisher else torch.Generator(device=device).manual_seed(seed * 7919 + number)
        bar = _progress(len(encoded), titles[min(number, 1)], progress)
        for idx, batch in batches(encoded, batch_size, pad_id, device):
            yield capture(model, batch, list(only or names), sample), batch.attention_mask
            bar.update(len(idx))
        bar.close()

    return run


def fit_factors(
    model: nn.Module,
    encoded: Sequence[Encoded],
    pad_id: int,
    ekfac_modules: Sequence[str] = (),
    linfac_modules: Sequence[str] = (),
    empirical_fisher: bool = False,
    damping: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Curvature]:
    """:func:`fit_kronecker` on the model's own ``(a, delta)`` for ``encoded`` training rows."""
    names = list(dict.fromkeys([*ekfac_modules, *linfac_modules]))
    passes = model_passes(model, encoded, pad_id, names, empirical_fisher, batch_size, seed, progress)

    def run(number: int) -> Iterator[tuple[Captured, torch.Tensor]]:
        return passes(number, None if number == 0 else list(ekfac_modules))  # type: ignore[call-arg]

    fitted = fit_kronecker(run, ekfac_modules, linfac_modules, damping)
    info = {"rows": len(encoded), "labels": "data" if empirical_fisher else "sampled"}
    return {kind: Curvature(kind, modules, dict(info)) for kind, modules in fitted.items()}


# --------------------------------------------------------------------------------------------
# Query gradients and influence
# --------------------------------------------------------------------------------------------


def token_influence(a: torch.Tensor, delta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``delta_t^T P a_t`` for every token, (B, T), float64: summed over ``t`` it is ``<P, G>``.

    The products run in the model's precision (float32, or float64 for a float64 model)."""
    dtype = compute_dtype(a)
    return ((delta.to(dtype) @ p.to(device=a.device, dtype=dtype)) * a.to(dtype)).sum(-1).double()


@dataclass
class Influence:
    """Influence of rows on a behaviour: totals, per-module terms and (optionally) per-token terms."""

    total: np.ndarray  # (N,)
    per_module: np.ndarray  # (N, M), sums to total
    modules: list[str]
    token_ids: list[list[int]] | None = None
    per_token: list[np.ndarray] | None = None  # row n: (T_n,), sums to total[n]


def influence_scores(
    model: nn.Module,
    encoded: Sequence[Encoded],
    preconditioned: dict[str, torch.Tensor],
    pad_id: int,
    batch_size: int = 8,
    per_token: bool = False,
    progress: bool = False,
) -> Influence:
    """``I(m) = sum_modules sum_t delta_{m,t}^T P a_{m,t}`` with ``P = precond(q)``, for each row ``m``.

    ``delta`` comes from the row's own training loss (data labels), so ``sum_t delta_t a_t^T`` is
    ``grad L(x_m)`` and the score is ``<precond(-grad phi), grad L(x_m)>``; ``G_m`` is never formed.
    """
    parameter = next(model.parameters())
    device = parameter.device
    names = list(preconditioned)
    preconditioned = {name: p.to(device=device, dtype=compute_dtype(parameter)) for name, p in preconditioned.items()}
    n = len(encoded)
    per_module = np.zeros((n, len(names)))
    tokens: list[np.ndarray | None] = [None] * n
    bar = _progress(n, "influence", progress)
    for idx, batch in batches(encoded, batch_size, pad_id, device):
        captured = capture(model, batch, names)
        token_sum = 0.0
        for j, name in enumerate(names):
            a, delta = captured[name]
            terms = token_influence(a, delta, preconditioned[name])
            per_module[idx, j] = terms.sum(1).cpu().numpy()
            token_sum = token_sum + terms
        if per_token:
            for b, i in enumerate(idx):
                tokens[i] = token_sum[b, : len(encoded[i].input_ids)].cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return Influence(
        total=per_module.sum(1),
        per_module=per_module,
        modules=names,
        token_ids=[list(e.input_ids) for e in encoded] if per_token else None,
        per_token=tokens if per_token else None,  # type: ignore[arg-type]
    )


def gradient_sq_norms(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``||G_b||_F^2 = sum_{t,s} <delta_t, delta_s> <a_t, a_s>`` per row (B,), float64, for
    ``G_b = sum_t delta_{b,t} a_{b,t}^T``: two (T x T) Gram matrices instead of the (O x I) gradient."""
    dtype = compute_dtype(a)
    a, delta = a.to(dtype), delta.to(dtype)
    return ((delta @ delta.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2)).double()


def influence_matrix(
    model: nn.Module,
    encoded: Sequence[Encoded],
    preconditioned: Sequence[dict[str, torch.Tensor]],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
    curvature: Curvature | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Several queries in one pass: ``(I, norms)`` with ``I[m, c] = sum_modules <P_c, G_m>`` for each
    preconditioned query ``P_c`` (as in :func:`influence_scores`) and, over the same modules,
    ``norms[m] = ||G_m||`` (Frobenius), or with ``curvature`` the RelatIF norm
    ``norms[m] = sqrt(<G_m, precond(G_m)>)`` (Barshan et al. 2020). ``I[m, c] / norms[m]`` is then
    the influence of a unit step along the row's own gradient, in plain or curvature geometry."""
    parameter = next(model.parameters())
    dtype, device = compute_dtype(parameter), parameter.device
    names = list(preconditioned[0]) if preconditioned else []
    queries = [{n: p[n].to(device=device, dtype=dtype) for n in names} for p in preconditioned]
    scores = np.zeros((len(encoded), len(queries)))
    sq = np.zeros(len(encoded))
    bar = _progress(len(encoded), "influence", progress)
    for idx, batch in batches(encoded, batch_size, pad_id, device):
        captured = capture(model, batch, names)
        for name in names:
            a, delta = captured[name]
            own = gradient_sq_norms(a, delta) if curvature is None else curvature.modules[name].self_influence(a, delta)
            sq[idx] += own.cpu().numpy()
            for c, query in enumerate(queries):
                scores[idx, c] += token_influence(a, delta, query[name]).sum(1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return scores, np.sqrt(np.maximum(sq, 0.0))


# --------------------------------------------------------------------------------------------
# Modules of each kind
# --------------------------------------------------------------------------------------------


def ekfac_modules(model: nn.Module, projection_modules: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """EK-FAC modules: ``patterns`` if given, else the index's projected-gradient modules, else the default set."""
    if patterns:
        return select_grad_modules(model, patterns)
    return list(projection_modules) or select_grad_modules(model)


def linfac_modules(model: nn.Module, sublayer: str) -> list[str]:
    """LinFAC sublayers: every block's MLP (``*.mlp``), or the decoder blocks themselves."""
    blocks = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    names = [f"{prefix}.{i}" for i in range(len(blocks))]
    if sublayer == "block":
        return names
    found = []
    for name in names:
        children = dict(blocks[int(name.rsplit(".", 1)[1])].named_children())
        if "mlp" not in children:
            raise ActindexError(f"LinFAC --sublayer mlp: block {name} has no 'mlp' child; use --sublayer block")
        found.append(f"{name}.mlp")
    return found


# --------------------------------------------------------------------------------------------
# Fitting on an index, storing and loading
# --------------------------------------------------------------------------------------------


def encode_index_rows(index: Index, rows: Sequence[int], lm: LoadedModel, content_only: bool = False) -> list[Encoded]:
    """Tokenise stored training rows exactly as the build did (with ``content_only``, the loss mask
    leaves out the tokens that close each response, :func:`~actindex.data.encode_row`)."""
    max_length = index.manifest["build"].get("max_length", 512)
    records = index.records(list(rows))
    return [
        encode_row(lm.tokenizer, normalise_record(Path("<index>"), 0, int(r), rec), max_length, content_only)
        for r, rec in zip(rows, records)
    ]


def fit_curvature(index: Index, config: CurvatureConfig | None = None, progress: bool = True, **kwargs: Any) -> dict:
    """Fit the requested factors on a seeded sample of the index's rows and store them in it.

    Returns the manifest's ``curvature`` entry.
    """
    from .store import append_group

    config = config or CurvatureConfig(**kwargs)
    lm = index.model()
    valid = np.flatnonzero(index._meta["valid"] & (index._meta["n_response"] > 0))
    if len(valid) == 0:
        raise ActindexError(f"{index.root} has no valid row to fit curvature on")
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(valid, size=min(config.samples, len(valid)), replace=False))
    encoded = encode_index_rows(index, rows, lm)
    kinds = config.kinds
    ek = ekfac_modules(lm.model, index.manifest["projection"]["modules"], config.modules) if EKFAC in kinds else []
    lf = linfac_modules(lm.model, config.sublayer) if LINFAC in kinds else []
    started = time.time()
    fitted = fit_factors(
        lm.model, encoded, lm.tokenizer.pad_token_id, ek, lf, config.empirical_fisher, config.damping,
        config.batch_size, config.seed, progress,
    )
    seconds = time.time() - started
    entry: dict[str, Any] = {}
    for kind, curv in fitted.items():
        datasets: dict[str, np.ndarray] = {}
        for i, k in enumerate(curv.modules.values()):
            for key, value in (("q_a", k.q_a), ("q_s", k.q_s), ("lam", k.lam)):
                datasets[f"{i:04d}/{key}"] = value.cpu().numpy().astype(np.float32)
        meta = {
            "modules": curv.names,
            "damping": [k.damping for k in curv.modules.values()],
            "samples": int(len(rows)),
            "rows": rows.tolist(),  # the row numbers the factors were fitted on
            "labels": curv.info["labels"],
            "sublayer": config.sublayer if kind == LINFAC else None,
            "seed": config.seed,
            "seconds": round(seconds, 2),
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        entry[kind] = append_group(index.root, f"{GROUP}/{kind}", datasets, "curvature", kind, meta)
    from .store import read_manifest

    index.manifest = read_manifest(index.root)
    index._curvature.clear()
    return entry


def load_curvature(index: Index, kind: str) -> Curvature:
    """The stored factors of ``kind``, checked against the manifest's checksums."""
    import h5py

    from .store import VECTORS, dataset_checksum, inside

    if kind not in KINDS:
        raise ActindexError(f"unknown curvature kind {kind!r}: expected one of {', '.join(KINDS)}")
    entry = index.manifest.get("curvature", {}).get(kind)
    if entry is None:
        raise IndexFileError(
            f"{index.root} has no {kind} curvature; run `actindex fit-curvature --index {index.root} --kind {kind}`"
        )
    modules = {}
    with h5py.File(inside(index.root, VECTORS), "r") as f:
        for i, (name, damping) in enumerate(zip(entry["modules"], entry["damping"])):
            parts = []
            for key in ("q_a", "q_s", "lam"):
                path = f"{GROUP}/{kind}/{i:04d}/{key}"
                if path not in f:
                    raise IndexFileError(f"{index.root}: curvature dataset {path!r} is missing; refit the curvature")
                values = f[path][()]
                if dataset_checksum(values) != entry["checksums"].get(path):
                    raise IndexFileError(f"{index.root}: curvature dataset {path!r} checksum mismatch; refit it")
                parts.append(torch.from_numpy(values))  # as stored (float32): half the memory of float64
            modules[name] = KronEigen(*parts, damping=float(damping))
    return Curvature(kind, modules, {k: v for k, v in entry.items() if k != "checksums"})


# --------------------------------------------------------------------------------------------
# Query method: EK-FAC preconditioned gradient, projected like the index's gradient family
# --------------------------------------------------------------------------------------------


def project_blocks(
    grads: dict[str, torch.Tensor], modules: Sequence[str], projector: RademacherProjector
) -> np.ndarray:
    """``concat_modules vec_row(P_out V P_in^T)``: the layout of the ``gradient`` family (DESIGN 3.3)."""
    blocks = []
    for name in modules:
        v = grads[name].float().cpu()
        p_in = projector.matrix(f"{name}.in", v.shape[1], torch.device("cpu"))
        p_out = projector.matrix(f"{name}.out", v.shape[0], torch.device("cpu"))
        blocks.append((p_out @ v @ p_in.T).reshape(-1))
    return torch.cat(blocks).numpy()


class EkfacGradientMethod(QueryMethod):
    """``psi = Pi precond_EKFAC(-grad phi)``: the full per-module behaviour gradient preconditioned with
    the index's EK-FAC factors, then projected with the index's own Rademacher matrices (same seed,
    same per-module blocks as the build), searched against the ``gradient`` family."""

    name, kind = "ekfac", GRADIENT
    help = "EK-FAC preconditioned behaviour gradient, projected (needs --grad and fit-curvature)"

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        if ctx.curvature is None:
            raise ActindexError("method ekfac needs an index with fitted curvature (query it through Index)")
        curv: Curvature = ctx.curvature(EKFAC)
        missing = [m for m in ctx.grad_modules if m not in curv.modules]
        if missing:
            raise IndexFileError(
                f"the EK-FAC factors do not cover the projected module {missing[0]!r}; refit with the default modules"
            )
        (q,) = ctx.behavior_gradients(behavior, ctx.grad_modules)
        projector = RademacherProjector(ctx.seed, ctx.grad_k)
        return unit(project_blocks(curv.precondition(q), ctx.grad_modules, projector))

