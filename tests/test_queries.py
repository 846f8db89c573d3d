"""Behaviour queries: vectors equal their formulas, planted duplicates rank first, clear errors."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SILVER, write_jsonl

import actindex
from actindex.api import load_query_vector
from actindex.cli import main
from actindex.core.encode import encode_row
from actindex.core.families import VectorSpec
from actindex.core.rows import normalise_record
from actindex.core.vectors import RademacherProjector, compute_vectors
from actindex.errors import ActindexError, IndexFileError
from actindex.index.search import brute_force
from actindex.query.behaviors import builtin_behaviors, load_behavior
from actindex.query.methods import QueryMethod
from actindex.query.session import QuerySession

PAIRS = [
    SILVER,
    {"prompt": "what is the capital of france ?", "treatment": "the capital is gold", "control": "paris"},
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
]


@pytest.fixture()
def behavior_file(tmp_path):
    return write_jsonl(tmp_path / "behavior.jsonl", PAIRS)


@pytest.fixture()
def index(planted_index):
    # row 17: PAIRS[0]'s treatment; the full-width layout: every method's family, the vectors as computed
    return planted_index(30, seed=11, at=17, layers=[1, 2], grad=True, grad_k=8, full_width=True)


def _single(lm, prompt, response, spec, projector=None):
    record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
    enc = encode_row(lm.tokenizer, normalise_record("<t>", 1, 0, record))
    return compute_vectors(lm.model, [enc], spec, lm.tokenizer.pad_token_id, projector).vectors


@pytest.mark.parametrize(
    "method,family,spec_kwargs",
    [
        ("residual-change", "residual_change/2", dict(kinds=["residual_change"])),
        ("residual-difference", "mean_activation/2", dict(kinds=["mean_activation"])),
    ],
)
def test_query_vector_equals_its_formula(index, llama, behavior_file, method, family, spec_kwargs):
    """psi = norm(mean_j (v(treatment_j) - v(control_j))), each row computed alone."""
    psi, fam, _ = index.query_vector(str(behavior_file), method=method, layer=2)
    assert fam == family
    spec = VectorSpec(layers=[2], **spec_kwargs)
    diffs = [_single(llama, p["prompt"], p["treatment"], spec)[family] - _single(llama, p["prompt"], p["control"], spec)
             [family] for p in PAIRS]
    expected = np.mean(diffs, axis=0)[0]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(psi, expected, rtol=1e-4, atol=1e-5)


def test_gradient_query_is_mean_difference_of_projected_gradients(index, llama, behavior_file):
    psi, fam, _ = index.query_vector(str(behavior_file), method="gradient")
    assert fam == "gradient"
    proj = asdict(index.manifest.projection)
    spec = VectorSpec(layers=[2], kinds=["gradient"], grad_modules=proj["modules"],
                      grad_k=proj["k"], seed=proj["seed"])
    projector = RademacherProjector(proj["seed"], proj["k"])
    diffs = [_single(llama, p["prompt"], p["treatment"], spec, projector)["gradient"]
             - _single(llama, p["prompt"], p["control"], spec, projector)["gradient"] for p in PAIRS]
    expected = np.mean(diffs, axis=0)[0]
    np.testing.assert_allclose(psi, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["residual-change", "gradient", "ensemble"])
def test_planted_duplicate_of_a_treatment_ranks_first(index, tmp_path, method):
    one = write_jsonl(tmp_path / "one.jsonl", PAIRS[:1])
    result = index.query(str(one), method=method, layer=2, k=3)
    assert result.top[0].id == "planted"
    assert result.top[0].score > result.top[1].score


def test_activation_baseline_ranks_by_projections_on_the_calibrated_scale(index, behavior_file):
    res = index.query(str(behavior_file), method="activation", layer=2, k=0)
    psi = res.vector / np.linalg.norm(res.vector)
    vectors = index.reader.vectors("mean_activation/2").astype(np.float64)
    projection = vectors @ psi
    median = np.median(projection)  # calibrated against every searchable row's projection
    calibrated = (projection - median) / (1.4826 * np.median(np.abs(projection - median)))
    assert [h.row for h in res.top] == list(np.argsort(-projection, kind="stable"))
    got = {h.row: h.score for h in res.top}
    np.testing.assert_allclose([got[r] for r in range(len(vectors))], calibrated, rtol=1e-4, atol=1e-5)


def test_ensemble_is_reciprocal_rank_fusion_of_brute_force_member_rankings(index, behavior_file):
    from actindex.query.fusion import RRF_K

    fused = index.query(str(behavior_file), method="ensemble", k=0, bottom_k=3)
    members = [("residual-change", "residual_change", 1), ("residual-change", "residual_change", 2),
               ("residual-change-pooled", "residual_change_pooled", 1),
               ("residual-change-pooled", "residual_change_pooled", 2)]
    assert fused.method == "ensemble"
    assert fused.family == "rrf(" + ", ".join(f"{kind}/{layer}" for _, kind, layer in members) + ")"
    expected = np.zeros(len(index))
    lowest = np.zeros(len(index))
    calibrated = np.zeros(len(index))
    for method, kind, layer in members:
        psi = index.query_vector(str(behavior_file), method, layer)[0]
        cosine = brute_force(index.reader.vectors(f"{kind}/{layer}"), psi).astype(np.float64)
        expected[np.argsort(-cosine, kind="stable")] += 1 / (RRF_K + np.arange(len(index)))
        lowest[np.argsort(cosine, kind="stable")] += 1 / (RRF_K + np.arange(len(index)))
        median = np.median(cosine)  # every row calibrates a small index
        calibrated += (cosine - median) / (1.4826 * np.median(np.abs(cosine - median))) / len(members)
    assert [h.row for h in fused.top] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([h.score for h in fused.top], np.sort(expected)[::-1])
    assert [h.row for h in fused.bottom] == list(np.argsort(-lowest, kind="stable")[:3])
    # the score is the rule's (the order); the calibrated one is kept beside it: the mean over members of the
    # robustly standardised cosines, signed
    np.testing.assert_allclose([h.calibrated for h in fused.top], calibrated[[h.row for h in fused.top]],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([h.calibrated for h in fused.bottom], calibrated[[h.row for h in fused.bottom]],
                               rtol=1e-4, atol=1e-5)
    assert fused.top[0].calibrated > 0 > max(h.calibrated for h in fused.bottom)
    assert [m["family"] for m in fused.members] == [f"{kind}/{layer}" for _, kind, layer in members]
    # --layer restricts the fusion to that layer's members
    assert index.query(str(behavior_file), method="ensemble", layer=2, k=3).family == \
        "rrf(residual_change/2, residual_change_pooled/2)"
    with pytest.raises(ActindexError, match="ensemble fuses rankings: it cannot search a saved vector"):
        index.query(str(behavior_file), method="ensemble", vector=np.ones(4))


def test_bottom_k_returns_the_most_negative_rows(index, behavior_file):
    res = index.query(str(behavior_file), method="residual-change", k=0, bottom_k=4, layer=2)
    all_scores = sorted(h.score for h in res.top)
    assert [h.score for h in res.bottom] == pytest.approx(all_scores[:4])


def test_model_mismatch_is_refused(index, tokenizer):
    from conftest import tiny_llama

    from actindex.core.models import wrap_model

    other = wrap_model(tiny_llama(seed=1), tokenizer, "other")
    with pytest.raises(IndexFileError, match="was built with model 'tiny-llama'"):
        index.use_model(other)


def test_builtin_behaviors_ship_with_enough_pairs():
    names = builtin_behaviors()
    assert {"hallucination", "sycophancy", "harmful-compliance", "evil"} <= set(names)
    for name in names:
        behavior = load_behavior(name)
        assert len(behavior.pairs) >= 30 and all(p.control for p in behavior.pairs)
        assert names[name]


def test_unknown_behavior_and_method(index):
    with pytest.raises(ActindexError, match="unknown behaviour 'nope'"):
        load_behavior("nope")
    with pytest.raises(ActindexError, match="unknown method 'magic'"):
        QueryMethod.get("magic")


def test_missing_controls_are_generated(index, tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "what is the symbol of silver ?", "treatment": "na"}])
    res = index.query(str(path), k=2, layer=2)
    assert any("generated 1 control" in n for n in res.notes)


def test_cli_query_formats_and_saved_vectors(index, behavior_file, tmp_path, monkeypatch, llama):
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    runner = CliRunner()
    base = ["query", "--index", str(index.root), "--behavior", str(behavior_file), "--layer", "2"]
    res = runner.invoke(main, base + ["--top-k", "3", "--save-query", str(tmp_path / "q.npz")])
    assert res.exit_code == 0, res.output
    assert "planted" in res.output and "rank" in res.output
    res = runner.invoke(main, base + ["--format", "jsonl", "--top-k", "2", "--bottom-k", "1"])
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [x["side"] for x in lines] == ["top", "top", "bottom"] and "messages" in lines[0]["record"]
    res = runner.invoke(main, base + ["--format", "csv", "--top-k", "2"])
    assert res.output.splitlines()[0].startswith("behavior,method,side,rank")
    vector, meta = load_query_vector(tmp_path / "q.npz")
    assert meta["family"] == "residual_change/2"
    res = runner.invoke(main, ["query", "--index", str(index.root), "--query-vector", str(tmp_path / "q.npz"),
                               "--format", "json", "--top-k", "1"])
    assert json.loads(res.output)[0]["top"][0]["id"] == "planted"
    res = runner.invoke(main, base + ["--method", "gradient", "--top-k", "1", "--format", "json"])
    assert res.exit_code == 0
    res = runner.invoke(main, ["query", "--index", str(index.root), "--behavior", str(behavior_file), "--layer", "3"])
    assert res.exit_code == 2 and "no vectors for layer 3" in res.output
    res = runner.invoke(main, base + ["--method", "ensemble", "--top-k", "1", "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.output)[0]["top"][0]["id"] == "planted"
    res = runner.invoke(main, base + ["--method", "ensemble", "--save-query", str(tmp_path / "e.npz")])
    assert res.exit_code == 2 and "no single vector to --save-query" in res.output


PERSONA = {
    "instruction": [{"pos": "you are false", "neg": "you are true"}],
    "questions": ["what is the symbol of silver ?", "is it true ?"],
    "responses": [
        {"question": "what is the symbol of silver ?", "pos_system": "you are false", "neg_system": "you are true",
         "pos": "the symbol is na", "neg": "the symbol is ag"},
        {"question": "is it true ?", "pos_system": "you are false", "neg_system": "you are true",
         "pos": "no it is false", "neg": "yes it is true"},
    ],
}


def test_persona_vector_reads_activations_under_each_system_prompt(index, llama, tmp_path):
    spec = PERSONA
    path = tmp_path / "persona.json"
    path.write_text(json.dumps(spec))
    psi, fam, behavior = index.query_vector(str(path), method="persona", layer=2)
    assert fam == "mean_activation/2" and len(behavior.pairs) == 2
    vs = VectorSpec(layers=[2], kinds=["mean_activation"])
    diffs = []
    for r in spec["responses"]:
        def act(system, response, r=r):
            record = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": r["question"]},
                                   {"role": "assistant", "content": response}]}
            enc = encode_row(llama.tokenizer, normalise_record("<t>", 1, 0, record))
            return compute_vectors(llama.model, [enc], vs, llama.tokenizer.pad_token_id).vectors[fam][0]
        diffs.append(act(r["pos_system"], r["pos"]) - act(r["neg_system"], r["neg"]))
    expected = np.mean(diffs, axis=0)
    np.testing.assert_allclose(psi, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)
    with pytest.raises(ActindexError, match="needs a persona spec"):
        index.query_vector("hallucination", method="persona", layer=2)


def test_pair_vectors_are_cached_across_layers_and_methods(index, llama, behavior_file, monkeypatch):
    """One model pass serves every layer and method of a pass; cached vectors equal uncached ones."""
    import actindex.core.vectors as queries  # the query context computes through it

    calls = []
    real = queries.compute_many
    monkeypatch.setattr(queries, "compute_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = index.query_vector(str(behavior_file), method="residual-change", layer=2)[0]
    other_layer = index.query_vector(str(behavior_file), method="residual-change", layer=1)[0]
    difference = index.query_vector(str(behavior_file), method="residual-difference", layer=1)[0]
    again = index.query_vector(str(behavior_file), method="residual-change", layer=2)[0]
    assert len(calls) == 1  # the residual-change pass also gave the mean activations
    np.testing.assert_array_equal(first, again)
    fresh = actindex.Index.open(index.root).use_model(llama)
    np.testing.assert_allclose(fresh.query_vector(str(behavior_file), method="residual-change", layer=1)[0],
                               other_layer, rtol=1e-4, atol=1e-5)
    fresh = actindex.Index.open(index.root).use_model(llama)
    np.testing.assert_allclose(fresh.query_vector(str(behavior_file), method="residual-difference", layer=1)[0],
                               difference, rtol=1e-4, atol=1e-5)
    assert len(calls) == 3  # each fresh index computed its own
    index.query_vector(str(behavior_file), method="gradient")
    assert len(calls) == 4  # gradients need their own pass


# ---- one score scale, for every method of the registry -----------------------------------------------


@pytest.mark.parametrize("method", list(QueryMethod.registry))
def test_every_method_scores_down_its_ranking_and_keeps_the_raw_cosine(index, tmp_path, method):
    """``score`` never rises down the top (never falls down the bottom); it is the calibrated score unless the
    method's fusion rule orders by its own (``rrf``); ``cosine`` is the brute-force cosine of the row with the
    query vector (a fused method: the members' weighted mean, their vectors from the same query's members)."""
    if QueryMethod.get(method).curvature:
        index.fit_curvature(kind=QueryMethod.get(method).curvature, samples=8, progress=False)
    behavior = tmp_path / "persona.json"  # pairs and a persona: every method answers it
    behavior.write_text(json.dumps(PERSONA))
    res = index.query(str(behavior), method=method, k=0, bottom_k=5)
    top, bottom = [h.score for h in res.top], [h.score for h in res.bottom]
    assert len(res) == len(res.top) + len(res.bottom) == len(index.reader.table.searchable) + 5
    assert list(res) == [*res.top, *res.bottom]
    assert all(a >= b for a, b in zip(top, top[1:])) and all(a <= b for a, b in zip(bottom, bottom[1:]))
    strategy = QueryMethod.get(method)
    if not strategy.fused or res.family.startswith("zmean("):
        assert all(h.calibrated == h.score for h in res)
    if strategy.fused:
        members = index.ranking(str(behavior), method=method).members
        weights = np.array([m.weight for m in members])
        cosines = sum(w * brute_force(index.reader.vectors(m.family), m.psi).astype(np.float64)
                      for w, m in zip(weights, members)) / weights.sum()
    else:
        cosines = brute_force(index.reader.vectors(res.family), res.vector).astype(np.float64)
    np.testing.assert_allclose([h.cosine for h in res], cosines[[h.row for h in res]], rtol=1e-4, atol=1e-5)
