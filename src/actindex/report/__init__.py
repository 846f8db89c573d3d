"""``actindex report``: one self-contained HTML page for a behaviour query.

The page shows the behaviour and the query settings, the score distribution of every row with
the top/bottom rows marked, the top and bottom rows as cards (HTML-escaped; per-token
highlighting when a hit carries ``token_scores``), and, when the rows carry a label field,
ROC and precision-recall curves with AUROC, AP and precision@n. Several methods get a
comparison panel (one ROC curve per method on one plot and a metrics table).

Everything is inline: plots are PNGs embedded as base64 ``data:`` URIs and the CSS is in the
page, so the file opens offline and can be mailed or attached as is.

Labels: a row is *positive* when its label is anything other than ``"clean"`` (e.g.
``"planted"``); ``positive_label`` switches to "positive iff the label equals this value".
Rows without the field (or with ``null``) are left out of the metrics.

    from actindex import Index
    from actindex.report import write_report
    idx = Index.open("idx")
    write_report(idx, "hallucination", ["residual-change", "activation"], "report.html", labels_field="label")
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actindex.errors import ActindexError
from actindex.files import atomic_write_text
from actindex.query.behaviors import Behavior
from actindex.query.methods import QueryMethod

CLEAN = "clean"
"""The label value that means "negative" under the default positive-label rule."""

MAX_PAIRS_SHOWN = 10
MAX_TEXT_CHARS = 4000
HEAVY_TAIL_KURTOSIS = 3.0

TOP_COLOR = "#c0392b"
BOTTOM_COLOR = "#2471a3"
POSITIVE_COLOR = "#e67e22"
BAR_COLOR = "#95a5a6"


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def is_positive(value: Any, positive_label: str | None = None) -> bool:
    """Whether a label value counts as positive.

    Default rule: anything other than ``"clean"`` is positive. With ``positive_label`` a value is
    positive iff it equals it (compared as text, so ``--positive-label true`` matches JSON ``true``).
    """
    if positive_label is None:
        return value != CLEAN
    return positive_label in (str(value), json.dumps(value))


def label_metrics(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """AUROC, average precision and precision@n of a ranking against binary labels.

    ``n`` is the number of positives; precision@n is the fraction of positives among the ``n``
    highest-scoring rows (ties keep the given order). AUROC and AP are ``None`` when the labels
    have one class only. Returns ``{n, n_positive, auroc, ap, precision_at_n}``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-D of the same length")
    n_pos = int(labels.sum())
    out: dict[str, Any] = {"n": int(len(labels)), "n_positive": n_pos, "auroc": None, "ap": None}
    order = np.argsort(-scores, kind="stable")
    out["precision_at_n"] = float(labels[order[:n_pos]].mean()) if n_pos else None
    if 0 < n_pos < len(labels):
        out["auroc"] = float(roc_auc_score(labels, scores))
        out["ap"] = float(average_precision_score(labels, scores))
    return out


def is_heavy_tailed(scores: Sequence[float] | np.ndarray, threshold: float = HEAVY_TAIL_KURTOSIS) -> bool:
    """Whether the excess kurtosis of ``scores`` exceeds ``threshold`` (3 = a Laplace distribution).

    The histogram uses a log-scale count axis for such distributions so the tails stay visible.
    """
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < 4:
        return False
    std = x.std()
    if not np.isfinite(std) or std == 0:
        return False
    z = (x - x.mean()) / std
    return float((z**4).mean() - 3.0) > threshold


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg canvas, embedded as PNG data URIs)
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def png_data_uri(fig: Any, dpi: int = 110) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (no PNG text metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_png(
    scores: np.ndarray,
    top_scores: np.ndarray,
    bottom_scores: np.ndarray,
    positive_scores: np.ndarray | None = None,
    xlabel: str = "score",
) -> tuple[str, bool]:
    """Histogram of all scores with rug marks for the top/bottom rows (and positives if given).

    Returns ``(data_uri, log_y)``; ``log_y`` is true when the scores are heavy-tailed.
    """
    log_y = is_heavy_tailed(scores)
    fig, axes = _figure(9, 3.6, 2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 1.2]})
    ax, rug = axes[0, 0], axes[1, 0]
    bins = int(np.clip(np.sqrt(len(scores)) * 2, 10, 80))
    ax.hist(scores, bins=bins, color=BAR_COLOR, edgecolor="white", linewidth=0.5, log=log_y)
    ax.set_ylabel("rows" + (" (log scale)" if log_y else ""))
    for values, color, text in ((top_scores, TOP_COLOR, "top"), (bottom_scores, BOTTOM_COLOR, "bottom")):
        if len(values):
            edge = values.min() if text == "top" else values.max()
            ax.axvline(edge, color=color, linestyle="--", linewidth=1, label=f"{text}-{len(values)} edge")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    lanes = [("all", scores, "#7f8c8d")]
    if positive_scores is not None:
        lanes.append(("positive", positive_scores, POSITIVE_COLOR))
    lanes.append(("top / bottom", np.concatenate([top_scores, bottom_scores]), None))
    for y, (_name, values, color) in enumerate(lanes):
        if color is None:
            rug.plot(top_scores, np.full(len(top_scores), y), "|", color=TOP_COLOR, ms=10, mew=1.2)
            rug.plot(bottom_scores, np.full(len(bottom_scores), y), "|", color=BOTTOM_COLOR, ms=10, mew=1.2)
        else:
            rug.plot(values, np.full(len(values), y), "|", color=color, ms=10, mew=0.8, alpha=0.6)
    rug.set_yticks(range(len(lanes)), [name for name, _, _ in lanes], fontsize=8)
    rug.set_ylim(-0.6, len(lanes) - 0.4)
    rug.set_xlabel(xlabel)
    rug.spines[["top", "right", "left"]].set_visible(False)
    rug.tick_params(axis="y", length=0)
    return png_data_uri(fig), log_y


def curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], pr: bool = True) -> str:
    """ROC curves (and precision-recall curves when ``pr``) for ``{name: (scores, labels)}``.

    Every entry is one curve on the same plot; the legend gives its AUROC / AP.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, axes = _figure(8 if pr else 4.5, 3.4, 1, 2 if pr else 1)
    roc_ax = axes[0, 0]
    roc_ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", linewidth=1)
    for name, (scores, labels) in curves.items():
        m = label_metrics(scores, labels)
        fpr, tpr, _ = roc_curve(labels, scores)
        roc_ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUROC {m['auroc']:.3f})")
        if pr:
            precision, recall, _ = precision_recall_curve(labels, scores)
            axes[0, 1].step(recall, precision, where="post", linewidth=1.8, label=f"{name} (AP {m['ap']:.3f})")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    roc_ax.legend(loc="lower right", fontsize=8)
    if pr:
        base = float(np.mean(next(iter(curves.values()))[1]))
        axes[0, 1].axhline(base, color="#bbbbbb", linestyle=":", linewidth=1)
        axes[0, 1].set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
        axes[0, 1].legend(loc="lower left", fontsize=8)
    for ax in axes.ravel():
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.25)
    return png_data_uri(fig)


# --------------------------------------------------------------------------------------------
# Gathering the data
# --------------------------------------------------------------------------------------------


@dataclass
class MethodRun:
    """One method's full ranking (every valid row) and what the page needs from it."""

    method: str
    result: Any  # QueryResult with ``top`` = every valid row, best first
    top: list[Any]
    bottom: list[Any]
    scores: np.ndarray
    labels: np.ndarray | None = None  # bool per ranked row (None: no labels)
    labelled: np.ndarray | None = None  # bool per ranked row: has a usable label
    metrics: dict[str, Any] | None = None
    projection: bool = False
    notes: list[str] = field(default_factory=list)


def _label_arrays(hits: Sequence[Any], labels_field: str, positive_label: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, positive)`` boolean arrays for ranked hits."""
    values = [h.record.get(labels_field) if isinstance(h.record, dict) else None for h in hits]
    labelled = np.array([v is not None for v in values], dtype=bool)
    positive = np.array([v is not None and is_positive(v, positive_label) for v in values], dtype=bool)
    return labelled, positive


def run_method(
    index: Any,
    behavior: Behavior,
    method: str,
    top_k: int,
    bottom_k: int,
    layer: int | None = None,
    labels_field: str | None = None,
    positive_label: str | None = None,
) -> MethodRun:
    """Score every row with ``index.query(k=0)`` and compute the label metrics if asked."""
    result = index.query(behavior, method=method, layer=layer, k=0, bottom_k=bottom_k)
    scores = np.array([h.score for h in result.top], dtype=np.float64)
    run = MethodRun(
        method=method,
        result=result,
        top=result.top[:top_k],
        bottom=result.bottom,
        scores=scores,
        projection=QueryMethod.get(method).projection_scores,
    )
    if labels_field:
        labelled, positive = _label_arrays(result.top, labels_field, positive_label)
        if not labelled.any():
            raise ActindexError(
                f"no row of {index.root} has a label field {labels_field!r} "
                f"(fields of the first row: {', '.join(result.top[0].record) if result.top else 'none'})"
            )
        run.labelled, run.labels = labelled, positive
        run.metrics = label_metrics(scores[labelled], positive[labelled])
        missing = int((~labelled).sum())
        if missing:
            run.notes.append(f"{missing} row(s) have no {labels_field!r} value and are left out of the metrics")
        if run.metrics["auroc"] is None:
            kind = "positive" if run.metrics["n_positive"] else "negative"
            run.notes.append(f"every labelled row is {kind}: AUROC and AP are undefined")
    return run


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def _cell(text: str | None, limit: int = 600) -> str:
    """Escaped, clipped table-cell text; ``(empty)`` for an empty string."""
    return esc(_clip(text, limit)) if text and text.strip() else '<span class="muted">(empty)</span>'


def _fmt(value: float | None, digits: int = 3) -> str:
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


def token_html(token_scores: Sequence[tuple[str, float]]) -> str:
    """Per-token highlighting: red for positive scores, blue for negative, opacity by magnitude."""
    scores = np.array([float(s) for _, s in token_scores], dtype=np.float64)
    peak = float(np.nanmax(np.abs(scores))) if len(scores) else 0.0
    spans = []
    for (token, score), value in zip(token_scores, scores):
        alpha = 0.0 if peak == 0 or not np.isfinite(value) else min(abs(value) / peak, 1.0) * 0.6
        rgb = "192,57,43" if value >= 0 else "36,113,163"
        spans.append(
            f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" '
            f'title="{esc(f"{float(score):+.4f}")}">{esc(token)}</span>'
        )
    return '<div class="tokens" aria-label="per-token scores">' + "".join(spans) + "</div>"


def card_html(hit: Any, side: str, labels_field: str | None, positive_label: str | None) -> str:
    """One ranked row as a card: rank, id, score, label badge, prompt and response (escaped)."""
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
    token_scores = getattr(hit, "token_scores", None)
    if token_scores:
        body.append('<div class="role">per-token scores</div>' + token_html(token_scores))
    return (
        f'<article class="card {side}" data-id="{esc(hit.id)}" data-row="{hit.row}">'
        f'<header><span class="rank">{"#" if side == "top" else "bottom #"}{hit.rank}</span>'
        f'<span class="id" title="id">{esc(hit.id)}</span>'
        f'<span class="score" title="score">{hit.score:+.4f}</span>{badge}'
        f'<span class="rowno">row {hit.row}</span></header>' + "".join(body) + "</article>"
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
        rows = "".join(
            f"<tr><td>{_cell(p.prompt)}</td><td>{_cell(p.treatment)}</td><td>{_cell(p.control)}"
            + (' <span class="badge gen">generated</span>' if p.control_generated else "")
            + "</td></tr>"
            for p in behavior.pairs[:MAX_PAIRS_SHOWN]
        )
        title = "Pairs" if persona is None else "Pairs formed from the persona responses"
        parts.append(
            f'<h3>{title} ({len(behavior.pairs)})</h3><table class="pairs"><thead><tr><th>prompt</th>'
            f"<th>treatment (shows the behaviour)</th><th>control</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        more = len(behavior.pairs) - MAX_PAIRS_SHOWN
        if more > 0:
            parts.append(f'<p class="muted">… and {more} more pair(s) not shown</p>')
    return '<section id="behaviour">' + "".join(parts) + "</section>"


def _kv_table(items: list[tuple[str, str]]) -> str:
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
) -> str:
    """One method's section: score histogram, label curves and the top/bottom cards.

    ``shared_notes`` (the behaviour's own notes, shown once above) are not repeated here.
    """
    res = run.result
    xlabel = "score (projection on the behaviour direction)" if run.projection else "score (cosine)"
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
        summary = (
            f"{len(run.scores)} rows scored in {res.seconds:.2f} s; "
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
    for side, hits, title in (
        ("top", run.top, f"Top {len(run.top)} rows (push the model towards the behaviour)"),
        ("bottom", run.bottom, f"Bottom {len(run.bottom)} rows (push it away)"),
    ):
        if hits:
            cards = "".join(card_html(h, side, labels_field, positive_label) for h in hits)
            parts.append(f'<h3>{esc(title)}</h3><div class="cards">{cards}</div>')
    parts.append("</section>")
    return "".join(parts)


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
footer { color:var(--muted); font-size:12px; text-align:center; }
"""


def render_html(
    index: Any,
    behavior: Behavior,
    runs: list[MethodRun],
    layer: int | None,
    labels_field: str | None,
    positive_label: str | None,
    top_k: int,
) -> str:
    """The whole page as one string (no external resources)."""
    from actindex import __version__

    model = asdict(index.manifest.model)
    valid = index.manifest.valid_rows
    rule = (
        f"positive = <code>{esc(positive_label)}</code>"
        if positive_label is not None
        else f"positive = any value other than <code>{esc(CLEAN)}</code>"
    )
    settings = [
        ("index", f"<code>{esc(index.root)}</code>"),
        (
            "model",
            f'{esc(model.get("name", "?"))} <span class="muted">({esc(model.get("architecture", ""))}, '
            f"weights {esc(str(model.get('fingerprint', ''))[:12])})</span>",
        ),
        ("method(s)", ", ".join(f"<code>{esc(r.method)}</code>" for r in runs)),
        ("family", ", ".join(f"<code>{esc(r.result.family)}</code>" for r in runs)),
        ("layer", esc(layer if layer is not None else "–")),
        ("rows", f"{len(index)} ({valid} searchable)"),
        ("shown", f"top {top_k}, bottom {max((len(r.bottom) for r in runs), default=0)}"),
    ]
    if labels_field:
        settings.append(("labels", f"field <code>{esc(labels_field)}</code>; {rule}"))
    sections = [
        behavior_html(behavior),
        f'<section id="settings"><h2>Query settings</h2>{_kv_table(settings)}</section>',
    ]
    if len(runs) > 1:
        sections.append(comparison_html(runs, top_k))
    sections += [method_html(r, i, labels_field, positive_label, behavior.notes) for i, r in enumerate(runs)]
    title = f"actindex report: {behavior.name}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="muted">{esc(", ".join(r.method for r in runs))} · {esc(model.get("name", ""))} · '
        f"generated {esc(stamp)}</p>" + "".join(sections) + f"<footer>actindex {esc(__version__)}</footer>"
        "</main></body></html>\n"
    )


def write_report(
    index: Any,
    behavior: str | Behavior,
    methods: Sequence[str] | str,
    out: str | Path,
    labels_field: str | None = None,
    positive_label: str | None = None,
    top_k: int = 20,
    bottom_k: int = 10,
    layer: int | None = None,
) -> Path:
    """Query ``index`` (an :class:`actindex.Index`) with each method and write one HTML report.

    ``behavior`` is a built-in name, a pairs/persona file or a :class:`Behavior`. Every valid row
    is scored (``Index.query(k=0)``) so the histogram and the label metrics cover the whole
    index. ``labels_field`` names a record field; a row is positive when its value is not
    ``"clean"``, or equals ``positive_label`` when that is given. Returns the written path.
    """
    methods = [methods] if isinstance(methods, str) else list(methods) or ["residual-change"]
    if top_k < 0 or bottom_k < 0:
        raise ActindexError("top_k and bottom_k must be >= 0")
    for method in methods:
        QueryMethod.get(method)  # fail fast on a typo, before any model work
    # One Behavior object for every method: completion (generated controls) happens once and the
    # page shows exactly the pairs the queries used.
    behavior = index.behavior(behavior)
    layer = index.resolve_layer(layer)
    runs = [run_method(index, behavior, m, top_k, bottom_k, layer, labels_field, positive_label) for m in methods]
    page = render_html(index, behavior, runs, layer, labels_field, positive_label, top_k)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
