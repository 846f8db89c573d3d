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

Modules: ``metrics`` (positive labels, AUROC / AP / precision@n, heavy tails), ``plots`` (the
matplotlib figures as PNG data URIs), ``gather`` (:class:`MethodRun`: one method's full ranking and
metrics), ``html`` (escaping, cards, sections and :func:`render_html`); this module writes the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from actindex.errors import ActindexError
from actindex.files import atomic_write_text
from actindex.query.methods import QueryMethod
from actindex.report.gather import MethodRun, run_method
from actindex.report.html import card_html, render_html
from actindex.report.metrics import CLEAN, is_heavy_tailed, is_positive, label_metrics
from actindex.report.plots import curves_png, histogram_png, png_data_uri

if TYPE_CHECKING:
    from actindex.api import Index
    from actindex.query.behaviors import Behavior

__all__ = [
    "CLEAN", "MethodRun", "card_html", "curves_png", "histogram_png", "is_heavy_tailed", "is_positive",
    "label_metrics", "png_data_uri", "render_html", "run_method", "write_report",
]


def write_report(
    index: Index,
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
