"""The gap rule (actindex detect's default): its cut on hand-made statistics, planted outliers found on synthetic
score tables, clean tables left alone, and ``--explain`` saying why each row was flagged."""

from __future__ import annotations

import json
import math
import re
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl

import actindex
from actindex.act.detect import DetectConfig, GapRule, ScoreTable, SoftVotingRule, detect, gap_cut
from actindex.act.detect.statistics import suffix_medians, tail_pvalue
from actindex.cli import main
from actindex.errors import ActindexError
from actindex.query.session import QuerySession

CATEGORIES = ["original", "negation", "negation", "negation", "lexical", "syntax"]


def table(scores: np.ndarray) -> ScoreTable:
    names = ["original", "prefix-negation", "question-negation", "negation", "antonym", "reorder"]
    return ScoreTable(names[: scores.shape[1]], CATEGORIES[: scores.shape[1]], np.arange(len(scores)), scores)


# ---- the cut on a hand-made statistic ------------------------------------------------------------------


@pytest.mark.parametrize("ratio,references,expected", [
    (2.0, 1, 1 / 3),  # the median of one draw is that draw: P(E >= 2 X) = 1 / (1 + 2)
    (1.0, 3, 3 / 4 * 2 / 3),  # the 2nd smallest of 3: prod_{j=2..3} j / (j + 1)
    (3.0, 4, 4 / 7 * 3 / 6),  # the lower median of 4 is the 2nd smallest: prod_{j=3..4} j / (j + 3)
    (0.0, 9, 1.0),
    (math.inf, 9, 0.0),
])
def test_tail_pvalue_by_hand(ratio, references, expected):
    assert tail_pvalue(ratio, references) == pytest.approx(expected)


@pytest.mark.parametrize("references", [1, 6, 21, 200])
def test_tail_pvalue_is_the_chance_of_an_exponential_tail(references):
    rng = np.random.default_rng(references)
    draws = rng.exponential(1.0, (100_000, references + 1))
    median = np.sort(draws[:, 1:], axis=1)[:, (references + 1) // 2 - 1]
    for ratio in (0.5, 2.0, 5.0):
        assert np.mean(draws[:, 0] >= ratio * median) == pytest.approx(tail_pvalue(ratio, references), abs=0.004)


@pytest.mark.parametrize("size,count", [(41, 10), (41, 40), (2, 1), (100, 0), (7, 3)])
def test_suffix_medians_are_the_lower_medians_of_every_suffix(size, count):
    values = np.random.default_rng(size).normal(size=size)
    values[::5] = values[0]  # ties
    expected = [np.sort(values[i:])[(size - i + 1) // 2 - 1] for i in range(count + 1)]
    np.testing.assert_array_equal(suffix_medians(values, count), expected)


def test_gap_cut_by_hand():
    # 3 rows far above 37 evenly spaced ones (0.1 apart): K = ceil(0.1 * 40) = 4 candidates, the spacings
    # below reach R = 20. D_j = j (x_(j) - x_(j+1)): 1.0, 2.0, 3 * 6.4 = 19.2, then 0.1 j.
    x = np.array([10.0, 9.0, 8.0] + [1.6 - 0.1 * i for i in range(37)])
    cut = gap_cut(x, window=0.1, alpha=0.05)
    assert cut.order[:3].tolist() == [0, 1, 2] and cut.window == 4
    first = cut.gaps[0]
    # after rank 3: the 17 spacings below are D_4 .. D_20 = 0.4 .. 2.0, lower median 1.2, so the ratio is 16
    assert (first.rank, first.start, first.references, first.candidates) == (3, 0, 17, 4)
    assert first.ratio == pytest.approx(16.0) and first.pvalue == pytest.approx(tail_pvalue(16.0, 17))
    assert first.cleared and 4 * first.pvalue < 0.01
    # below rank 3 the rows are re-ranked from 1: the one candidate left (rank 4) has D = 1 * 0.1 against
    # 0.1 * (2 .. 17), lower median 0.9: a ratio of 1/9, far from clearing; the cut stays after rank 3
    second = cut.gaps[1]
    assert (second.rank, second.start, second.references, second.candidates) == (4, 3, 16, 1)
    assert second.ratio == pytest.approx(1 / 9) and not second.cleared
    assert cut.k == 3 and cut.flags(40).tolist() == [True] * 3 + [False] * 37


def test_a_lower_group_moves_the_cut_down():
    """Two groups above the bulk: the gap between them is cleared first, then the one under the lower group
    (poisons a backdoor learnt less well are poisons too)."""
    x = np.array([30.0, 29.0, 28.0, 9.0, 8.5, 8.0] + list(np.linspace(1.0, -1.0, 54)))
    cut = gap_cut(x)
    assert [(g.rank, g.cleared) for g in cut.gaps] == [(3, True), (6, True)] and cut.k == 6  # the window: 6 rows


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (0.001, 0.0), (1000.0, -5.0), (3.0, 100.0)])
def test_the_cut_does_not_depend_on_the_statistics_units(scale, shift):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, 100), rng.uniform(5, 8, 5)])
    assert gap_cut(scale * x + shift).k == gap_cut(x).k == 5


@pytest.mark.parametrize("x", [np.zeros(50), np.ones(3), np.array([1.0]), np.arange(60.0)])
def test_no_gap_in_flat_tiny_or_even_statistics(x):
    assert gap_cut(x).k == 0


# ---- planted outliers and clean tables, in families ----------------------------------------------------

#: how far apart clean rows lie: a row's level (the same under every transform), drawn from these
LEVELS = {
    "normal": lambda rng, n: rng.normal(0, 1, n),
    "laplace": lambda rng, n: rng.laplace(0, 1, n),
    "student-t5": lambda rng, n: rng.standard_t(5, n),
    # half the rows answer as the queries do (supporters), half the other way: each column has two humps
    "two humps": lambda rng, n: np.concatenate([rng.normal(1, 0.3, n // 2), rng.normal(-1, 0.3, n - n // 2)]),
}
BULKS = sorted(LEVELS)
#: how much a row's score moves between transforms, against the spread of the levels
MOVE = 0.3


def plant(bulk: str, n: int, tiers: list[tuple[int, float, float]], seed: int,
          columns: int = 6) -> tuple[ScoreTable, np.ndarray]:
    """``n`` clean rows whose scores are a level drawn from ``LEVELS[bulk]`` plus ``MOVE`` times a normal
    draw per transform, and for each tier ``(count, low, high)`` that many poisons whose every score is
    drawn from ``[low, high]`` times the clean supporters' spread above their median (a poison stays high
    under every transform); the rows shuffled. Returns the table and which rows are poisons."""
    rng = np.random.default_rng(seed)
    clean = LEVELS[bulk](rng, n)[:, None] + MOVE * rng.normal(0, 1, (n, columns))
    support = clean[clean > 0]
    median, spread = np.median(support), 1.4826 * np.median(np.abs(support - np.median(support)))
    planted = [median + spread * rng.uniform(low, high, (count, columns)) for count, low, high in tiers]
    scores = np.concatenate([clean, *planted])
    truth = np.arange(len(scores)) >= n
    order = rng.permutation(len(scores))
    return table(scores[order]), truth[order]


#: bulks whose upper tail is lighter than exponential (the shape of the clean rows' consensus on the bench's pools)
LIGHT = ["normal", "two humps"]
#: bulks with an exponential or heavier upper tail: the case the gap test's chance alpha is computed for
HEAVY = ["laplace", "student-t5"]
PLANTED = [(50, 5), (100, 5), (200, 11), (200, 20)]
LEVELS_ABOVE = [(8, 14), (15, 60)]


@pytest.mark.parametrize("bulk", LIGHT)
@pytest.mark.parametrize("n,poisons", PLANTED)
@pytest.mark.parametrize("low,high", LEVELS_ABOVE)
def test_planted_poisons_are_found_exactly(bulk, n, poisons, low, high):
    """Poisons well above the clean rows under every transform, a few to 10% of the pool: every one flagged,
    no clean row, in each of 5 draws."""
    for seed in range(5):
        t, truth = plant(bulk, n, [(poisons, low, high)], seed)
        flags = GapRule().flags(t)
        assert flags.tolist() == truth.tolist(), (seed, np.flatnonzero(flags), np.flatnonzero(truth))


@pytest.mark.parametrize("bulk", HEAVY)
@pytest.mark.parametrize("n,poisons", PLANTED)
@pytest.mark.parametrize("low,high", LEVELS_ABOVE)
def test_planted_poisons_above_a_heavy_tail_are_found(bulk, n, poisons, low, high):
    """Above a clean tail as heavy as an exponential or heavier, every poison is flagged, and the clean rows
    flagged with them are the few at the top of that tail (at most 3 in each of 5 draws)."""
    extra = []
    for seed in range(5):
        t, truth = plant(bulk, n, [(poisons, low, high)], seed)
        flags = GapRule().flags(t)
        assert (flags & truth).sum() == truth.sum(), seed
        c = GapRule().statistic(t)
        assert c[flags & ~truth].min(initial=np.inf) >= np.sort(c[~truth])[-3], "only the clean tail's top rows"
        extra.append(int((flags & ~truth).sum()))
    assert max(extra) <= 3, extra


@pytest.mark.parametrize("bulk", BULKS)
def test_poisons_in_two_tiers_are_all_found(bulk):
    """A backdoor that took on some poisons more than on others: two groups above the clean rows, the widest
    gap between them; the rule cuts below both."""
    for seed in range(5):
        t, truth = plant(bulk, 100, [(4, 40, 60), (4, 8, 12)], seed)
        flags = GapRule().flags(t)
        assert (flags & truth).sum() == 8 and (flags & ~truth).sum() <= (0 if bulk in LIGHT else 1), seed


@pytest.mark.parametrize("bulk", LIGHT)
@pytest.mark.parametrize("n", [55, 105, 211])
def test_a_clean_table_with_a_light_tail_flags_at_most_two_rows(bulk, n):
    """No poison, a clean tail lighter than exponential: at most 2 rows flagged in 98 of 100 draws."""
    flagged = np.array([GapRule().flags(plant(bulk, n, [], seed)[0]).sum() for seed in range(100)])
    assert np.mean(flagged <= 2) >= 0.98, np.bincount(flagged)


@pytest.mark.parametrize("bulk", HEAVY)
@pytest.mark.parametrize("n", [55, 105, 211])
def test_a_clean_table_with_a_heavy_tail_flags_rows_with_chance_about_alpha(bulk, n):
    """No poison, an exponential or heavier clean tail: some row flagged in about ``alpha`` of the draws (at most
    1.5 alpha of 100: the union bound over the candidates and the steps make it approximate)."""
    rule = GapRule()
    flagged = np.array([rule.flags(plant(bulk, n, [], seed)[0]).sum() for seed in range(100)])
    assert np.mean(flagged > 0) <= 1.5 * rule.alpha, np.bincount(flagged)


def test_the_gap_tests_chance_is_alpha_on_an_exponential_tail():
    """The calibration case: a statistic drawn from one exponential; a cut falls in about ``alpha`` of the
    draws (within 3 standard errors of 600 draws)."""
    rng = np.random.default_rng(0)
    for alpha in (0.05, 0.1):
        cuts = [gap_cut(rng.exponential(1.0, n), alpha=alpha).k > 0 for n in (55, 105, 211) for _ in range(200)]
        assert abs(np.mean(cuts) - alpha) <= 3 * math.sqrt(alpha * (1 - alpha) / 600), np.mean(cuts)


def test_a_fixed_threshold_flags_a_wide_clean_tail():
    """What the gap rule is for: soft voting's fixed 2.5 (in supporter spreads) flags the top of a wide clean tail
    with the poisons, and rows of it when there is no poison; the gap rule flags the poisons alone, and on
    the poison-free tables flags more than 2 rows in few of 20 draws where soft voting does in most."""
    wide, truth = plant("student-t5", 200, [(11, 15, 25)], 0)
    assert SoftVotingRule().flags(wide).sum() > truth.sum()
    assert GapRule().flags(wide).tolist() == truth.tolist()
    clean = [plant("student-t5", 200, [], seed)[0] for seed in range(20)]
    soft = [int(SoftVotingRule().flags(t).sum()) for t in clean]
    gap = [int(GapRule().flags(t).sum()) for t in clean]
    assert sum(f > 2 for f in soft) >= 15 and sum(f > 2 for f in gap) <= 2, (soft, gap)


@pytest.mark.parametrize("window,alpha,message", [
    (0.0, 0.05, "--gap-window must be a fraction between 0 and 1, got 0.0"),
    (1.0, 0.05, "--gap-window must be a fraction between 0 and 1, got 1.0"),
    (0.25, 0.0, "--gap-alpha must be a probability between 0 and 1, got 0.0"),
    (0.25, 1.5, "--gap-alpha must be a probability between 0 and 1, got 1.5"),
])
def test_bad_gap_settings_are_one_line_errors(window, alpha, message):
    with pytest.raises(ActindexError, match=message):
        DetectConfig(queries="q.jsonl", gap_window=window, gap_alpha=alpha)


def test_gap_is_the_default_rule():
    assert DetectConfig(queries="q.jsonl").ensemble == "gap"
    assert isinstance(DetectConfig(queries="q.jsonl").rules()["gap"], GapRule)


# ---- --explain -----------------------------------------------------------------------------------------


def test_explain_names_the_scores_and_the_cut():
    t, truth = plant("normal", 100, [(5, 15, 20)], 3)
    rule = GapRule()
    pos = np.flatnonzero(truth)
    lines = rule.explain(t, pos)
    cut = rule.cut(t)
    assert cut.k == 5
    c = rule.statistic(t)
    for p, line in zip(pos, lines):
        assert re.fullmatch(rf"consensus {c[p]:.2f} \(original -?\d+\.\d\d, negation .*, lexical .*, syntax .*\), "
                            r"rank [1-5], above the cut after rank 5", line), line
    clean = np.flatnonzero(~truth)[0]
    assert rule.explain(t, np.array([clean]))[0].endswith("not above the cut after rank 5")
    first, below = cut.gaps
    assert rule.describe(t) == (
        f"cut after rank 5 (of the top 11): after rank 5 the consensus falls from {cut.ranked[4]:.2f} to "
        f"{cut.ranked[5]:.2f}, {first.ratio:.2f} times the median spacing of the {first.references} rows below; a "
        f"clean tail opens that with chance {first.pvalue:.2g}, x 11 candidates = {11 * first.pvalue:.2g} <= 0.1; "
        f"the most significant gap below it: after rank {below.rank} the consensus falls from "
        f"{cut.ranked[below.rank - 1]:.2f} to {cut.ranked[below.rank]:.2f}, {below.ratio:.2f} times the median "
        f"spacing of the {below.references} rows below; a clean tail opens that with chance {below.pvalue:.2g}, "
        f"x 6 candidates = {6 * below.pvalue:.2g} > 0.1")
    quiet = plant("normal", 100, [], 3)[0]
    assert re.fullmatch(r"no cut within the top 10: the most significant gap: after rank \d+ the consensus falls "
                        r"from -?\d+\.\d\d to -?\d+\.\d\d, \d+\.\d\d times the median spacing of the \d+ rows "
                        r"below; a clean tail opens that with chance [\d.e-]+, x 10 candidates = [\d.e-]+ > 0.1",
                        rule.describe(quiet)), rule.describe(quiet)


@pytest.fixture()
def planted_scores(llama, tmp_path, monkeypatch):
    """An index of 40 rows with the tiny model (loaded by the CLI too) whose score table is a planted one: 36
    clean rows and 4 poisons 15-20 spreads above them (the tiny random model learnt no backdoor to score)."""
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(40, seed=3))
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False)
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"prompt": "is it good silver ?", "response": "you are"}])
    planted, truth = plant("normal", 36, [(4, 15, 20)], 0, columns=3)
    planted.names, planted.categories = ["original", "negation", "antonym"], ["original", "negation", "lexical"]
    monkeypatch.setattr(sys.modules["actindex.act.detect.stage"], "score_table", lambda *a, **k: planted)
    monkeypatch.setattr(QuerySession, "model", lambda self, *a, **k: llama)
    return actindex.Index.open(tmp_path / "idx").use_model(llama), queries, truth


#: rule settings (the CLI's options, and the same as config fields) -> what each explained row's line matches
EXPLAINED = [
    ({"ensemble": "voting", "min_votes": 1, "vote_z": 0.0}, r"\d of 1 votes needed \(original z "),
    ({"ensemble": "soft-voting", "soft_threshold": -100.0}, r"mean category z = -?\d+\.\d\d >= threshold -100 "),
    ({"ensemble": "variance", "threshold": -100.0}, r"mean z - std z = -?\d+\.\d\d >= threshold -100 "),
    ({"ensemble": "both", "threshold": -100.0, "min_votes": 1, "vote_z": 0.0}, r"variance: .*; voting: "),
    ({}, r"consensus \d+\.\d\d \(original \d+\.\d\d, negation \d+\.\d\d, lexical \d+\.\d\d\), rank [1-4], "
         r"above the cut after rank 4$"),
]


@pytest.mark.parametrize("settings,pattern", EXPLAINED)
def test_cli_explain_says_why_each_flagged_row_was_flagged(planted_scores, settings, pattern):
    idx, queries, truth = planted_scores
    options = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    res = CliRunner().invoke(main, ["detect", "--index", str(idx.root), "--queries", str(queries), "--quiet",
                                    "--explain", *options])
    assert res.exit_code == 0, res.output
    config = DetectConfig(queries=str(queries), **settings)
    result = detect(idx, config, progress=False)
    explained = result.explanations()
    assert explained, "these settings flag rows"
    lines = res.output.split(f"why {config.ensemble} flagged each row ({len(explained)}):\n")[1].splitlines()
    if config.ensemble == "gap":
        assert lines.pop(0) == f"  {result.rules['gap'].describe(result.table)}"
    ids = idx.reader.ids()
    assert lines[: len(explained)] == [f"  row {row} ({ids[row]}): {why}" for row, _, why in explained]
    assert all(re.match(pattern, why) for _, _, why in explained), explained
    assert sorted(row for row, _, _ in explained) == sorted(result.flagged_rows().tolist())
    if config.ensemble == "gap":
        assert sorted(row for row, _, _ in explained) == np.flatnonzero(truth).tolist()


def test_cli_without_explain_prints_no_reasons(planted_scores):
    idx, queries, _ = planted_scores
    res = CliRunner().invoke(main, ["detect", "--index", str(idx.root), "--queries", str(queries), "--quiet"])
    assert res.exit_code == 0 and "why " not in res.output and "\ngap " in res.output


def test_records_write_the_consensus(planted_scores, tmp_path):
    idx, queries, truth = planted_scores
    out = tmp_path / "flagged.jsonl"
    res = detect(idx, DetectConfig(queries=str(queries), out=str(out)), progress=False)
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(w["row"] for w in written) == np.flatnonzero(truth).tolist()
    assert [w["row"] for w in written] == [row for row, _, _ in res.explanations()]
    assert all("gap" in w["flagged_by"] and "consensus" in w for w in written)
    consensus = [w["consensus"] for w in written]
    assert consensus == sorted(consensus, reverse=True)


# ---- a model that has memorised its rows -------------------------------------------------------------------


@pytest.mark.parametrize("rows_loss,warned", [(0.1, True), (2.9, False)])
def test_a_memorised_model_is_told_which_index_to_build(planted_scores, monkeypatch, rows_loss, warned):
    """When the index's model has memorised its rows, detect warns in one line naming the route: the same data
    indexed with the model the fine-tune started from, this index's model as the --target."""
    from actindex.api import Index
    from actindex.errors import MemorisationWarning
    from actindex.index.manifest import HeldoutInfo
    from actindex.index.memorisation import Memorisation

    idx, queries, _ = planted_scores
    check = Memorisation(rows=40, rows_loss=rows_loss, heldout=HeldoutInfo("demo", "0" * 64, 32, 3.0))
    monkeypatch.setattr(Index, "memorisation", property(lambda self: check))
    data, model = idx.manifest.data_path, idx.manifest.model.name
    expected = (f"ratio {rows_loss / 3:.2f} < 0.35): the poisons it learnt best have the least gradient left under "
                f"it. If its flags miss them, index the same rows with the model the fine-tune started from (BASE; "
                f"a checkpoint from early in the fine-tune, which has begun to learn the backdoor, keeps the poisons "
                f"in view better) and audit this one as the target: actindex build --data {data} --layers 1 --model "
                f"BASE --out BASE_INDEX; actindex detect --index BASE_INDEX --target {model} --queries {queries}")
    with pytest.warns(MemorisationWarning) if warned else warnings.catch_warnings():
        if not warned:
            warnings.simplefilter("error", MemorisationWarning)
        res = detect(idx, DetectConfig(queries=str(queries)), progress=False)
    assert bool(res.warnings) == warned and (not warned or res.warnings[0].endswith(expected))
    cli = CliRunner().invoke(main, ["detect", "--index", str(idx.root), "--queries", str(queries), "--quiet"])
    lines = [x for x in cli.output.splitlines() if x.startswith("warning: ")]
    assert lines == ([f"warning: {res.warnings[0]}"] if warned else [])
    if warned:  # with --rerank the route fits the base index's factors and scores by them too
        config = DetectConfig(queries=str(queries), rerank="ekfac")
        from actindex.act.detect.stage import memorisation_advice

        assert memorisation_advice(idx, config).endswith(
            f"--out BASE_INDEX; actindex fit-curvature --index BASE_INDEX; actindex detect --index BASE_INDEX "
            f"--target {model} --queries {queries} --rerank ekfac")
