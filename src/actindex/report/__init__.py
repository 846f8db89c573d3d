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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actindex.files import atomic_write_text
from actindex.outputs import check_output, index_inputs
from actindex.query.methods import QueryMethod
from actindex.report.gather import MethodRun, run_method
from actindex.report.html import card_html, render_html
from actindex.report.metrics import CLEAN, is_heavy_tailed, is_positive, label_metrics
from actindex.report.plots import curves_png, histogram_png, png_data_uri

if TYPE_CHECKING:
    from actindex.api import Index
    from actindex.query.behaviors import Behavior
    from actindex.query.pipeline import QueryConfig

__all__ = [
    "CLEAN", "MethodRun", "card_html", "curves_png", "histogram_png", "is_heavy_tailed", "is_positive",
    "label_metrics", "png_data_uri", "render_html", "run_method", "write_report",
]


def write_report(
    index: Index,
    behavior: str | Behavior,
    out: str | Path,
    config: QueryConfig | None = None,
    compare: Sequence[str] = (),
    labels_field: str | None = None,
    positive_label: str | None = None,
    title: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Run the query ``actindex query`` runs with ``config`` (or ``options``, its fields: the same method
    defaults, layers, fusion, rerank and candidates) and write one self-contained HTML page of it: the
    behaviour, the settings, the calibrated score's histogram over every row, the label metrics and the
    top and bottom rows as cards. ``compare`` adds other methods side by side (ROC curves, overlap).

    ``behavior`` is a built-in name, a pairs/persona file or a :class:`Behavior`. ``labels_field`` names a
    record field; a row is positive when its value is not ``"clean"``, or equals ``positive_label`` when
    that is given. ``title`` names the behaviour on the page. ``out`` follows the output rule
    (:mod:`actindex.outputs`): an existing file is replaced only with ``overwrite``. Returns the written path.
    """
    from actindex.query.pipeline import QueryConfig

    out = check_output(out, overwrite=overwrite, inputs=index_inputs(index, behavior))
    config = config or QueryConfig(**options)
    for method in compare:
        QueryMethod.get(method)  # fail fast on a typo, before any model work
    # one completed behaviour for every run: the page shows exactly the pairs the queries used
    behavior = index.behavior(behavior)
    runs = [run_method(index, behavior, config, labels_field, positive_label)]
    runs += [run_method(index, behavior, replace(config, method=m, fusion=None if m != config.method else
                                                 config.fusion), labels_field, positive_label)
             for m in compare if m != runs[0].method]
    page = render_html(index, behavior, runs, config, labels_field, positive_label, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
