"""EK-FAC / LinFAC against ground truth: autograd per-sequence gradients, explicit dense Fisher
matrices, dense linear solves and leave-one-out retraining, all in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import chat_rows
from scipy.stats import spearmanr

from actindex.core.encode import encode_row
from actindex.core.rows import normalise_record
from actindex.core.vectors import Batch, sequence_losses
from actindex.query.curvature import CurvatureConfig
from actindex.query.curvature.influence import token_influence
from actindex.query.curvature.kinds import EKFAC, LINFAC, CurvatureKind
from actindex.query.curvature.kron import KronEigen
from actindex.query.curvature.passes import fit_factors, fit_kronecker

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"]


def vec(m: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec, the convention under which vec(delta a^T) = a ⊗ delta."""
    return m.T.reshape(-1)


def unvec(v: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return v.reshape(cols, rows).T


def _encoded(lm, n: int, seed: int = 3):
    return [encode_row(lm.tokenizer, normalise_record("<t>", i + 1, i, r)) for i, r in enumerate(chat_rows(n, seed))]


def _param_grad(lm, enc, name: str) -> torch.Tensor:
    """grad_W L(x) of one row by plain autograd on the module's weight (O x I)."""
    weight = dict(lm.model.named_modules())[name].weight
    weight.requires_grad_(True)
    try:
        batch = Batch.collate([enc], lm.tokenizer.pad_token_id, lm.device)
        (grad,) = torch.autograd.grad(sequence_losses(lm.model, batch).sum(), weight)
    finally:
        weight.requires_grad_(False)
    return grad.double()


# ---- EK-FAC on the tiny Llama ------------------------------------------------------------------


def test_eigenvalue_correction_equals_autograd_lambda(llama64):
    """Lambda = E_n[(Q_S^T G_n Q_A)^2] with G_n from autograd, and Q_A, Q_S diagonalise the token covariances."""
    encoded = _encoded(llama64, 7)
    fitted = fit_factors(llama64.model, encoded, llama64.tokenizer.pad_token_id, {EKFAC: MODULES},
                         empirical_fisher=True, batch_size=3)[EKFAC]
    modules = dict(llama64.model.named_modules())
    for name in MODULES:
        k = fitted.modules[name]
        grads = [_param_grad(llama64, e, name) for e in encoded]
        expected = torch.stack([(k.q_s.T @ g @ k.q_a) ** 2 for g in grads]).mean(0)
        torch.testing.assert_close(k.lam, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))
        assert k.damping == pytest.approx(0.1 * float(expected.mean()), rel=1e-9)
        # A = E_tok[a a^T] from a plain forward hook: Q_A^T A Q_A is diagonal
        inputs: list[torch.Tensor] = []
        handle = modules[name].register_forward_hook(lambda m, i, o, keep=inputs: keep.append(i[0].detach()))
        with torch.no_grad():
            for e in encoded:
                llama64.model(input_ids=torch.tensor([e.input_ids]))
        handle.remove()
        tokens = torch.cat([x[0] for x in inputs])
        a_cov = tokens.T @ tokens / len(tokens)
        rotated = k.q_a.T @ a_cov @ k.q_a
        off = rotated - torch.diag(torch.diagonal(rotated))
        assert float(off.abs().max()) < 1e-10 * float(rotated.abs().max())


def test_true_fisher_labels_are_seeded_and_differ_from_data_labels(llama64):
    encoded = _encoded(llama64, 4)
    pad = llama64.tokenizer.pad_token_id
    one = fit_factors(llama64.model, encoded, pad, {EKFAC: MODULES[:1]}, seed=5)[EKFAC].modules[MODULES[0]]
    two = fit_factors(llama64.model, encoded, pad, {EKFAC: MODULES[:1]}, seed=5)[EKFAC].modules[MODULES[0]]
    emp = fit_factors(llama64.model, encoded, pad, {EKFAC: MODULES[:1]}, empirical_fisher=True)[EKFAC]
    emp = emp.modules[MODULES[0]]
    torch.testing.assert_close(one.lam, two.lam, rtol=0, atol=0)
    assert not torch.allclose(one.lam, emp.lam, rtol=1e-3)


def _random_kron(o: int, i: int, seed: int) -> KronEigen:
    gen = torch.Generator().manual_seed(seed)
    q_a = torch.linalg.qr(torch.randn(i, i, generator=gen, dtype=torch.float64))[0]
    q_s = torch.linalg.qr(torch.randn(o, o, generator=gen, dtype=torch.float64))[0]
    lam = torch.rand(o, i, generator=gen, dtype=torch.float64) ** 3
    return KronEigen(q_a, q_s, lam, damping=0.05)


def test_preconditioning_equals_dense_solve(llama64):
    """precond(V) = [(Q_A ⊗ Q_S) diag(vec Lambda + lambda) (Q_A ⊗ Q_S)^T]^-1 vec V, column-stacking vec."""
    encoded = _encoded(llama64, 5)
    name = "model.layers.0.self_attn.k_proj"
    fitted = fit_factors(llama64.model, encoded, llama64.tokenizer.pad_token_id, {EKFAC: [name]},
                         empirical_fisher=True)[EKFAC].modules[name]
    for k in (_random_kron(5, 7, 0), _random_kron(3, 3, 1), fitted):
        o, i = k.lam.shape
        v = torch.randn(o, i, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        expected = unvec(torch.linalg.solve(k.dense(), vec(v)), o, i)
        torch.testing.assert_close(k.precondition(v), expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))
        # and the undamped matrix really is Q diag(Lambda) Q^T: each Kronecker eigenvector has its Lambda entry
        j, m = o - 1, i - 1
        eig = vec(torch.outer(k.q_s[:, j], k.q_a[:, m]))
        torch.testing.assert_close(k.dense(damped=False) @ eig, k.lam[j, m] * eig, rtol=1e-9, atol=1e-12)


# ---- a single linear layer: K-FAC blocks, exact Fisher, leave-one-out retraining ----------------


def _toy_run(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None, repeats: int = 1):
    """(a, delta) of a softmax regression ``s = W x`` with one token per sequence (the curvature code's input).

    ``y = None`` samples labels from the model (true Fisher), fresh for every pass and repeat.
    """

    def run(number: int, names=None):
        gen = torch.Generator().manual_seed(100 + number)
        for _ in range(repeats):
            s = (x @ w.T).requires_grad_(True)
            labels = y if y is not None else torch.multinomial(torch.softmax(s.detach(), -1), 1, generator=gen)[:, 0]
            (delta,) = torch.autograd.grad(F.cross_entropy(s, labels, reduction="sum"), s)
            yield {"lin": (x[:, None, :], delta[:, None, :])}, torch.ones(len(x), 1)

    return run


def _exact_fisher(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E_n[vec G_n vec G_n^T] with G_n = grad_W L_n from autograd (empirical Fisher)."""
    rows = []
    for n in range(len(x)):
        wn = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy((x[n] @ wn.T)[None], y[n : n + 1], reduction="sum"), wn)
        rows.append(vec(g))
    g = torch.stack(rows)
    return g.T @ g / len(x)


def test_kfac_factors_equal_the_exact_fisher_where_it_factorises():
    """Inputs and labels independent in the sample (full factorial) and W = 0, so delta depends on the
    label only: the exact empirical Fisher is exactly A ⊗ S, and EK-FAC reproduces it."""
    basis = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -2.0], [0.3, 0.0, 1.0]], dtype=torch.float64)
    x = basis.repeat_interleave(3, 0)
    y = torch.arange(3).repeat(3)
    w = torch.zeros(4, 3, dtype=torch.float64)
    fisher = _exact_fisher(x, w, y)
    fitted = fit_kronecker(_toy_run(x, w, y), {EKFAC: ["lin"]}, damping=0.0)[EKFAC]["lin"]
    a = x.T @ x / len(x)
    delta = torch.softmax(x @ w.T, -1) - F.one_hot(y, 4)
    s = delta.T @ delta / len(x)
    torch.testing.assert_close(torch.kron(a, s), fisher, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fitted.dense(), fisher, rtol=1e-9, atol=1e-12)


def test_ekfac_approximates_the_exact_fisher_on_a_toy_model():
    """Random inputs and weights, 200 rows: EK-FAC is within 55% (relative Frobenius) of the exact empirical
    Fisher (measured 0.49; K-FAC A ⊗ S: 0.60) and never worse than K-FAC, its eigenvalues being the best
    diagonal in K-FAC's basis."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=gen, dtype=torch.float64) + 0.5
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(x @ w.T, -1), 1, generator=gen)[:, 0]
    fisher = _exact_fisher(x, w, y)
    fitted = fit_kronecker(_toy_run(x, w, y), {EKFAC: ["lin"]}, damping=0.0)[EKFAC]["lin"]
    delta = torch.softmax(x @ w.T, -1) - F.one_hot(y, 3)
    kfac = torch.kron(x.T @ x / len(x), delta.T @ delta / len(x))
    err_ekfac = float(torch.linalg.norm(fitted.dense() - fisher) / torch.linalg.norm(fisher))
    err_kfac = float(torch.linalg.norm(kfac - fisher) / torch.linalg.norm(fisher))
    assert err_ekfac <= err_kfac + 1e-12
    assert err_ekfac < 0.55, (err_ekfac, err_kfac)


def _train(x: torch.Tensor, y: torch.Tensor, l2: float, w0: torch.Tensor) -> torch.Tensor:
    """argmin_W sum_n CE(W x_n, y_n) + l2/2 ||W||^2 (convex; L-BFGS to a tight tolerance)."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T, y, reduction="sum") + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def test_influence_ranks_like_leave_one_out_retraining():
    """Softmax regression trained to convergence with L2: EK-FAC influence (true Fisher, damping l2/N so
    that precond = N H^-1) predicts the leave-one-out change of phi: Spearman >= 0.9 with -Delta phi."""
    gen = torch.Generator().manual_seed(1)
    n, d, c, l2 = 60, 4, 3, 1.0
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w_true = 2 * torch.randn(c, d, generator=gen, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(x @ w_true.T, -1), 1, generator=gen)[:, 0]
    x_test = torch.randn(5, d, generator=gen, dtype=torch.float64)
    y_test = torch.multinomial(torch.softmax(x_test @ w_true.T, -1), 1, generator=gen)[:, 0]

    def phi(w: torch.Tensor) -> torch.Tensor:  # the "behaviour": log-likelihood of the test labels
        return -F.cross_entropy(x_test @ w.T, y_test, reduction="sum")

    w = _train(x, y, l2, torch.zeros(c, d, dtype=torch.float64))
    wq = w.clone().requires_grad_(True)
    (grad_phi,) = torch.autograd.grad(phi(wq), wq)
    fitted = fit_kronecker(_toy_run(x, w, None, repeats=200), {EKFAC: ["lin"]}, damping=l2 / n)[EKFAC]["lin"]
    precond_q = fitted.precondition(-grad_phi)
    s = (x @ w.T).requires_grad_(True)
    (delta,) = torch.autograd.grad(F.cross_entropy(s, y, reduction="sum"), s)
    influence = token_influence(x[:, None, :], delta[:, None, :], precond_q)[:, 0]
    loo = []
    for m in range(n):
        keep = torch.arange(n) != m
        loo.append(float(phi(_train(x[keep], y[keep], l2, w)) - phi(w)))
    rho = spearmanr(-influence.numpy(), np.array(loo)).statistic
    assert rho >= 0.9, rho


# ---- LinFAC -------------------------------------------------------------------------------------


def test_linfac_on_a_linear_sublayer_equals_exact_gauss_newton_influence():
    """A literally linear sublayer s_t = W a_t whose outputs are summed over the sequence, Gaussian loss
    1/2 ||sum_t s_t - y_n||^2. Its exact Gauss-Newton matrix is E_n[J_n^T J_n] (J_n = d f_n / d vec W).
    With residuals r_n = f_n - y_n of second moment I (as under the Gaussian true Fisher), sum_t delta_t
    = T r_n has second moment T^2 I and the sequence-level LinFAC factors give exactly that matrix, so
    LinFAC influence = q^T (GN + lambda I)^-1 g_m for the same lambda."""
    gen = torch.Generator().manual_seed(4)
    n, t, d_in, d_out, damping = 6, 5, 3, 6, 0.3
    a = torch.randn(n, t, d_in, generator=gen, dtype=torch.float64)
    w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    f = (a @ w.T).sum(1)
    residual = (6**0.5) * torch.eye(d_out, dtype=torch.float64)  # (1/N) sum_n r_n r_n^T = I, N = d_out = 6
    y = f - residual

    def run(number: int, names=None):
        s = (a @ w.T).requires_grad_(True)
        (delta,) = torch.autograd.grad(0.5 * ((s.sum(1) - y) ** 2).sum(), s)
        yield {"sub": (a, delta)}, torch.ones(n, t)

    fitted = fit_kronecker(run, {LINFAC: ["sub"]}, damping=damping)[LINFAC]["sub"]
    jac = torch.stack([torch.autograd.functional.jacobian(lambda wm, am=a[m]: (am @ wm.T).sum(0), w)
                       .reshape(d_out, -1) for m in range(n)])  # (n, O, O*I) with row-major vec(W)
    perm = torch.arange(d_out * d_in).reshape(d_out, d_in).T.reshape(-1)  # row-major -> column-stacking
    jac = jac[:, :, perm]
    gn = (jac.transpose(1, 2) @ jac).mean(0)
    q = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    s = (a @ w.T).requires_grad_(True)
    (delta,) = torch.autograd.grad(0.5 * ((s.sum(1) - y) ** 2).sum(), s)
    grads = torch.einsum("nto,nti->noi", delta, a)
    exact = torch.stack([vec(q) @ torch.linalg.solve(gn + damping * torch.eye(len(gn), dtype=gn.dtype), vec(g))
                         for g in grads])
    linfac = token_influence(a, delta, fitted.precondition(q)).sum(1)
    torch.testing.assert_close(linfac, exact, rtol=1e-9, atol=1e-12)


def test_linfac_sublayers_of_llama(llama):
    linfac = CurvatureKind.get(LINFAC)
    mlps = [f"model.layers.{i}.mlp" for i in range(4)]
    assert linfac.modules(llama.model, [], CurvatureConfig(sublayer="mlp")) == mlps
    assert linfac.modules(llama.model, [], CurvatureConfig(sublayer="block")) == [f"model.layers.{i}" for i in range(4)]


def test_linfac_factors_follow_the_sequence_level_formula(llama64):
    """A = 1/N sum_n (sum_t a_t / T_n)(...)^T and S = 1/N sum_n (sum_t delta_t)(...)^T, from hooks and autograd."""
    encoded = _encoded(llama64, 4)
    name = "model.layers.1.mlp"
    fitted = fit_factors(llama64.model, encoded, llama64.tokenizer.pad_token_id, {LINFAC: [name]},
                         empirical_fisher=True, damping=0.0)[LINFAC].modules[name]
    module = dict(llama64.model.named_modules())[name]
    a_sum, s_sum = 0.0, 0.0
    for e in encoded:
        saved = {}

        def hook(m, i, o, keep=saved):
            o.retain_grad()
            keep["a"], keep["s"] = i[0].detach(), o

        handle = module.register_forward_hook(hook)
        with torch.enable_grad():
            batch = Batch.collate([e], llama64.tokenizer.pad_token_id, llama64.device)
            params = [p for p in llama64.model.parameters()]
            params[0].requires_grad_(True)  # anything upstream, so the graph reaches the hooked output
            sequence_losses(llama64.model, batch).sum().backward()
            params[0].requires_grad_(False)
            params[0].grad = None
        handle.remove()
        a_mean = saved["a"][0].sum(0) / len(e.input_ids)
        d_sum = saved["s"].grad[0].sum(0)
        a_sum = a_sum + torch.outer(a_mean, a_mean)
        s_sum = s_sum + torch.outer(d_sum, d_sum)
    expected = torch.kron(a_sum / len(encoded), s_sum / len(encoded))
    torch.testing.assert_close(fitted.dense(), expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))
