"""Stage 8 — curvature: EK-FAC and LinFAC factors, fitted once per index (docs/design.md#curvature-and-reranking).

The package, stage by stage: :mod:`.config` (the settings), :mod:`.kron` (factors in a Kronecker
eigenbasis), :mod:`.kinds` (the curvature kinds, a class each: which modules, which passes,
what is accumulated), :mod:`.passes` (the model passes that capture ``a`` and ``delta``),
:mod:`.influence` (exact influence of rows on a query) and :mod:`.store` (fitting on an index,
storing the factors in it and loading them back).


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

from actindex.query.curvature.config import CurvatureConfig
from actindex.query.curvature.kinds import EKFAC, LINFAC, CurvatureKind, kind_names

__all__ = ["EKFAC", "LINFAC", "CurvatureConfig", "CurvatureKind", "kind_names"]
