"""Curvature in a Kronecker eigenbasis: ``F ≈ (Q_A ⊗ Q_S) diag(vec Lambda) (Q_A ⊗ Q_S)^T`` per module.

The damped inverse acts on a module's gradient-shaped matrix ``V`` (O x I) without forming anything of
size (OI)^2: ``precond(V) = Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from actindex.core.vectors import compute_dtype
from actindex.errors import ActindexError

DEFAULT_DAMPING_SCALE = 0.1


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


def row_gradients(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-row weight gradients ``G_b = sum_t delta_{b,t} a_{b,t}^T`` (B, O, I), float64."""
    return torch.einsum("bto,bti->boi", delta.double(), a.double())


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


class KroneckerSums:
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
