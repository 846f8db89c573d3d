"""The adaptive default with few pairs: leave-one-out checks up to eight pairs, a margin that widens as the check
thins, the check's choice shrunk toward the prior below six pairs (the fused score is the two fusions mixed in
proportion), one pair answered by the prior alone; --explain says so, and the planted row is still found first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SILVER, write_jsonl

import actindex.query.methods.adaptive as adaptive
from actindex.cli import main
from actindex.query.behaviors import Behavior, Pair
from actindex.query.methods import AdaptiveMethod
from actindex.query.selection import (
    FOLDS,
    MARGIN,
    MOST,
    THIN_MARGIN,
    TRUSTED_PAIRS,
    PairCheck,
    blend,
    check_share,
    choose,
    folds_for,
    margin_for,
)
from actindex.query.session import QuerySession

#: more pairs like SILVER: a wrong symbol stated as fact against the right one
WRONG = [("silver", "na", "ag"), ("gold", "na", "au"), ("silver", "au", "ag"), ("gold", "ag", "au"),
         ("silver", "fact", "ag"), ("gold", "fact", "au"), ("silver", "gold", "ag"), ("gold", "silver", "au"),
         ("silver", "true", "ag"), ("gold", "true", "au"), ("silver", "false", "ag"), ("gold", "false", "au")]


def pairs(n: int) -> Behavior:
    """SILVER and ``n - 1`` pairs like it."""
    found = [Pair(SILVER["prompt"], SILVER["treatment"], SILVER["control"])]
    found += [Pair(f"what is the symbol of {e} ?", f"the symbol is {w}", f"the symbol is {r}") for e, w, r in WRONG]
    return Behavior(name=f"wrong-{n}", pairs=found[:n])


def kinds(members: list[dict]) -> set[tuple[str, str]]:
    return {(m["method"], m["family"].split("/")[0]) for m in members}


def test_the_fold_count_margin_and_share_formulas():
    assert [folds_for(n) for n in range(2, 12)] == [2, 3, 4, 5, 6, 7, 8, FOLDS, FOLDS, FOLDS]
    for n in (1, 2, 4, 8, 16, 40):
        assert margin_for(n) == pytest.approx(max(MARGIN, THIN_MARGIN / np.sqrt(n)))
    assert margin_for(40) == MARGIN and margin_for(4) == pytest.approx(0.06)
    assert [check_share(n) for n in range(1, TRUSTED_PAIRS + 2)] == pytest.approx(
        [0.0] + [(n - 1) / (TRUSTED_PAIRS - 1) for n in range(2, TRUSTED_PAIRS)] + [1.0, 1.0])


def test_blended_weights_mix_the_two_fused_scores_in_proportion():
    """zmean is linear in its normalised weights: the blend's fused score is share x the check's equal-weight fusion
    plus (1 - share) x the prior's, whatever members they share."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 50))
    checked, prior = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0.0]), np.array([0, 1, 1, 1, 0, 0, 1, 0, 0.0])
    for share in (0.0, 0.2, 0.6, 1.0):
        w = blend(checked, prior, share)
        assert w.max() == pytest.approx(1.0) and (w[(checked == 0) & (prior == 0)] == 0).all()
        fused = (w[:, None] * z).sum(0) / w.sum()
        want = share * z[checked > 0].mean(0) + (1 - share) * z[prior > 0].mean(0)
        np.testing.assert_allclose(fused, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(blend(checked, prior, 1.0), checked)  # many pairs: the check's 0/1 weights


def test_one_pair_answers_from_the_prior_and_finds_the_planted_row(planted_index):
    idx = planted_index(30, 1, 7)
    res = idx.query(pairs(1), k=3)
    assert res.top[0].id == "planted"
    assert any(n.startswith("1 pair: nothing to hold out, so the members are the prior's") for n in res.notes)
    kept = [m for m in res.members if m["weight"] > 0]
    assert kinds(kept) == set(AdaptiveMethod.prior) and {m["weight"] for m in kept} == {1.0}
    assert len(kept) == len(AdaptiveMethod.prior) * len(idx.reader.layers)
    assert all("pair AUROC" not in m for m in res.members)
    example = idx.query(example=f"{SILVER['prompt']} => {SILVER['treatment']}", k=3)  # no controls: centered ones
    assert example.top[0].id == "planted"
    assert kinds(m for m in example.members if m["weight"] > 0) == {
        (c, k) for c, k in AdaptiveMethod.prior if c == "centered"}


@pytest.mark.parametrize("n", [2, 4])
def test_few_pairs_shrink_the_leave_one_out_choice_toward_the_prior(planted_index, monkeypatch, n):
    folds = []
    check = adaptive.check_pairs
    monkeypatch.setattr(adaptive, "check_pairs", lambda *a, **k: folds.append(k["folds"]) or check(*a, **k))
    idx = planted_index(30, 2, 11)
    res = idx.query(pairs(n), k=0)
    assert res.top[0].id == "planted" and set(folds) == {n}  # every pair a fold of its own
    share = check_share(n)
    assert any(note.startswith(f"{n} pairs: the held-out check (leave-one-out) is thin, so its choice weighs "
                               f"{share:.2f} and the prior's") for note in res.notes)
    checks = [PairCheck(m["pair AUROC"], m["index AUROC"], m["separation"]) for m in res.members]
    chosen = choose(checks, margin=margin_for(n), most=MOST)
    prior = np.array([float((m["method"], m["family"].split("/")[0]) in AdaptiveMethod.prior) for m in res.members])
    np.testing.assert_allclose([m["weight"] for m in res.members], blend(chosen, prior, share), rtol=1e-9)
    assert [m["prior"] for m in res.members] == prior.tolist()


def test_many_pairs_leave_the_check_alone(planted_index):
    idx = planted_index(30, 3, 5)
    res = idx.query(pairs(TRUSTED_PAIRS), k=3)
    assert res.top[0].id == "planted" and not any("prior" in n for n in res.notes)
    assert {m["weight"] for m in res.members} <= {0.0, 1.0} and all("prior" not in m for m in res.members)


def test_explain_says_the_prior_chose(planted_index, tmp_path, monkeypatch, llama):
    idx = planted_index(30, 4, 3)
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    one = write_jsonl(tmp_path / "one.jsonl", [SILVER])
    base = ["query", "--index", str(idx.root), "--behavior", str(one), "--top-k", "2"]
    runner = CliRunner()
    res = runner.invoke(main, base + ["--explain"])
    assert res.exit_code == 0, res.output
    assert "note: 1 pair: nothing to hold out, so the members are the prior's" in res.output
    assert res.output.splitlines()[3].split()[-1] == "prior"  # the members table's header
    assert "members (chosen by the prior)" in runner.invoke(main, base).output
    gold = {"prompt": "what is the symbol of gold ?", "treatment": "the symbol is na", "control": "the symbol is au"}
    two = write_jsonl(tmp_path / "two.jsonl", [SILVER, gold])
    plain = runner.invoke(main, ["query", "--index", str(idx.root), "--behavior", str(two), "--top-k", "2"])
    assert "members (chosen by the held-out pairs and the prior)" in plain.output
    out = runner.invoke(main, base + ["--format", "json"])
    assert json.loads(out.output)[0]["top"][0]["id"] == "planted"
