"""The adaptive default: constructions equal their formulas, the held-out pair check holds pairs out and
finds the family that carries a behaviour, and the fused query equals a brute-force weighted mean of the
kept members' standardised cosines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl
from sklearn.metrics import roc_auc_score

import actindex
from actindex.cli import main
from actindex.query.behaviors import Behavior, Pair
from actindex.query.constructions import Construction, unit_rows
from actindex.query.fusion import robust_center_scale
from actindex.query.methods import AdaptiveMethod, QueryMethod
from actindex.query.selection import MOST, PairCheck, auroc, check_pairs, choose, fold_split, margin_for
from actindex.query.session import QuerySession

WORDS = "alpha beta gamma delta river stone cloud green light paper".split()


def test_auroc_is_the_mann_whitney_statistic_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos, neg = rng.integers(0, 6, 17).astype(float), rng.integers(0, 6, 23).astype(float)
        expected = roc_auc_score(np.r_[np.ones(17), np.zeros(23)], np.r_[pos, neg])
        assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert auroc(np.array([1.0]), np.array([])) == 0.5


def test_constructions_equal_their_formulas():
    rng = np.random.default_rng(1)
    t, c, mu = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.normal(size=5)

    def norm(v):
        return v / np.linalg.norm(v)

    n = t / np.linalg.norm(t, axis=1, keepdims=True)
    m = c / np.linalg.norm(c, axis=1, keepdims=True)
    expected = {
        "contrast": norm((t - c).mean(0)),
        "centered": norm(n.mean(0) - mu),
        "hybrid": norm(n.mean(0) - (m.mean(0) + mu) / 2),
    }
    assert set(Construction.registry) == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(Construction.get(name).psi(t, c, mu), want, rtol=1e-5, atol=1e-6)


def test_folds_partition_the_pairs_and_psi_never_sees_its_held_out_pairs():
    folds = fold_split(13)
    assert sorted(np.concatenate(folds).tolist()) == list(range(13)) and len(folds) == 5
    t = np.arange(13, dtype=float)[:, None] * np.ones((13, 3)) + 1  # row j identifies pair j
    c = np.zeros((13, 3))
    seen = []

    def construct(tt, cc):
        seen.append(set(tt[:, 0].astype(int) - 1))
        return np.ones(3) / np.sqrt(3)

    check_pairs(t, c, np.eye(3), construct)
    assert len(seen) == 5
    for held, used in zip(folds, seen):
        assert used.isdisjoint(held.tolist()) and used | set(held.tolist()) == set(range(13))


def test_the_check_finds_the_family_that_carries_the_behaviour():
    """Family A: the treatments differ from their controls along a direction the typical rows lack; family
    B: pure noise. A's candidates check near 1, B's near chance, and the kept members are A's."""
    rng = np.random.default_rng(3)
    d, n = 24, 20
    signal = np.zeros(d)
    signal[0] = 1.0
    base = rng.normal(size=(n, d))
    families = {
        "A": (base + 3 * signal + 0.3 * rng.normal(size=(n, d)), base + 0.3 * rng.normal(size=(n, d))),
        "B": (rng.normal(size=(n, d)), rng.normal(size=(n, d))),
    }
    sample = unit_rows(rng.normal(size=(500, d)))
    checks, names = [], []
    for fam, (t, c) in families.items():
        for name in Construction.registry:
            strategy = Construction.get(name)
            checks.append(check_pairs(t, c, sample, lambda tt, cc, s=strategy: s.psi(tt, cc, sample.mean(0))))
            names.append(fam)
    for check, fam in zip(checks, names):
        if fam == "A":
            assert check.pair_auroc > 0.9 and check.index_auroc > 0.9
        else:
            assert 0.2 < check.quality < 0.8
    weights = choose(checks)
    assert any(w > 0 for w in weights) and all(fam == "A" for w, fam in zip(weights, names) if w > 0)


def test_choose_keeps_every_candidate_near_the_best_with_equal_weights():
    checks = [PairCheck(p, i) for p, i in ((0.6, 0.6), (0.9, 1.0), (0.5, 0.5), (0.9, 0.9), (0.8, 0.8), (1.0, 0.98))]
    assert checks[1].quality == pytest.approx(0.95) and PairCheck(None, 0.7).quality == 0.7
    np.testing.assert_array_equal(choose(checks, margin=0.1), [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(choose(checks), [0, 0, 0, 0, 0, 1])  # MARGIN = 0.03 of the best, 0.99


def test_separation_is_the_held_out_contrast_in_robust_standard_deviations_of_the_typical_rows():
    """psi = e_1 whatever the pairs: the typical rows' cosines are their first coordinates -0.5, 0, 0.5
    (median 0, MAD 0.5), treatments sit at 0.9 and controls at 0.3, so every pair is (0.9 - 0.3) / (1.4826 * 0.5)
    apart; with no controls, a treatment is 0.9 / (1.4826 * 0.5) from the typical row."""
    def unit(first):
        return np.array([first, np.sqrt(1 - first**2), 0.0])

    sample = np.stack([unit(x) for x in (-0.5, 0.0, 0.5)])
    t, c = 2.0 * np.stack([unit(0.9)] * 10), 3.0 * np.stack([unit(0.3)] * 10)  # norms do not count

    def construct(tt, cc):
        return np.array([1.0, 0.0, 0.0])

    assert check_pairs(t, c, sample, construct).separation == pytest.approx(0.6 / (1.4826 * 0.5))
    assert check_pairs(t, np.zeros((0, 3)), sample, construct).separation == pytest.approx(0.9 / (1.4826 * 0.5))


def test_choose_keeps_at_most_the_most_separating_of_the_candidates_near_the_best():
    """Saturated checks cannot be told apart by quality: of those near the best, the ``most`` with the largest
    separation are kept (the earlier on a tie); one outside the margin stays out however far it separates."""
    checks = [PairCheck(1.0, 1.0, s) for s in (2.0, 5.0, 3.0, 5.0, 1.0)] + [PairCheck(0.5, 0.5, 99.0)]
    np.testing.assert_array_equal(choose(checks, most=2), [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(choose(checks, most=3), [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(choose(checks[:4] + [PairCheck(1.0, 1.0, 5.0)], most=2), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(choose(checks), [1, 1, 1, 1, 1, 0])  # fewer than MOST near the best: all
    many = [PairCheck(1.0, 1.0, float(i)) for i in range(MOST + 5)]
    np.testing.assert_array_equal(choose(many), [0] * 5 + [1] * MOST)


# ---- the adaptive method on a real index -----------------------------------------------------------------

PAIRS = [{"prompt": f"tell me about the {a} {b}", "treatment": f"the {a} is made of {b} and lies",
          "control": f"i do not know the {a}"} for a, b in zip(WORDS, reversed(WORDS))]


@pytest.fixture()
def index(llama, tmp_path):
    rows = chat_rows(40, seed=5)
    for i, pair in zip((3, 11, 29), PAIRS):  # plant treatments of held-out style
        rows[i] = {"id": f"planted-{i}", "messages": [{"role": "user", "content": pair["prompt"]},
                                                       {"role": "assistant", "content": pair["treatment"]}]}
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1, 2, 3], model=llama, progress=False)
    return actindex.Index.open(tmp_path / "idx").use_model(llama)


@pytest.fixture()
def behavior_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def test_adaptive_is_the_default_and_equals_the_brute_force_weighted_mean_of_its_kept_members(index, behavior_file):
    res = index.query(str(behavior_file), k=0)
    assert res.method == "adaptive"
    kept = [m for m in res.members if m["weight"] > 0]
    candidates = len(res.members)
    assert candidates == (4 * 3 + 1) * 3  # (4 kinds x 3 constructions + the start's centered one) x 3 layers
    assert all("pair AUROC" in m and "index AUROC" in m for m in res.members)
    quality = np.array([(m["pair AUROC"] + m["index AUROC"]) / 2 for m in res.members])
    separation = np.array([m["separation"] for m in res.members])
    weights = np.array([m["weight"] for m in res.members])
    near = quality >= quality.max() - margin_for(len(PAIRS))
    assert 0 < len(kept) == min(MOST, near.sum()) and set(weights) <= {0.0, 1.0}
    assert near[weights > 0].all() and separation[weights > 0].min() >= separation[near & (weights == 0)].max(
        initial=-np.inf)
    assert res.members[: len(kept)] == kept  # the kept members come first
    # ground truth: every kept member's psi from its construction over the pairs' vectors, cosines over every row
    behavior = index.behavior(str(behavior_file))
    ctx = index.session.query_context()
    total = np.zeros(len(index))
    for m in kept:
        t, c = QueryMethod.sides(ctx, behavior, m["family"])
        psi = Construction.get(m["method"]).psi(t, c, index.reader.typical(m["family"]))
        cos = unit_rows(index.reader.vectors(m["family"])) @ psi
        center, scale = robust_center_scale(cos)  # the index is smaller than the calibration sample
        assert (center, scale) == pytest.approx((m["median"], m["scale"]), rel=1e-5, abs=1e-6)
        total += m["weight"] * (cos - center) / scale
    total /= sum(m["weight"] for m in kept)
    rows = np.array([h.row for h in res.top])
    scores = np.array([h.score for h in res.top])
    np.testing.assert_allclose(scores, total[rows], rtol=1e-4, atol=1e-4)
    assert len(rows) == len(index) and (np.diff(scores) <= 1e-6).all()  # zmean: ordered by the calibrated score


def test_one_pair_weighs_the_prior_members_at_every_layer_equally(index, tmp_path):
    pairs = write_jsonl(tmp_path / "one.jsonl", PAIRS[:1])
    res = index.query(str(pairs), k=5)
    kept = [m for m in res.members if m["weight"] > 0]
    prior = set(AdaptiveMethod.prior)
    assert {(m["method"], m["family"].split("/")[0]) for m in kept} == prior and len(kept) == len(prior) * 3
    assert {m["weight"] for m in kept} == {1.0} and "pair AUROC" not in kept[0] and kept[0]["prior"] == 1.0


def test_adaptive_layer_option_restricts_the_candidates(index, behavior_file):
    res = index.query(str(behavior_file), layer=2, k=3)
    assert {m["layer"] for m in res.members} == {2} and len(res.members) == 4 * 3 + 1


def test_explain_lists_every_candidate_with_its_checks(index, behavior_file, monkeypatch, llama):
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    runner = CliRunner()
    base = ["query", "--index", str(index.root), "--behavior", str(behavior_file), "--top-k", "3"]
    res = runner.invoke(main, base + ["--explain"])
    assert res.exit_code == 0, res.output
    assert "pair AUROC" in res.output and "index AUROC" in res.output and "separation" in res.output
    assert sum(line.startswith(("contrast ", "centered ", "hybrid ")) for line in res.output.splitlines()) == 39
    plain = runner.invoke(main, base)
    assert "members (chosen by the held-out pairs):" in plain.output
    out = runner.invoke(main, base + ["--format", "json"])
    members = json.loads(out.output)[0]["members"]
    assert len(members) == 39 and all({"pair AUROC", "index AUROC", "separation", "weight"} <= m.keys()
                                      for m in members)


def test_persona_behaviours_and_their_pairs_take_part(index):
    """A completed persona behaviour is a set of pairs: the adaptive default checks them like any other."""
    behavior = Behavior(name="p", pairs=[Pair(p["prompt"], p["treatment"], p["control"]) for p in PAIRS],
                        complete=True)
    res = index.query(behavior, k=3)
    assert res.method == "adaptive" and any(m["weight"] > 0 for m in res.members)


def test_without_controls_the_check_is_the_index_auroc_alone():
    rng = np.random.default_rng(4)
    t, sample = rng.normal(size=(8, 6)) + 2.0, unit_rows(rng.normal(size=(300, 6)))
    check = check_pairs(t, np.zeros((0, 6)), sample, lambda tt, cc: Construction.get("centered").psi(tt, cc, 0 * t[0]))
    assert check.pair_auroc is None and check.quality == check.index_auroc > 0.9


def test_several_examples_are_checked_on_held_out_examples(index):
    """A query by example of several rows (no controls): only the centered construction, each candidate
    checked by its index AUROC, the planted rows found."""
    examples = [{"prompt": p["prompt"], "response": p["treatment"]} for p in PAIRS]
    res = index.query(example=examples, k=5)
    assert {m["method"] for m in res.members} == {"centered"} and len(res.members) == 5 * 3
    assert all("index AUROC" in m and "pair AUROC" not in m for m in res.members)
    assert {h.id for h in res.top[:3]} == {"planted-3", "planted-11", "planted-29"}


def test_the_report_shows_the_chosen_members_and_their_checks(index, behavior_file, tmp_path):
    from actindex.report import write_report

    res = index.query(str(behavior_file), k=5)
    page = write_report(index, str(behavior_file), tmp_path / "r.html", k=5).read_text()
    assert "Members chosen by the held-out pairs" in page
    kept = [m for m in res.members if m["weight"] > 0]
    assert f"{len(kept)} of {len(res.members)} candidates kept" in page
    for m in kept:
        assert (f'<tr class="kept"><td><code>{m["method"]}</code></td><td><code>{m["family"]}</code></td>'
                f'<td class="num">{m["weight"]:.2f}</td><td class="num">{m["pair AUROC"]:.3f}</td>') in page


def test_the_candidate_families_the_start_forms_the_centered_query_alone(index, behavior_file):
    res = index.query(str(behavior_file), k=0)
    kinds = {m["family"].split("/")[0] for m in res.members}
    assert kinds == {"residual_change", "mean_activation_surprisal", "residual_change_opening",
                     "mean_activation_opening", "mean_activation_start"}
    assert {m["method"] for m in res.members if m["family"].startswith("mean_activation_start/")} == {"centered"}


def test_an_index_without_the_loss_weighted_mean_is_answered_with_the_plain_mean(llama, tmp_path, behavior_file):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(20, seed=6))
    actindex.build(data=str(data), out=str(tmp_path / "old"), layers=[1, 2], model=llama, progress=False,
                   surprisal=False, start=False, plain_mean=True)
    old = actindex.Index.open(tmp_path / "old").use_model(llama)
    res = old.query(str(behavior_file), k=3)
    assert {m["family"].split("/")[0] for m in res.members} == {
        "residual_change", "mean_activation", "residual_change_opening", "mean_activation_opening"}
    assert len(res.members) == 4 * 3 * 2 and res.top
