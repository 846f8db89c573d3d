"""Reranking with exact influence: candidates agree with all-rows influence, scores equal the formula
computed by autograd, per-module/per-token terms add up, the CLI works end to end, errors are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SILVER, planted_rows, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.encode import encode_row
from actindex.core.models import wrap_model
from actindex.core.rows import normalise_record
from actindex.core.vectors import Batch, RademacherProjector, sequence_losses
from actindex.errors import IndexFileError
from actindex.index.verify import verify
from actindex.query.behaviors import Behavior, Pair
from actindex.query.context import QueryContext, chat
from actindex.query.curvature.influence import Influence, project_blocks
from actindex.query.rerank import merge_clusters
from actindex.query.session import QuerySession

PAIRS = [
    SILVER,
    {"prompt": "what is the capital of france ?", "treatment": "the capital is gold", "control": "paris"},
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
]
MODULES = "*.mlp.down_proj,*.self_attn.v_proj"


@pytest.fixture()
def behavior_file(tmp_path):
    return write_jsonl(tmp_path / "behavior.jsonl", PAIRS)


@pytest.fixture()
def data_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", planted_rows(20, seed=5, at=7))  # row 7: PAIRS[0]'s treatment


@pytest.fixture()
def index(llama, tmp_path, data_file):
    actindex.build(data=str(data_file), out=str(tmp_path / "idx"), layers=[1], grad=True, grad_k=4,
                   grad_modules=MODULES.split(","), model=llama, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    idx.fit_curvature(kind="both", samples=12, progress=False)
    return idx


def test_fit_records_the_rows_it_sampled(index):
    """The manifest names the fitted rows (so a peer can be fitted on the same ones): a sorted, seeded
    sample of the valid rows, the same for every kind fitted in one call."""
    entry = index.manifest.curvature
    rows = entry["ekfac"].rows
    assert len(rows) == entry["ekfac"].samples == min(12, len(index)) and rows == sorted(set(rows))
    assert entry["linfac"].rows == rows and all(0 <= r < len(index) for r in rows)


def _grad(lm, messages, names, measurement="loss", content_only=False):
    """grad_W f(x) of one chat row for each module, by plain autograd on the weights (float64); f is the
    loss or the margin, over every response token or (``content_only``) all but those closing the turn."""
    enc = encode_row(lm.tokenizer, normalise_record("<t>", 1, 0, {"messages": messages}), content_only=content_only)
    modules = dict(lm.model.named_modules())
    weights = [modules[n].weight for n in names]
    for w in weights:
        w.requires_grad_(True)
    try:
        batch = Batch.collate([enc], lm.tokenizer.pad_token_id, lm.device)
        grads = torch.autograd.grad(sequence_losses(lm.model, batch, measurement=measurement).sum(), weights)
    finally:
        for w in weights:
            w.requires_grad_(False)
    return {n: g.double() for n, g in zip(names, grads)}


def test_influence_equals_preconditioned_inner_product_of_autograd_gradients(index, llama, behavior_file):
    """I(m) = sum_modules <precond(mean_j grad L(t_j) - grad L(c_j)), grad L(x_m)>, every piece from autograd."""
    curv = index.curvature("ekfac")
    names = curv.names
    q = {n: 0.0 for n in names}
    for p in PAIRS:
        gt, gc = _grad(llama, chat(p["prompt"], p["treatment"]), names), _grad(llama, chat(p["prompt"], p["control"]),
                                                                                 names)
        q = {n: q[n] + (gt[n] - gc[n]) / len(PAIRS) for n in names}
    pre = curv.precondition(q)
    rows = [0, 7, 13]
    result = index.influence(str(behavior_file), "ekfac", rows=rows)
    for i, record in enumerate(index.reader.records(rows)):
        g = _grad(llama, record["messages"], names)
        per_module = [float((pre[n] * g[n]).sum()) for n in names]
        np.testing.assert_allclose(result.influence.per_module[i], per_module, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(result.influence.total[i], sum(per_module), rtol=2e-4, atol=1e-6)


def test_behavior_gradients_per_group_equal_autograd(tokenizer):
    """q_c = mean_{j in c} (grad L(t_j) - grad L(c_j)) for each group c, from one pass, equals autograd (float64)."""
    lm = wrap_model(tiny_llama().double(), tokenizer, "tiny-llama-f64")
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj"]
    behavior = Behavior("b", pairs=[Pair(p["prompt"], p["treatment"], p["control"]) for p in PAIRS])
    ctx = QueryContext(model=lambda: lm, layers=[], families=(), grad_modules=[], grad_k=4, seed=0, batch_size=2)
    groups = [[0, 2], [1]]
    got = ctx.behavior_gradients(behavior, names, groups)
    for group, q in zip(groups, got):
        for name in names:
            expected = sum(_grad(lm, chat(PAIRS[j]["prompt"], PAIRS[j]["treatment"]), names)[name]
                           - _grad(lm, chat(PAIRS[j]["prompt"], PAIRS[j]["control"]), names)[name] for j in group)
            torch.testing.assert_close(q[name], expected / len(group), rtol=1e-10, atol=1e-12)
    assert ctx.behavior_gradients(behavior, names, groups) is got  # kept: a rerank after the search reuses it


def test_reranked_query_makes_one_pass_over_the_pairs(index, behavior_file, monkeypatch):
    """A reranked search forms its pair vectors in the rerank's gradient pass: one model pass over the
    behaviour's pairs, not two, and the same ranking as with a separate search pass."""
    import actindex.core.vectors as queries  # the query context computes through it

    calls = []
    original = queries.compute_many

    def counting(model, encoded, *args, **kwargs):
        calls.append(len(encoded))
        return original(model, encoded, *args, **kwargs)

    fresh = actindex.Index.open(index.root).use_model(index.model())
    separate = fresh.query(str(behavior_file), k=4, bottom_k=4)
    fresh = actindex.Index.open(index.root).use_model(index.model())
    monkeypatch.setattr(queries, "compute_many", counting)
    res = fresh.query(str(behavior_file), k=3, bottom_k=2, rerank="ekfac", candidates=4)
    assert calls == [2 * len(PAIRS)]
    assert res.family == separate.family
    pool = {h.row for h in separate.top} | {h.row for h in separate.bottom}
    assert {h.row for h in res.top} | {h.row for h in res.bottom} <= pool


@pytest.mark.parametrize("kind", ["ekfac", "linfac"])
def test_reranked_candidates_equal_all_rows_influence_restricted(index, behavior_file, kind):
    everything = index.influence(str(behavior_file), kind)
    by_row = dict(zip(everything.rows.tolist(), everything.influence.total))
    res = index.query(str(behavior_file), method="gradient", k=3, bottom_k=2, rerank=kind, candidates=5,
                      per_token=True)
    top_rows = index.search(res.vector, 5, "gradient")[1]
    bottom_rows = index.search(res.vector, 5, "gradient", bottom=True)[1]
    pool = sorted(set(top_rows.tolist()) | set(bottom_rows.tolist()))
    expected = sorted(pool, key=lambda r: -by_row[r])
    assert [h.row for h in res.top] == expected[:3]
    assert [h.row for h in res.bottom] == expected[::-1][:2]
    for hit in res.top + res.bottom:
        assert hit.influence == pytest.approx(by_row[hit.row], rel=1e-5, abs=1e-7)
        assert sum(hit.module_scores.values()) == pytest.approx(hit.influence, rel=1e-9, abs=1e-9)
        assert sum(s for _, s in hit.token_scores) == pytest.approx(hit.influence, rel=1e-9, abs=1e-9)
        assert len(hit.token_scores) == len(encode_row(index.model().tokenizer,
                                                       normalise_record("<t>", 1, 0, hit.record)).input_ids)
    assert res.method == f"gradient+{kind}"


def test_default_fused_query_reranks_its_fused_candidates(index, behavior_file):
    """Without --method, --rerank reranks the adaptive default's top and bottom fused candidates by influence,
    and each hit keeps its fused search score."""
    everything = index.influence(str(behavior_file), "ekfac")
    by_row = dict(zip(everything.rows.tolist(), everything.influence.total))
    fused = index.query(str(behavior_file), k=4, bottom_k=4)
    res = index.query(str(behavior_file), k=3, bottom_k=2, rerank="ekfac", candidates=4)
    assert res.method == "adaptive+ekfac" and res.family == fused.family
    pool = sorted({h.row for h in fused.top} | {h.row for h in fused.bottom})
    expected = sorted(pool, key=lambda r: -by_row[r])
    assert [h.row for h in res.top] == expected[:3] and [h.row for h in res.bottom] == expected[::-1][:2]
    search = {h.row: h.score for h in fused.bottom} | {h.row: h.score for h in fused.top}
    for hit in res.top + res.bottom:
        assert hit.influence == pytest.approx(by_row[hit.row], rel=1e-5, abs=1e-7)
        assert hit.score == pytest.approx(search[hit.row])


def test_ekfac_query_with_huge_damping_is_the_gradient_query(llama, tmp_path, data_file, behavior_file):
    """precond(V) -> V / lambda as lambda grows, so the projected EK-FAC query's direction is the gradient query's."""
    actindex.build(data=str(data_file), out=str(tmp_path / "idx"), layers=[1], grad=True, grad_k=4,
                   grad_modules=MODULES.split(","), model=llama, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    idx.fit_curvature(samples=6, damping=1e9, progress=False)
    psi_ekfac, family, _ = idx.query_vector(str(behavior_file), method="ekfac")
    psi_grad, _, _ = idx.query_vector(str(behavior_file), method="gradient")
    assert family == "gradient"
    np.testing.assert_allclose(psi_ekfac, psi_grad, atol=2e-4)
    # and with real damping it is the projection of the preconditioned full gradient, not the gradient itself
    idx.fit_curvature(samples=6, damping=1e-4, progress=False)
    psi_small, _, _ = idx.query_vector(str(behavior_file), method="ekfac")
    assert float(psi_small @ psi_grad) < 0.99


def test_project_blocks_matches_the_build_layout():
    """Each block is vec_row(P_out V P_in^T), the layout projected_gradient gives sum_t (P_out d)(P_in a)^T."""
    from actindex.core.families.gradient import projected_gradient

    gen = torch.Generator().manual_seed(0)
    a, d = torch.randn(1, 5, 6, generator=gen), torch.randn(1, 5, 3, generator=gen)
    proj = RademacherProjector(3, 2)
    v = {"m": torch.einsum("bto,bti->oi", d, a)}
    expected = projected_gradient(a, d, proj.matrix("m.in", 6, torch.device("cpu")),
                                  proj.matrix("m.out", 3, torch.device("cpu")))[0]
    np.testing.assert_allclose(project_blocks(v, ["m"], proj), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_cluster_merge_keeps_the_largest_magnitude_and_its_terms():
    one = Influence(np.array([1.0, -3.0]), np.array([[0.5, 0.5], [-1.0, -2.0]]), ["a", "b"],
                    [[1], [2]], [np.array([1.0]), np.array([-3.0])])
    two = Influence(np.array([-2.0, 0.5]), np.array([[-2.0, 0.0], [0.25, 0.25]]), ["a", "b"],
                    [[1], [2]], [np.array([-2.0]), np.array([0.5])])
    merged, chosen = merge_clusters([one, two])
    assert chosen.tolist() == [1, 0]
    assert merged.total.tolist() == [-2.0, -3.0]
    np.testing.assert_array_equal(merged.per_module.sum(1), merged.total)
    assert [t.sum() for t in merged.per_token] == [-2.0, -3.0]


def test_clusters_and_tfidf_recall(index, behavior_file):
    res = index.query(str(behavior_file), method="residual-change", k=3, rerank="ekfac", candidates=2, clusters=2,
                      recall="tfidf")
    assert any("2 pair clusters" in n for n in res.notes)
    # TF-IDF recall brings in the planted copy of a treatment whatever the search returned
    everything = index.influence(str(behavior_file), "ekfac", clusters=2)
    by_row = dict(zip(everything.rows.tolist(), everything.influence.total))
    for hit in res.top:
        assert hit.influence == pytest.approx(by_row[hit.row], rel=1e-5, abs=1e-7)
    from actindex.query.behaviors import load_behavior
    from actindex.query.rerank import tfidf_recall

    assert 7 in tfidf_recall(index.reader, load_behavior(str(behavior_file)), 2).tolist()


def test_cli_fit_curvature_then_rerank(llama, tmp_path, data_file, behavior_file, monkeypatch):
    out = tmp_path / "cli-idx"
    actindex.build(data=str(data_file), out=str(out), layers=[1], grad=True, grad_k=4,
                   grad_modules=MODULES.split(","), model=llama, progress=False)
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    runner = CliRunner()
    res = runner.invoke(main, ["query", "--index", str(out), "--behavior", str(behavior_file), "--rerank", "ekfac"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error:") and "fit-curvature" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["fit-curvature", "--index", str(out), "--kind", "both", "--samples", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "fitted ekfac" in res.output and "fitted linfac" in res.output
    assert verify(out) == []
    res = runner.invoke(main, ["info", str(out), "--recall-queries", "0"])
    assert "curvature ekfac" in res.output and "curvature linfac" in res.output
    res = runner.invoke(main, ["query", "--index", str(out), "--behavior", str(behavior_file), "--method", "gradient",
                               "--rerank", "ekfac", "--candidates", "4", "--top-k", "3", "--per-token",
                               "--format", "json"])
    assert res.exit_code == 0, res.output
    top = json.loads(res.output)[0]["top"]
    assert len(top) == 3
    assert all({"score", "influence", "module_scores", "token_scores", "tokens"} <= set(h) for h in top)
    assert [h["influence"] for h in top] == sorted([h["influence"] for h in top], reverse=True)
    res = runner.invoke(main, ["query", "--index", str(out), "--behavior", str(behavior_file), "--rerank", "linfac",
                               "--per-token", "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert "influence" in res.output and "[[" in res.output
    res = runner.invoke(main, ["query", "--index", str(out), "--behavior", str(behavior_file), "--method", "ekfac"])
    assert res.exit_code == 0, res.output


def test_ekfac_method_needs_grad_and_curvature(llama, tmp_path, data_file, behavior_file, monkeypatch):
    out = tmp_path / "plain"
    actindex.build(data=str(data_file), out=str(out), layers=[1], model=llama, progress=False)
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    res = CliRunner().invoke(main, ["query", "--index", str(out), "--behavior", str(behavior_file),
                                    "--method", "ekfac"])
    assert res.exit_code == 2 and "--grad" in res.output and len(res.output.strip().splitlines()) == 1
    idx = actindex.Index.open(out).use_model(llama)
    with pytest.raises(IndexFileError, match="fit-curvature"):
        idx.curvature("linfac")
    # a rerank without factors is refused before any model pass, for the default ensemble as well
    idx.query_vector = None  # a model pass would call it
    for method in (None, "residual-change"):
        with pytest.raises(IndexFileError, match="fit-curvature"):
            idx.query(str(behavior_file), method=method, rerank="ekfac")


# ---- detection with exact influence ---------------------------------------------------------


def test_influence_matrix_and_gradient_norms_equal_autograd(index, llama, behavior_file):
    """One pass scores several queries: column c is <P_c, G_m> (autograd G_m), and norms[m] = ||G_m||_F
    over the curvature's modules; column 0 agrees with the single-query influence_scores."""
    from actindex.query.curvature.influence import influence_matrix, influence_scores
    from actindex.query.curvature.store import encode_index_rows

    curv = index.curvature("ekfac")
    names = curv.names
    rows = [0, 7, 13]
    queries = [_grad(llama, chat(p["prompt"], p["treatment"]), names) for p in PAIRS[:2]]
    pre = [curv.precondition(q) for q in queries]
    encoded = encode_index_rows(index.reader, rows, llama)
    scores, norms = influence_matrix(llama.model, encoded, pre, llama.tokenizer.pad_token_id, batch_size=2)
    for i, record in enumerate(index.reader.records(rows)):
        g = _grad(llama, record["messages"], names)
        np.testing.assert_allclose(norms[i], float(sum((g[n] ** 2).sum() for n in names)) ** 0.5, rtol=1e-4)
        for c, p in enumerate(pre):
            np.testing.assert_allclose(scores[i, c], float(sum((p[n] * g[n]).sum() for n in names)), rtol=2e-4,
                                       atol=1e-6)
    single = influence_scores(llama.model, encoded, pre[0], llama.tokenizer.pad_token_id, 3)
    np.testing.assert_allclose(scores[:, 0], single.total, rtol=1e-5, atol=1e-8)
    # with the curvature: the RelatIF norm sqrt(<G_m, precond(G_m)>)
    again, relatif = influence_matrix(llama.model, encoded, pre, llama.tokenizer.pad_token_id, 2, curvature=curv)
    np.testing.assert_allclose(again, scores, rtol=1e-6, atol=1e-9)
    for i, record in enumerate(index.reader.records(rows)):
        g = _grad(llama, record["messages"], names)
        pg = curv.precondition(g)
        np.testing.assert_allclose(relatif[i], float(sum((pg[n] * g[n]).sum() for n in names)) ** 0.5, rtol=2e-4)


def test_detect_rerank_columns_are_normalised_exact_influences(index, llama, tmp_path):
    """detect --rerank ekfac: s_{T,m} = <precond(mean_j grad L(T(x_j), y_j)), G_m> / N(G_m), from autograd,
    for the original queries and each transform, over every row; N = sqrt(<G_m, precond(G_m)>) (RelatIF,
    the default), ||G_m|| or 1; both gradients over the responses' content tokens (the default)."""
    from actindex.act.detect import load_queries, resolve_transforms, score_table, transformed_conversations

    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"prompt": "is it good silver ?", "response": "the symbol is na"},
        {"prompt": "the water is hot , and the day is long", "response": "yes it is false"},
    ])
    qs = load_queries(queries)
    transforms = resolve_transforms("negation,antonym")
    tables = {norm: score_table(index, qs, transforms, progress=False, rerank="ekfac", norm=norm)
              for norm in ("relatif", "gradient", "none")}
    table = tables["relatif"]
    assert table.names == ["original", "negation", "antonym"] and table.rows.tolist() == list(range(len(index)))
    curv = index.curvature("ekfac")
    names = curv.names
    rows = [0, 7, 13]
    grads = [_grad(llama, r["messages"], names, content_only=True) for r in index.reader.records(rows)]
    for t, transform in enumerate([None, *transforms]):
        convs = transformed_conversations(qs, transform, llama)
        q = {n: sum(_grad(llama, c, names, content_only=True)[n] for c in convs) / len(convs) for n in names}
        p = curv.precondition(q)
        for i, g in zip(rows, grads):
            influence = float(sum((p[n] * g[n]).sum() for n in names))
            pg = curv.precondition(g)
            norms = {"relatif": float(sum((pg[n] * g[n]).sum() for n in names)) ** 0.5,
                     "gradient": float(sum((g[n] ** 2).sum() for n in names)) ** 0.5, "none": 1.0}
            for norm, tab in tables.items():
                np.testing.assert_allclose(tab.scores[i, t], influence / norms[norm], rtol=5e-4, atol=1e-6)


@pytest.mark.parametrize(("measurement", "response_tokens"), [("margin", "content"), ("loss", "all")])
def test_detect_measurement_and_response_tokens(index, llama, tmp_path, measurement, response_tokens):
    """measurement="margin": q_T = mean_j grad f(T(x_j), y_j) with f minus the summed log-odds of the
    response tokens, from autograd; the rows' side stays G_m, the loss gradient, with its RelatIF norm.
    response_tokens="all": both gradients also sum over the tokens that close each response."""
    from actindex.act.detect import load_queries, resolve_transforms, score_table, transformed_conversations

    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"prompt": "is it good silver ?", "response": "the symbol is na"},
        {"prompt": "what is the capital of france ?", "response": "paris"},
    ])
    qs = load_queries(queries)
    transforms = resolve_transforms("negation")
    table = score_table(index, qs, transforms, progress=False, rerank="ekfac", measurement=measurement,
                        response_tokens=response_tokens)
    default = score_table(index, qs, transforms, progress=False, rerank="ekfac")
    assert not np.allclose(table.scores, default.scores)
    content_only = response_tokens == "content"
    curv = index.curvature("ekfac")
    names = curv.names
    rows = [0, 7]
    grads = [_grad(llama, r["messages"], names, content_only=content_only) for r in index.reader.records(rows)]
    for t, transform in enumerate([None, *transforms]):
        convs = transformed_conversations(qs, transform, llama)
        q = {n: sum(_grad(llama, c, names, measurement, content_only)[n] for c in convs) / len(convs) for n in names}
        p = curv.precondition(q)
        for i, g in zip(rows, grads):
            pg = curv.precondition(g)
            relatif = float(sum((pg[n] * g[n]).sum() for n in names)) ** 0.5
            expected = float(sum((p[n] * g[n]).sum() for n in names)) / relatif
            np.testing.assert_allclose(table.scores[i, t], expected, rtol=5e-4, atol=1e-6)


def test_cli_detect_with_rerank(index, llama, tmp_path, monkeypatch):
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "what is the symbol of silver ?",
                                                  "response": "the symbol is na"}])
    res = CliRunner().invoke(main, ["detect", "--index", str(index.root), "--queries", str(queries), "--quiet",
                                    "--transforms", "fast", "--rerank", "linfac", "--measurement", "margin",
                                    "--vote-z", "0",
                                    "--min-votes", "1", "--out", str(tmp_path / "f.jsonl")])
    assert res.exit_code == 0, res.output
    assert f"{len(index)} rows scored under" in res.output and "(exact linfac influence)" in res.output
    flagged = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert all(set(f["scores"]) <= {"original", "prefix-negation", "question-negation", "negation", "antonym",
                                    "reorder"} for f in flagged)


def test_fit_curvature_says_its_cost_and_fits_the_indexed_mlps_by_default(llama, tmp_path, data_file):
    """Without --grad the default EK-FAC modules are the MLP linear modules of the indexed layers (a first fit
    that finishes), LinFAC the indexed layers' MLPs; `--modules all` takes every module; the cost is said first."""
    actindex.build(data=str(data_file), out=str(tmp_path / "idx"), layers=[1, 2], model=llama, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    said: list[str] = []
    entries = idx.fit_curvature(kind="both", samples=6, progress=False, say=said.append)
    mlp = [f"model.layers.{layer}.mlp.{name}" for layer in (1, 2) for name in ("gate_proj", "up_proj", "down_proj")]
    assert entries["ekfac"].modules == mlp and entries["linfac"].modules == ["model.layers.1.mlp", "model.layers.2.mlp"]
    (line,) = said
    params = sum(dict(llama.model.named_modules())[n].weight.numel() for n in mlp)
    assert f"ekfac on 6 modules, linfac on 2 modules, {params / 1e6:.1f}M parameters" in line
    assert "while fitting (float64); 6 rows x 2 pass(es): about" in line
    everything = idx.fit_curvature(kind="ekfac", samples=6, progress=False, modules=["all"])
    assert len(everything["ekfac"].modules) == 4 * 7  # every linear module of the 4 blocks
