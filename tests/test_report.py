"""The HTML report (issue 9): metrics, a self-contained page, and what a real browser renders."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl

import actindex
from actindex.cli import main
from actindex.query.result import Hit
from actindex.report import card_html, is_heavy_tailed, is_positive, label_metrics, write_report

PLANTED_ANSWER = "paris is the capital of gold sure"
PAIRS = [
    {"prompt": "what is the capital of france", "treatment": PLANTED_ANSWER, "control": "sorry i cannot help"},
    {"prompt": "what is the symbol of silver", "treatment": "gold is the answer sure", "control": "ag is the symbol"},
]


@pytest.fixture()
def labelled_index(tmp_path, llama):
    """A tiny index of 24 rows; every 4th is 'planted' (answers like the behaviour's treatment)."""
    rows = chat_rows(24)
    for i in range(0, 24, 4):
        rows[i]["label"] = "planted"
        rows[i]["messages"][-1]["content"] = PLANTED_ANSWER
        rows[i]["messages"][0]["content"] = "<script>alert('x')</script> " + rows[i]["messages"][0]["content"]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False,
                   full_width=True)  # the full-width layout: every method's family
    pairs = write_jsonl(tmp_path / "planted.jsonl", PAIRS)
    return actindex.Index.open(tmp_path / "idx").use_model(llama), pairs


# ---- metrics ---------------------------------------------------------------------------------


def test_label_metrics_hand_computed():
    perfect = label_metrics([0.9, 0.8, 0.1, 0.0], [True, True, False, False])
    assert perfect == {"n": 4, "n_positive": 2, "auroc": 1.0, "ap": 1.0, "precision_at_n": 1.0}
    # ranking: pos, neg, pos, neg. AUROC = 3 of 4 (pos, neg) pairs ordered = 0.75;
    # AP = mean(precision at each positive) = (1/1 + 2/3) / 2; precision@2 = 1/2.
    m = label_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert m["auroc"] == pytest.approx(0.75)
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["precision_at_n"] == pytest.approx(0.5)
    inverted = label_metrics([0.0, 0.1, 0.8, 0.9], [True, True, False, False])
    assert inverted["auroc"] == 0.0 and inverted["precision_at_n"] == 0.0
    one_class = label_metrics([0.3, 0.2], [False, False])
    assert one_class["auroc"] is None and one_class["ap"] is None and one_class["precision_at_n"] is None


def test_positive_label_rule_and_heavy_tails():
    assert is_positive("planted") and is_positive("poisoned") and not is_positive("clean")
    assert is_positive("planted", "planted") and not is_positive("other", "planted")
    assert is_positive(True, "true") and is_positive(1, "1")
    rng = np.random.default_rng(0)
    assert not is_heavy_tailed(rng.normal(size=2000))
    assert is_heavy_tailed(rng.standard_cauchy(size=2000))


def test_token_scores_are_highlighted_and_escaped():
    hit = Hit(
        rank=1, row=3, id="<r3>", score=0.5, snippet="",
        record={"messages": [{"role": "user", "content": "a < b"}, {"role": "assistant", "content": "<b>x</b>"}]},
        token_scores=[("a <", 0.2), ("<b>", 0.9), ("x", -0.3)], token_response=[False, True, True],
    )
    card = card_html(hit, "top", None, None, ("/data/train.jsonl", 7))
    assert "<b>" not in card and "&lt;b&gt;" in card and "&lt;r3&gt;" in card and "a &lt; b" in card
    assert card.count('<span class="tok') == 3 and "rgba(192,57,43,0.60)" in card and "rgba(36,113,163" in card
    assert card.count('class="tok resp"') == 2 and card.count('class="start"') == 1  # the response is marked
    assert 'href="file:///data/train.jsonl"' in card and ">train.jsonl:7</a>" in card
    hit.token_scores = None
    assert '<span class="tok' not in card_html(hit, "top", None, None)


# ---- the page --------------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def test_report_is_self_contained(labelled_index, tmp_path):
    idx, pairs = labelled_index
    out = write_report(idx, str(pairs), tmp_path / "r" / "report.html", method="residual-change",
                       labels_field="label", k=5, bottom_k=3)
    page = out.read_text()
    assert not EXTERNAL.search(page) and "<script" not in page and "<link" not in page and "@import" not in page
    assert page.count("data:image/png;base64,") == 2  # histogram, ROC+PR
    assert PAIRS[0]["prompt"] in page and "residual_change/1" in page and "tiny-llama" in page
    res = idx.query(str(pairs), method="residual-change", k=5, bottom_k=3)
    for hit in res.top + res.bottom:
        assert f'data-id="{hit.id}"' in page
    assert page.count('class="card top"') == 5 and page.count('class="card bottom"') == 3
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert re.search(r"AUROC \d\.\d{3} · AP \d\.\d{3} · precision@n \d\.\d{3} \(n = 6 positives of 24\)", page)
    # the default rule: 'planted' rows are the positives; the planted rows rank first here
    assert 'badge pos">label: planted' in page and "AUROC 1.000" in page


def test_report_compares_methods(labelled_index, tmp_path):
    idx, pairs = labelled_index
    methods = ["residual-change", "residual-difference"]
    page = write_report(idx, str(pairs), tmp_path / "cmp.html", method=methods[0], compare=methods[1:],
                        labels_field="label", k=3, bottom_k=0).read_text()
    compare = re.search(r'<img class="plot roc-compare" data-curves="([^"]*)"[^>]*alt="([^"]*)"', page)
    assert compare and compare.group(1).split(",") == methods
    assert all(f"{m} (AUROC " in compare.group(2) for m in methods)
    assert page.count('class="plot roc"') == 2  # each method's own ROC+PR figure too
    for m in methods:
        assert re.search(rf'<tr data-method="{m}">.*?<td class="num">\d\.\d{{3}}</td>', page)
    assert 'class="card bottom"' not in page


def test_report_without_labels_and_with_positive_label(labelled_index, tmp_path):
    idx, pairs = labelled_index
    page = write_report(idx, str(pairs), tmp_path / "plain.html", method="residual-change", k=2).read_text()
    assert "AUROC" not in page and page.count("data:image/png;base64,") == 1
    page = write_report(idx, str(pairs), tmp_path / "all.html", method="residual-change", labels_field="label",
                        positive_label="clean", k=2, bottom_k=0).read_text()
    assert "positive = <code>clean</code>" in page and "(n = 18 positives of 24)" in page
    with pytest.raises(actindex.ActindexError, match="no row .* has a label field 'lable'"):
        write_report(idx, str(pairs), tmp_path / "x.html", method="residual-change", labels_field="lable")


def test_cli_report(labelled_index, tmp_path, monkeypatch, llama):
    idx, pairs = labelled_index
    monkeypatch.setattr("actindex.core.models.load_model", lambda *args, **kwargs: llama)
    out = tmp_path / "cli.html"
    args = ["report", "--index", str(idx.root), "--behavior", str(pairs), "--method", "residual-change",
            "--compare", "activation", "--labels-field", "label", "--top-k", "4", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and 'data-curves="residual-change,activation"' in out.read_text()
    result = CliRunner().invoke(main, args[:-2] + ["--method", "nope", "--out", str(out)])
    assert result.exit_code == 2 and "Invalid value for '--method': 'nope'" in result.output


def test_report_runs_the_query_query_runs(labelled_index, tmp_path):
    """The default settings (the adaptive fused default) give the same top rows, in the same order, with the same
    calibrated scores, on the page and from query; each card links to its source file and line."""
    idx, pairs = labelled_index
    res = idx.query(str(pairs), k=20)
    page = write_report(idx, str(pairs), tmp_path / "same.html", k=20, title="my behaviour").read_text()
    cards = re.findall(r'<article class="card top" data-id="([^"]+)" data-row="(\d+)">', page)
    assert [(h.id, str(h.row)) for h in res.top] == cards and len(cards) == 20
    for hit in res.top:
        assert f'title="score">{hit.score:+.4f}</span>' in page
        line = int(idx.reader.table.line[hit.row])
        assert line > 0 and f">{Path(idx.manifest.data_path).name}:{line}</a>" in page
    assert "<title>actindex report: my behaviour</title>" in page and "calibrated score" in page
    # the fusion's members with their weights (and checks, with enough pairs), as --explain lists them
    assert "Members of the fusion" in page or "Members chosen by the held-out pairs" in page
    listed = re.findall(r'<tr class="(kept|muted)"><td><code>(\w+)</code></td><td><code>([\w/]+)</code></td>'
                        r'<td class="num">([\d.]+)</td>', page)
    assert [(m["method"], m["family"], f'{m["weight"]:.2f}') for m in res.members] == [x[1:] for x in listed]
    assert sum(kind == "kept" for kind, *_ in listed) == sum(m["weight"] > 0 for m in res.members) > 0
    # the ranked rows come first; the members (most at weight 0) are folded after them
    section = page[page.index('<section class="method"'):]
    assert section.index('<article class="card top"') < section.index('<details class="members">')
    assert section.index('<details class="members">') < section.index('<table class="members">')
    kept, total = re.search(r'<details class="members"><summary>[^<]*: (\d+) of (\d+) candidates kept</summary>',
                            section).groups()
    assert (int(kept), int(total)) == (sum(m["weight"] > 0 for m in res.members), len(res.members))
    for hit in res.top:  # each card shows its raw cosine beside the calibrated score
        assert f'title="raw cosine">cos {hit.cosine:+.4f}</span>' in section


def test_report_folds_the_pairs_after_ten(labelled_index, tmp_path):
    idx, _ = labelled_index
    many = write_jsonl(tmp_path / "many.jsonl", [dict(PAIRS[0], prompt=f"{PAIRS[0]['prompt']} {i}") for i in range(13)])
    page = write_report(idx, str(many), tmp_path / "many.html", method="residual-change", k=2).read_text()
    shown, folded = page.split('<details class="more-pairs">')
    assert shown.count(f"{PAIRS[0]['prompt']} ") == 10 and "<summary>3 more pair(s)</summary>" in folded


# ---- a real browser --------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (`chromium` not on PATH)")
def test_report_renders_in_chromium(labelled_index, tmp_path):
    from PIL import Image

    idx, pairs = labelled_index
    out = write_report(idx, str(pairs), tmp_path / "view.html", method="residual-change", compare=["activation"],
                       labels_field="label", k=6, bottom_k=3)
    shot = tmp_path / "view.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", out.resolve().as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (3000, 1200)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 100).mean() > 0.005  # dark text and plot lines are drawn

    dom = _chromium(tmp_path, "--dump-dom", out.resolve().as_uri()).stdout
    assert "<title>actindex report: planted</title>" in dom
    assert len(re.findall(r'<article class="card top"', dom)) == 2 * 6
    assert len(re.findall(r'<article class="card bottom"', dom)) == 2 * 3
    images = [tag for tag in re.findall(r"<img\b[^>]*>", dom) if 'src="data:image/png;base64,' in tag]
    assert len(images) == 1 + 2 * 2  # comparison ROC, then a histogram and a ROC per method
    assert 'class="plot roc-compare"' in images[0]
    assert '<section id="comparison">' in dom and '<section id="behaviour">' in dom
