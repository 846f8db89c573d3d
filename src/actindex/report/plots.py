"""The report's figures: matplotlib on an Agg canvas (no display needed), each returned as a
``data:image/png;base64,...`` URI to embed in the page.

* ``histogram_png``: every row's score, with the top/bottom edges and a rug of the marked rows;
* ``curves_png``: ROC (and precision-recall) curves, one per ranking, AUROC / AP in the legend.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from actindex.report.metrics import is_heavy_tailed, label_metrics

__all__ = ["BAR_COLOR", "BOTTOM_COLOR", "POSITIVE_COLOR", "TOP_COLOR", "curves_png", "histogram_png", "png_data_uri"]

TOP_COLOR = "#c0392b"
BOTTOM_COLOR = "#2471a3"
POSITIVE_COLOR = "#e67e22"
BAR_COLOR = "#95a5a6"


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs: Any) -> tuple[Any, np.ndarray]:
    """A constrained-layout figure of ``width`` x ``height`` inches on an Agg canvas and its axes grid."""
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

    ``clip(2 sqrt(N), 10, 80)`` bins. Returns ``(data_uri, log_y)``; ``log_y`` is true when the
    scores are heavy-tailed (:func:`~actindex.report.metrics.is_heavy_tailed`).
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

    Every entry is one curve on the same plot; the legend gives its AUROC / AP. The dotted lines
    are chance: the diagonal for ROC, the first entry's positive rate for precision-recall.
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
