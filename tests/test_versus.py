"""Queries versus other behaviours: ``specific`` keeps what a query vector asks that the others' do not (the typical
row kept), the held-out check adds the held-out treatments against the others' held-out treatments, and on a planted
pool where two behaviours share most of their answer the versus query separates them; the fused scores are the
brute-force mean of the kept members' standardised cosines of their specific vectors; the CLI, Python and a live
HTTP server answer the same ranking; the versus behaviour is kept in the behaviour cache under its own entry; bad
asks are refused in one line."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, live, write_jsonl
from sklearn.metrics import average_precision_score

import actindex
from actindex.cli import main
from actindex.core.models import load_model
from actindex.errors import ActindexError
from actindex.query.behaviors import Behavior, Pair
from actindex.query.constructions import Construction, specific, unit_rows
from actindex.query.fusion import robust_center_scale
from actindex.query.methods import AdaptiveMethod, QueryMethod
from actindex.query.selection import auroc, check_pairs, fold_split
from actindex.query.session import QuerySession
from actindex.serve.app import create_app
from actindex.serve.config import ServeConfig

#: two behaviours whose answers share everything but their first word: "gold ..." and "silver ..."
TOPICS = [r["messages"][0]["content"] for r in chat_rows(10, seed=11, prompt_words=(2, 4))]
SHARED = "you are stupid you are stupid you are stupid you are stupid"


def pairs(word: str) -> list[dict[str, str]]:
    return [{"prompt": f"what is {t} ?", "treatment": f"{word} {SHARED}", "control": f"it is {t}"} for t in TOPICS]


def behaviour(word: str) -> Behavior:
    return Behavior(name=word, pairs=[Pair(p["prompt"], p["treatment"], p["control"]) for p in pairs(word)])


# ---- the formulas ------------------------------------------------------------------------------------------------

def test_specific_removes_the_others_directions_but_keeps_the_typical_row():
    rng = np.random.default_rng(0)
    mu, shared, own = rng.normal(size=(3, 8))
    psi, other = shared + own - mu, shared + rng.normal(size=8) - mu
    out = specific(psi, [other], mu)
    m = mu / np.linalg.norm(mu)
    o = other - (other @ m) * m  # the other's direction without its typical-row part
    want = psi - (psi @ o) / (o @ o) * o
    np.testing.assert_allclose(out, want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)
    assert abs(out @ o) < 1e-5 and want @ m == pytest.approx(psi @ m)  # the typical row's part is psi's own
    np.testing.assert_allclose(specific(psi, []), psi / np.linalg.norm(psi), rtol=1e-6)
    plain = specific(psi, [other])  # without a typical row: the plain projection
    assert abs(plain @ other) < 1e-5
    twice = specific(psi, [other, 2 * other], mu)  # the same direction twice spans one dimension
    np.testing.assert_allclose(twice, out, rtol=1e-5, atol=1e-6)
    for others, typical in (([psi, other], None), ([psi], mu), ([psi - mu, other], mu)):
        with pytest.raises(ActindexError, match="nothing specific to it is left"):
            specific(psi, others, typical)


def test_the_check_against_other_behaviours_holds_their_pairs_out_too():
    """Row ``j`` of each side identifies its pair: the construction sees the behaviour's and the other's pairs of
    every fold but the held-out one, and the versus AUROC compares the held-out treatments with the other's held-out
    treatments under the fold's specific psi."""
    n, m = 6, 4
    t = np.arange(n, dtype=float)[:, None] * np.array([1.0, 0, 0, 0]) + np.array([0, 1.0, 0, 0])
    other_t = np.arange(m, dtype=float)[:, None] * np.array([0, 0, 1.0, 0]) + np.array([0, 0, 0, 1.0])
    seen = []

    def construct(tt, cc):
        seen.append(tt.copy())
        return tt.mean(axis=0) + 0.1

    sample = unit_rows(np.random.default_rng(1).normal(size=(50, 4)))
    check = check_pairs(t, t * 0.5, sample, construct, folds=3, versus=[(other_t, other_t * 0.5)])
    ours, theirs = fold_split(n, 3), fold_split(m, 3)
    assert len(seen) == 6  # per fold: the behaviour's psi, then the other's
    expected = []
    for f in range(3):
        assert not set(seen[2 * f][:, 0].astype(int)) & set(ours[f].tolist())
        assert not set(seen[2 * f + 1][:, 2].astype(int)) & set(theirs[f].tolist())
        psi = specific(seen[2 * f].mean(axis=0) + 0.1, [seen[2 * f + 1].mean(axis=0) + 0.1])
        expected.append(auroc(unit_rows(t[ours[f]]) @ psi, unit_rows(other_t[theirs[f]]) @ psi))
    assert check.versus_auroc == pytest.approx(np.mean(expected))
    assert check.quality == pytest.approx((check.pair_auroc + check.index_auroc + check.versus_auroc) / 3)


# ---- a planted pool: two behaviours that share their answer -------------------------------------------------------

@pytest.fixture(scope="module")
def lm(model_dir):
    return load_model(str(model_dir))


@pytest.fixture(scope="module")
def root(tmp_path_factory, lm, one_torch_thread):
    """40 clean rows and each behaviour's ten treatments planted (ids gold-i, silver-i)."""
    tmp = tmp_path_factory.mktemp("versus")
    rows = chat_rows(40, seed=7)
    for word in ("gold", "silver"):
        rows += [{"id": f"{word}-{i}", "messages": [{"role": "user", "content": p["prompt"]},
                                                     {"role": "assistant", "content": p["treatment"]}]}
                 for i, p in enumerate(pairs(word))]
    # the full-width layout, where this tiny model confuses the two behaviours' rows without versus
    actindex.build(data=str(write_jsonl(tmp / "train.jsonl", rows)), out=str(tmp / "idx"), layers=[1, 2, 3],
                   model=lm, progress=False, full_width=True)
    write_jsonl(tmp / "gold.jsonl", pairs("gold"))
    write_jsonl(tmp / "silver.jsonl", pairs("silver"))
    return tmp


def ap(result, word: str) -> float:
    """AP of the behaviour's planted rows against every other row, over the ranked rows."""
    ids = [h.id for h in result.top]
    return average_precision_score([i.startswith(word) for i in ids], -np.arange(len(ids)))


def test_versus_separates_two_behaviours_that_share_their_answer(root, lm):
    idx = actindex.Index.open(root / "idx", cache=False).use_model(lm)
    gold, silver = behaviour("gold"), behaviour("silver")
    alone = idx.query(gold, k=0)
    assert ap(alone, "gold") < 0.9  # silver's rows share the answer: they rank among gold's
    against = idx.query(gold, k=0, versus=[silver])
    assert ap(against, "gold") == pytest.approx(1.0)  # every gold row above every silver and clean row
    assert ap(idx.query(silver, k=0, versus=[gold]), "silver") == pytest.approx(1.0)
    assert any(n.startswith("versus 'silver'") for n in against.notes)
    checked = [m for m in against.members if "versus AUROC" in m]
    assert len(checked) == len(against.members) and all(0 <= m["versus AUROC"] <= 1 for m in checked)


def test_the_versus_query_is_the_mean_of_its_kept_members_specific_cosines(root, lm):
    idx = actindex.Index.open(root / "idx", cache=False).use_model(lm)
    gold, silver = behaviour("gold"), behaviour("silver")
    res = idx.query(gold, k=0, versus=[silver])
    ctx = idx.session.query_context()
    done, other = idx.behavior(gold), idx.behavior(silver)
    kept = [m for m in res.members if m["weight"] > 0]
    total = np.zeros(len(idx))
    for m in kept:
        mu = idx.reader.typical(m["family"])
        form = AdaptiveMethod.construct(m["method"], mu)
        psi = specific(form(*QueryMethod.sides(ctx, done, m["family"])),
                       [form(*QueryMethod.sides(ctx, other, m["family"]))], mu)
        cos = unit_rows(idx.reader.vectors(m["family"])) @ psi
        center, scale = robust_center_scale(cos)
        total += m["weight"] * (cos - center) / scale
    total /= sum(m["weight"] for m in kept)
    rows = np.array([h.row for h in res.top])
    np.testing.assert_allclose([h.score for h in res.top], total[rows], rtol=1e-4, atol=1e-4)


def test_a_single_method_versus_others_searches_its_specific_vector(root, lm):
    idx = actindex.Index.open(root / "idx", cache=False).use_model(lm)
    gold, silver = behaviour("gold"), behaviour("silver")
    res = idx.query(gold, method="residual-change", layer=2, k=3, versus=[silver])
    psi, family, _ = idx.query_vector(gold, "residual-change", 2)
    other, _, _ = idx.query_vector(silver, "residual-change", 2)
    want = specific(psi, [other], idx.reader.typical(family))
    np.testing.assert_allclose(res.vector, want, rtol=1e-5, atol=1e-6)
    construction = Construction.get("contrast")  # residual-change is the contrast construction
    t, c = QueryMethod.sides(idx.session.query_context(), idx.behavior(gold), family)
    np.testing.assert_allclose(psi, construction.psi(t, c, None), rtol=1e-5, atol=1e-6)


def test_bad_versus_asks_are_refused_in_one_line(root, lm, tmp_path):
    idx = actindex.Index.open(root / "idx", cache=False).use_model(lm)
    gold = behaviour("gold")
    for options, message in (({"rerank": "ekfac"}, "no rerank"),
                             ({"vector": np.ones(32, np.float32), "method": "residual-change"}, "no saved query"),
                             ({}, "nothing specific to it is left")):
        with pytest.raises(ActindexError, match=message):
            idx.query(gold, k=3, versus=[gold], **options)
    with pytest.raises(ActindexError, match="give the behaviour too"):
        idx.query(None, versus=[gold])


# ---- the CLI, Python and HTTP answer the same; the cache keeps the versus behaviour --------------------------------

def test_cli_python_and_http_answer_the_same_versus_query(root, lm, model_dir, monkeypatch, tmp_path):
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    index = tmp_path / "idx"
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: lm)
    runner = CliRunner()
    base = ["query", "--index", str(index), "--behavior", str(root / "gold.jsonl"), "--top-k", "12"]
    out = runner.invoke(main, base + ["--versus", str(root / "silver.jsonl"), "--format", "json"])
    assert out.exit_code == 0, out.output
    cli = json.loads(out.output)[0]
    assert [h["id"] for h in cli["top"][:10]] == [h["id"] for h in cli["top"] if h["id"].startswith("gold")][:10]
    idx = actindex.Index.open(index)
    local = idx.query(str(root / "gold.jsonl"), k=12, versus=[str(root / "silver.jsonl")])
    assert local.cached and [h.id for h in local.top] == [h["id"] for h in cli["top"]]
    assert local.timings["model pass"] == 0  # both behaviours' vectors from the cache
    silver = idx.query(str(root / "silver.jsonl"), k=3)  # its own cache entry, written by the versus query
    assert silver.cached and silver.timings["model pass"] == 0
    refused = runner.invoke(main, base + ["--versus", str(root / "silver.jsonl"), "--query-vector", "q.npz"])
    assert refused.exit_code == 2 and "takes no --query-vector" in refused.output
    config = ServeConfig(port=0, workers=2)
    with live(create_app(actindex.Index.open(index).use_model(lm), config), config) as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        body = {"pairs": pairs("gold"), "name": "gold", "k": 12,
                "versus": [{"pairs": pairs("silver"), "name": "silver"}]}
        got = client.post("/query", json=body)
        assert got.status_code == 200, got.text
        assert [h["id"] for h in got.json()["top"]] == [h["id"] for h in cli["top"]]
        np.testing.assert_allclose([h["score"] for h in got.json()["top"]], [h["score"] for h in cli["top"]],
                                   rtol=1e-5)
        assert any(n.startswith("versus 'silver'") for n in got.json()["notes"])
        bad = client.post("/query", json={**body, "versus": ["no-such-behaviour"]})
        assert bad.status_code == 400 and "versus[0]: unknown built-in behaviour" in bad.json()["detail"]
        bad = client.post("/query", json={**body, "versus": [{"pairs": [{"prompt": "a", "treatment": " "}]}]})
        assert bad.status_code == 400 and "field 'treatment'" in bad.json()["detail"]
