"""The report page as HTML: escaping, row cards with per-token highlights, and the behaviour, settings,
method and comparison sections, put together by :func:`render_html` into one self-contained page.

Every value from the index or the behaviour goes through :func:`esc` (``html.escape`` with quotes);
long texts are clipped (:data:`MAX_TEXT_CHARS`), and plots are inline PNG ``data:`` URIs.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.errors import ActindexError
from actindex.query.result import Hit
from actindex.report.metrics import CLEAN, is_positive, label_metrics
from actindex.report.plots import curves_png, histogram_png

if TYPE_CHECKING:
    from actindex.api import Index
    from actindex.query.behaviors import Behavior
    from actindex.query.pipeline import QueryConfig
    from actindex.report.gather import MethodRun

__all__ = [
    "CSS", "behavior_html", "card_html", "comparison_html", "esc", "method_html", "metrics_text", "record_turns",
    "render_html", "token_html",
]

MAX_PAIRS_SHOWN = 10
MAX_TEXT_CHARS = 4000


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with a note of how many were left out."""
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def _cell(text: str | None, limit: int = 600) -> str:
    """Escaped, clipped table-cell text; ``(empty)`` for an empty string."""
    return esc(_clip(text, limit)) if text and text.strip() else '<span class="muted">(empty)</span>'


def _fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, ``–`` for ``None`` (an undefined metric)."""
    return "–" if value is None else f"{value:.{digits}f}"


def record_turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A training record as ``[(role, text), ...]``; the last turn is the response."""
    from actindex.core.rows import normalise_record

    try:
        row = normalise_record(Path("<index>"), 0, 0, record)
    except ActindexError:
        return [("record", json.dumps(record, ensure_ascii=False, indent=1))]
    if row.messages is None:
        return [("text", row.text or "")]
    return [(m["role"], m["content"]) for m in row.messages]


def token_html(token_scores: Sequence[tuple[str, float]], response: Sequence[bool] | None = None) -> str:
    """Per-token highlighting of decoded tokens: red for positive scores, blue for negative, opacity
    ``0.6 * |s| / max |s|`` over the row's tokens (0 for a non-finite score); with ``response`` (per token:
    in the loss), the prompt's tokens are set apart from the response's (class ``resp``, a marker where
    the response starts)."""
    scores = np.array([float(s) for _, s in token_scores], dtype=np.float64)
    peak = float(np.nanmax(np.abs(scores))) if len(scores) else 0.0
    spans = []
    previous = False
    for i, ((token, score), value) in enumerate(zip(token_scores, scores)):
        alpha = 0.0 if peak == 0 or not np.isfinite(value) else min(abs(value) / peak, 1.0) * 0.6
        rgb = "192,57,43" if value >= 0 else "36,113,163"
        in_response = bool(response[i]) if response is not None and i < len(response) else False
        if in_response and not previous:
            spans.append('<span class="start" title="the response starts here">▸</span>')
        previous = in_response
        spans.append(
            f'<span class="tok{" resp" if in_response else ""}" style="background:rgba({rgb},{alpha:.2f})" '
            f'title="{esc(f"{float(score):+.4f}")}">{esc(token)}</span>'
        )
    return '<div class="tokens" aria-label="per-token scores">' + "".join(spans) + "</div>"


def card_html(hit: Hit, side: str, labels_field: str | None, positive_label: str | None,
              source: tuple[str, int] | None = None) -> str:
    """One ranked row as a card: rank, id, score (and exact influence when reranked), label badge, its source
    file and line as a link, prompt and response (escaped), and the per-token influence when computed."""
    badge = ""
    if labels_field and isinstance(hit.record, dict) and hit.record.get(labels_field) is not None:
        value = hit.record[labels_field]
        kind = "pos" if is_positive(value, positive_label) else "neg"
        badge = f'<span class="badge {kind}">{esc(labels_field)}: {esc(value)}</span>'
    turns = record_turns(hit.record if isinstance(hit.record, dict) else {})
    body = []
    for i, (role, text) in enumerate(turns):
        cls = "response" if i == len(turns) - 1 and role in ("assistant", "text") else "prompt"
        body.append(
            f'<div class="turn {cls}"><div class="role">{esc(role)}</div>'
            f'<div class="text">{esc(_clip(text))}</div></div>'
        )
    if hit.token_scores:
        body.append('<div class="role">per-token influence (prompt, then ▸ the response)</div>'
                    + token_html(hit.token_scores, hit.token_response))
    influence = ("" if hit.influence is None else
                 f'<span class="influence" title="exact influence">I {hit.influence:+.4g}</span>')
    cosine = "" if hit.cosine is None else f'<span class="cosine" title="raw cosine">cos {hit.cosine:+.4f}</span>'
    where = ""
    if source is not None:
        path, line = source
        label = f"{Path(path).name}:{line}" if line else Path(path).name
        where = f'<a class="source" href="{esc(Path(path).as_uri())}" title="{esc(path)}">{esc(label)}</a>'
    return (
        f'<article class="card {side}" data-id="{esc(hit.id)}" data-row="{hit.row}">'
        f'<header><span class="rank">{"#" if side == "top" else "bottom #"}{hit.rank}</span>'
        f'<span class="id" title="id">{esc(hit.id)}</span>'
        f'<span class="score" title="score">{hit.score:+.4f}</span>{cosine}{influence}{badge}'
        f'<span class="rowno">row {hit.row}</span>{where}</header>' + "".join(body) + "</article>"
    )


def behavior_html(behavior: Behavior) -> str:
    """The behaviour: its description, then the first pairs (or the persona spec)."""
    parts = [f"<h2>Behaviour <code>{esc(behavior.name)}</code></h2>"]
    if behavior.description:
        parts.append(f'<p class="lead">{esc(behavior.description)}</p>')
    if behavior.source:
        parts.append(f'<p class="muted">source: <code>{esc(behavior.source)}</code></p>')
    parts += [f'<p class="note">note: {esc(note)}</p>' for note in behavior.notes]
    persona = behavior.persona
    if persona is not None:
        rows = "".join(f"<tr><td>{esc(pos)}</td><td>{esc(neg)}</td></tr>" for pos, neg in persona.instructions)
        parts.append(
            '<h3>Persona spec</h3><table class="pairs"><thead><tr><th>positive system prompt</th>'
            f"<th>neutral system prompt</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        questions = "".join(f"<li>{esc(q)}</li>" for q in persona.questions[:MAX_PAIRS_SHOWN])
        more = len(persona.questions) - MAX_PAIRS_SHOWN
        parts.append(f"<h3>Questions ({len(persona.questions)})</h3><ol>{questions}</ol>")
        if more > 0:
            parts.append(f'<p class="muted">… and {more} more</p>')
    if behavior.pairs:
        def table(pairs: Sequence[Any]) -> str:
            rows = "".join(
                f"<tr><td>{_cell(p.prompt)}</td><td>{_cell(p.treatment)}"
                + (' <span class="badge gen">the model\'s answer</span>' if p.treatment_generated else "")
                + f"</td><td>{_cell(p.control)}"
                + (' <span class="badge gen">generated</span>' if p.control_generated else "")
                + "</td></tr>"
                for p in pairs
            )
            return (f'<table class="pairs"><thead><tr><th>prompt</th><th>treatment (shows the behaviour)</th>'
                    f"<th>control</th></tr></thead><tbody>{rows}</tbody></table>")

        title = "Pairs" if persona is None else "Pairs formed from the persona responses"
        parts.append(f"<h3>{title} ({len(behavior.pairs)})</h3>" + table(behavior.pairs[:MAX_PAIRS_SHOWN]))
        more = behavior.pairs[MAX_PAIRS_SHOWN:]
        if more:
            parts.append(f'<details class="more-pairs"><summary>{len(more)} more pair(s)</summary>{table(more)}'
                         "</details>")
    return '<section id="behaviour">' + "".join(parts) + "</section>"


def _kv_table(items: list[tuple[str, str]]) -> str:
    """A two-column settings table; keys are escaped here, values are HTML already."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def metrics_text(m: dict[str, Any]) -> str:
    """``AUROC 0.950 · AP 0.900 · precision@n 0.833 (n = 6)`` (plain text)."""
    return (
        f"AUROC {_fmt(m['auroc'])} · AP {_fmt(m['ap'])} · precision@n {_fmt(m['precision_at_n'])} "
        f"(n = {m['n_positive']} positives of {m['n']})"
    )


def method_html(
    run: MethodRun,
    n: int,
    labels_field: str | None,
    positive_label: str | None,
    shared_notes: Sequence[str] = (),
    sources: dict[int, tuple[str, int]] | None = None,
) -> str:
    """One method's section: the top/bottom cards first, then the fusion's members (folded), the score histogram
    and the label curves.

    ``shared_notes`` (the behaviour's own notes, shown once above) are not repeated here; ``sources`` maps a
    row to its data file and line (the cards link to them).
    """
    sources = sources or {}
    res = run.result
    rank_fused = any(h.calibrated is not None and abs(h.calibrated - h.score) > 1e-9 for h in run.top)
    searched = "projection on the behaviour direction" if run.projection else "cosine"
    xlabel = ("fusion score (the rule's own, what orders the rows)" if rank_fused else
              f"calibrated score ({'mean over members of ' if run.fused else ''}({searched} - median) / 1.4826 MAD; "
              "> 0 pushes towards)")
    pos_scores = run.scores[run.labels & run.labelled] if run.labels is not None else None
    hist, log_y = "", False
    if len(run.scores):
        hist, log_y = histogram_png(
            run.scores,
            np.array([h.score for h in run.top]),
            np.array([h.score for h in run.bottom]),
            pos_scores,
            xlabel,
        )
    summary = "no rows scored"
    if len(run.scores):
        meaning = ("score: the fusion rule's own (the order), each card's cosine the members' weighted mean; "
                   if rank_fused else f"calibrated score: {'the mean over the members of ' if run.fused else ''}"
                   f"({searched} - median) / (1.4826 MAD) against the index's typical rows, > 0 pushes towards "
                   "the behaviour; ")
        summary = (
            f"{len(run.scores)} rows scored in {res.seconds:.2f} s; {meaning}"
            f"score range {run.scores.min():+.4f} … {run.scores.max():+.4f}"
        )
        if log_y:
            summary += "; count axis in log scale (heavy-tailed scores)"
    parts = [
        f'<section class="method" id="method-{n}" data-method="{esc(run.method)}">',
        f'<h2>Method <code>{esc(run.method)}</code> <span class="muted">family {esc(res.family)}</span></h2>',
        f'<p class="muted">{esc(summary)}</p>',
    ]
    for note in [n for n in res.notes if n not in shared_notes] + run.notes:
        parts.append(f'<p class="note">note: {esc(note)}</p>')
    for side, hits, title in (
        ("top", run.top, f"Top {len(run.top)} rows (push the model towards the behaviour)"),
        ("bottom", run.bottom, f"Bottom {len(run.bottom)} rows (push it away)"),
    ):
        if hits:
            cards = "".join(card_html(h, side, labels_field, positive_label, sources.get(h.row)) for h in hits)
            parts.append(f'<h3>{esc(title)}</h3><div class="cards">{cards}</div>')
    if res.members:
        parts.append(members_html(res.members))
    if len(run.scores):
        parts.append(
            "<h3>Score distribution</h3>"
            f'<img class="plot hist" src="{hist}" alt="histogram of {len(run.scores)} scores for {esc(run.method)}, '
            f'top-{len(run.top)} and bottom-{len(run.bottom)} rows marked">'
        )
    if run.metrics is not None:
        parts.append(
            f'<h3>Against labels <code>{esc(labels_field)}</code></h3><p class="metrics">'
            f"{esc(metrics_text(run.metrics))}</p>"
        )
        if run.metrics["auroc"] is not None:
            mask = run.labelled
            uri = curves_png({run.method: (run.scores[mask], run.labels[mask])})
            parts.append(
                f'<img class="plot roc" src="{uri}" alt="ROC and precision-recall curves for {esc(run.method)} '
                f'(AUROC {_fmt(run.metrics["auroc"])}, AP {_fmt(run.metrics["ap"])})">'
            )
    parts.append("</section>")
    return "".join(parts)


def members_html(members: list[dict[str, Any]]) -> str:
    """A fused query's members (as ``--explain`` lists them), folded under a one-line summary (a demo query lists
    dozens of candidates, most at weight 0): for the adaptive default every candidate (construction, family)
    with its held-out checks (pair AUROC: held-out treatments over their controls; index AUROC: over the
    index's typical rows; separation: treatment minus control in robust standard deviations of the index's
    cosines) and its weight in the fusion."""
    kept = sum(m["weight"] > 0 for m in members)
    checked = any("index AUROC" in m for m in members)
    rows = "".join(
        f'<tr class="{"kept" if m["weight"] > 0 else "muted"}"><td><code>{esc(m["method"])}</code></td>'
        f'<td><code>{esc(m["family"])}</code></td><td class="num">{m["weight"]:.2f}</td>'
        f'<td class="num">{_fmt(m.get("pair AUROC"))}</td><td class="num">{_fmt(m.get("index AUROC"))}</td>'
        f'<td class="num">{_fmt(m.get("separation"), 2)}</td></tr>'
        for m in members)
    how = ("each candidate's query vector is formed without a fold of the pairs and scores the held-out ones "
           "(no label, no extra model pass)" if checked else "not checked (fixed members, or one pair: nothing "
           "to hold out, the prior's members)")
    if checked and any("prior" in m for m in members):
        how += "; with few pairs the check's choice is shrunk toward a prior chosen on the benchmark pools"
    title = "Members chosen by the held-out pairs" if checked else "Members of the fusion"
    return (f'<details class="members"><summary>{title}: {kept} of {len(members)} candidates kept</summary>'
            f'<p class="muted">{how}</p>'
            '<table class="members"><thead><tr><th>member</th><th>family</th><th>weight</th><th>pair AUROC</th>'
            f"<th>index AUROC</th><th>separation</th></tr></thead><tbody>{rows}</tbody></table></details>")


def comparison_html(runs: list[MethodRun], top_k: int) -> str:
    """Several methods side by side: a metrics table and one ROC curve per method on one plot."""
    first = runs[0]
    first_top = {h.row for h in first.top}
    labelled = all(r.metrics is not None for r in runs)
    head = "<th>method</th><th>family</th><th>rows</th><th>seconds</th>"
    head += f"<th>top-{top_k} overlap with {esc(first.method)}</th>"
    if labelled:
        head += "<th>AUROC</th><th>AP</th><th>precision@n</th><th>n</th>"
    body = []
    for r in runs:
        overlap = len(first_top & {h.row for h in r.top})
        cells = (
            f"<td><code>{esc(r.method)}</code></td><td>{esc(r.result.family)}</td><td>{len(r.scores)}</td>"
            f"<td>{r.result.seconds:.2f}</td><td>{overlap}/{len(r.top)}</td>"
        )
        if labelled:
            m = r.metrics
            cells += (
                f'<td class="num">{_fmt(m["auroc"])}</td><td class="num">{_fmt(m["ap"])}</td>'
                f'<td class="num">{_fmt(m["precision_at_n"])}</td><td>{m["n_positive"]}</td>'
            )
        body.append(f'<tr data-method="{esc(r.method)}">{cells}</tr>')
    parts = [
        '<section id="comparison"><h2>Method comparison</h2>',
        f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>',
    ]
    curves = {
        r.method: (r.scores[r.labelled], r.labels[r.labelled])
        for r in runs
        if r.metrics is not None and r.metrics["auroc"] is not None
    }
    if curves:
        alt = ", ".join(f"{name} (AUROC {label_metrics(*c)['auroc']:.3f})" for name, c in curves.items())
        parts.append(
            f'<img class="plot roc-compare" data-curves="{esc(",".join(curves))}" src="{curves_png(curves)}" '
            f'alt="ROC and precision-recall curves, one per method: {esc(alt)}">'
        )
    parts.append("</section>")
    return "".join(parts)


CSS = """
:root { --fg:#1f2328; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff;
        --top:#c0392b; --bottom:#2471a3; --pos:#e67e22; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 24px 60px; }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:20px; margin:0 0 10px; } h3 { font-size:16px; margin:18px 0 8px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 22px; margin:18px 0; }
code { font:13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:#f0f2f5;
       padding:1px 5px; border-radius:4px; }
.muted { color:var(--muted); font-size:13px; font-weight:normal; } .lead { font-size:15px; }
.note { background:#fff8e6; border-left:3px solid #f0b429; padding:6px 10px; margin:6px 0; font-size:13px; }
.metrics { font-size:16px; font-weight:600; }
table { border-collapse:collapse; width:100%; font-size:13px; }
table.kv th { text-align:left; width:160px; color:var(--muted); font-weight:500; vertical-align:top;
              padding:3px 8px 3px 0; }
table.kv td { padding:3px 0; word-break:break-all; }
table.pairs th, table.pairs td, table.grid th, table.grid td { border:1px solid var(--line); padding:6px 8px;
       text-align:left; vertical-align:top; white-space:pre-wrap; }
table.pairs th, table.grid th { background:#f8f9fb; }
td.num { font-variant-numeric:tabular-nums; }
img.plot { display:block; max-width:100%; height:auto; margin:6px auto; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(340px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-left:4px solid var(--top); border-radius:8px; padding:10px 12px;
        background:#fff; box-shadow:0 1px 2px rgba(16,24,40,.05); min-width:0; }
.card.bottom { border-left-color:var(--bottom); }
.card header { display:flex; flex-wrap:wrap; gap:8px; align-items:baseline; margin-bottom:6px; }
.rank { font-weight:700; } .id { font-family:ui-monospace, Menlo, Consolas, monospace; font-size:13px; }
.score { margin-left:auto; font-variant-numeric:tabular-nums; font-weight:600; }
.card.top .score { color:var(--top); } .card.bottom .score { color:var(--bottom); }
.rowno { color:var(--muted); font-size:12px; }
.badge { font-size:11px; padding:1px 7px; border-radius:10px; background:#eef0f3; color:#475467; }
.badge.pos { background:#fdebd3; color:#9a4a00; font-weight:600; } .badge.gen { background:#e8f1fb; color:#1d5a91; }
.turn { margin:4px 0; } .role { font-size:11px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
.text { white-space:pre-wrap; word-wrap:break-word; max-height:220px; overflow:auto; font-size:13.5px;
        background:#fafbfc; border-radius:6px; padding:5px 8px; }
.turn.response .text { background:#f3f7f3; }
.tokens { font-size:13px; line-height:1.9; white-space:pre-wrap; }
.tok { border-radius:3px; padding:1px 1px; margin-right:1px; }
.tok.resp { border-bottom:2px solid #5b8c5a; } .start { color:#5b8c5a; font-weight:700; margin:0 2px; }
.influence, .cosine { font-variant-numeric:tabular-nums; font-size:12px; color:var(--muted); }
a.source { font-size:12px; color:var(--muted); }
details.more-pairs summary, details.members summary { cursor:pointer; color:var(--muted); }
footer { color:var(--muted); font-size:12px; text-align:center; }
"""


def render_html(
    index: Index,
    behavior: Behavior,
    runs: list[MethodRun],
    config: QueryConfig,
    labels_field: str | None,
    positive_label: str | None,
    title: str | None = None,
) -> str:
    """The whole page as one string (no external resources): title, the behaviour, the query settings
    (``config`` and ``index.manifest``), the comparison when there are several runs, then one section per run."""
    from actindex import __version__

    model = index.manifest.model
    valid = index.manifest.valid_rows
    rule = (
        f"positive = <code>{esc(positive_label)}</code>"
        if positive_label is not None
        else f"positive = any value other than <code>{esc(CLEAN)}</code>"
    )
    first = runs[0].result
    kept = [m for m in first.members if m.get("weight", 1) > 0]
    layers = (", ".join(str(a) for a in sorted({m["layer"] for m in kept})) if kept
              else esc(config.layer or "default"))
    settings = [
        ("index", f"<code>{esc(index.root)}</code>"),
        (
            "model",
            f'{esc(model.name)} <span class="muted">({esc(model.architecture)}, '
            f"weights {esc(model.fingerprint[:12])})</span>",
        ),
        ("method(s)", ", ".join(f"<code>{esc(r.method)}</code>" for r in runs)),
        ("family", ", ".join(f"<code>{esc(r.result.family)}</code>" for r in runs)),
        ("layer(s)", esc(layers)),
        ("rerank", esc(f"{config.rerank}, {config.candidates} candidates" if config.rerank else "none")),
        ("rows", f"{len(index)} ({valid} searchable)"),
        ("shown", f"top {len(runs[0].top)}, bottom {len(runs[0].bottom)}"),
        ("time", esc(", ".join(f"{k} {v:.2f} s" for k, v in first.timings.items()) or f"{first.seconds:.2f} s")),
    ]
    if labels_field:
        settings.append(("labels", f"field <code>{esc(labels_field)}</code>; {rule}"))
    sections = [
        behavior_html(behavior),
        f'<section id="settings"><h2>Query settings</h2>{_kv_table(settings)}</section>',
    ]
    if len(runs) > 1:
        sections.append(comparison_html(runs, len(runs[0].top)))
    sources = index.reader.row_sources(sorted({h.row for r in runs for h in [*r.top, *r.bottom]}))
    sections += [method_html(r, i, labels_field, positive_label, behavior.notes, sources) for i, r in enumerate(runs)]
    title = f"actindex report: {title or behavior.name}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="muted">{esc(", ".join(r.method for r in runs))} · {esc(model.name)} · '
        f"generated {esc(stamp)}</p>" + "".join(sections) + f"<footer>actindex {esc(__version__)}</footer>"
        "</main></body></html>\n"
    )

