"""The rules that choose ``D+`` and ``D-``, one registered class per file; :func:`select_rows` applies one."""

from actindex.act.correct.selection.base import Selection, Split, scale_scores, select_rows, selection_names

# the registry lists the rules in this order
# isort: off
from actindex.act.correct.selection.topk import TopK
from actindex.act.correct.selection.pareto import Pareto, knee_count
# isort: on

__all__ = ["Pareto", "Selection", "Split", "TopK", "knee_count", "scale_scores", "select_rows", "selection_names"]
