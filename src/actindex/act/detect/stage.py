"""Stage 11, the whole detection: score the rows, flag them by every rule, evaluate, write.

    result = actindex.detect(idx, queries="queries.jsonl", transforms="fast", labels_field="label")

:func:`detect` reads the test queries (:mod:`~actindex.act.detect.queries`), scores every row under each
transform (:mod:`~actindex.act.detect.scoring`), applies every registered rule
(:mod:`~actindex.act.detect.rules`), with ``labels_field`` measures each rule's precision and recall,
and with ``out`` writes the flagged rows of the chosen rule.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actindex.act.detect.config import DetectConfig
from actindex.act.detect.queries import load_queries
from actindex.act.detect.rules import TIE_BREAK, DetectRule
from actindex.act.detect.scoring import ScoreTable, score_table
from actindex.act.detect.statistics import prf
from actindex.act.detect.transforms import resolve_transforms
from actindex.api import Index
from actindex.core.models import LoadedModel, load_model
from actindex.errors import DataError, MemorisationWarning
from actindex.files import atomic_file
from actindex.index.memorisation import MEMORISED_RATIO
from actindex.outputs import check_output, index_inputs


@dataclass
class DetectResult:
    """Scores, flags and statistics per rule (by name, in registry order), and metrics when labels were given."""

    table: ScoreTable
    flags: dict[str, np.ndarray]
    statistics: dict[str, np.ndarray]
    ids: list[str]
    ensemble: str
    rules: dict[str, DetectRule] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def flagged_rows(self, rule: str | None = None) -> np.ndarray:
        return self.table.rows[self.flags[rule or self.ensemble]]

    def flagged_positions(self, rule: str | None = None) -> np.ndarray:
        """Positions in the table of the rows ``rule`` flags, highest statistic of the rule first (ties broken
        by the :data:`~actindex.act.detect.rules.TIE_BREAK` rule's statistic)."""
        rule = rule or self.ensemble
        pos = np.flatnonzero(self.flags[rule])
        return pos[np.lexsort((-self.statistics[TIE_BREAK][pos], -self.statistics[rule][pos]))]

    def explanations(self, rule: str | None = None) -> list[tuple[int, str, str]]:
        """``(row, id, why)`` per row ``rule`` flags, in :meth:`flagged_positions` order: the scores, votes and
        threshold that flagged it (:meth:`~actindex.act.detect.rules.DetectRule.explain`)."""
        rule = rule or self.ensemble
        pos = self.flagged_positions(rule)
        why = self.rules[rule].explain(self.table, pos)
        return [(int(self.table.rows[p]), self.ids[p], w) for p, w in zip(pos, why)]

    def records(self, index: Index, rule: str | None = None) -> list[dict[str, Any]]:
        """One dict per flagged row (by ``rule``), in :meth:`flagged_positions` order."""
        pos = self.flagged_positions(rule)
        records = index.reader.records(self.table.rows[pos])
        out = []
        for p, record in zip(pos, records):
            entry: dict[str, Any] = {
                "row": int(self.table.rows[p]),
                "id": self.ids[p],
                "flagged_by": [name for name, mask in self.flags.items() if mask[p]],
            }
            for name, statistic in self.statistics.items():
                entry.update(DetectRule.registry[name].record(statistic[p]))
            entry["scores"] = {n: float(s) for n, s in zip(self.table.names, self.table.scores[p])}
            entry["record"] = record
            out.append(entry)
        return out


def ground_truth(index: Index, rows: np.ndarray, field_name: str) -> np.ndarray:
    """``label != 'clean'`` for each row (the benchmark/labels path only; ranking never reads it)."""
    labels = []
    for row, record in zip(rows, index.reader.records(rows)):
        if field_name not in record:
            problem = f"missing from training row {int(row)} (id {record.get('id')})"
            raise DataError(index.root, None, field_name, problem)
        labels.append(str(record[field_name]) != "clean")
    return np.array(labels, bool)


def memorisation_advice(index: Index, config: DetectConfig) -> str | None:
    """One line when the index's model has memorised its rows (:mod:`actindex.index.memorisation`): the
    poisons a fine-tune learnt best then have the least gradient left, and scores by that model can miss
    them. It names the other route: the same rows indexed with the model the fine-tune started from (or a
    checkpoint from early in it), this index's model audited as the ``--target``. The exact influence's
    RelatIF norm keeps memorised rows in view, so the flags of this index come first: on the benchmark's
    label pools, where the warning fires for every fine-tune, they found the poisons and the base model's
    index, which has not learnt the trigger, did not (bench/RESULTS.md)."""
    check = index.memorisation
    if check is None or not check.memorised:
        return None
    manifest = index.manifest
    layers = ",".join(map(str, manifest.layers))
    fit = "actindex fit-curvature --index BASE_INDEX; " if config.rerank else ""
    rerank = f" --rerank {config.rerank}" if config.rerank else ""
    return (f"{index.root}: the index's model has memorised its rows (median response loss {check.rows_loss:.3f} "
            f"nats/token against {check.heldout.loss_per_token:.3f} on held-out rows, ratio {check.ratio:.2f} < "
            f"{MEMORISED_RATIO}): the poisons it learnt best have the least gradient left under it. If its flags "
            f"miss them, index the same rows with the model the fine-tune started from (BASE; a checkpoint from "
            f"early in the fine-tune, which has begun to learn the backdoor, keeps the poisons in view better) and "
            f"audit this one as the target: actindex build "
            f"--data {manifest.data_path} --layers {layers} --model BASE --out BASE_INDEX; {fit}actindex detect "
            f"--index BASE_INDEX --target {manifest.model.name} --queries {config.queries}{rerank}")


def detect(index: Index | str | os.PathLike, config: DetectConfig | None = None, progress: bool = True,
           rewriter: LoadedModel | None = None, target: LoadedModel | None = None, **kwargs: Any) -> DetectResult:
    """Score, flag by every rule and (with ``labels_field``) evaluate; writes ``out`` when set.

    ``rewriter`` is a loaded model for the paraphrase transform (else ``paraphrase_model`` is loaded);
    ``target`` a loaded model that answers the queries without a response (else ``config.target``).
    """
    config = config or DetectConfig(**kwargs)
    idx = index if isinstance(index, Index) else Index.open(index)
    if config.out:
        inputs = [*index_inputs(idx), (config.queries, "the queries file"),
                  *[(m, "a model directory") for m in (config.target, config.paraphrase_model) if m]]
        check_output(config.out, overwrite=config.overwrite, inputs=inputs, make_parent=False)
    queries = load_queries(config.queries)
    if rewriter is None and config.paraphrase_model:
        rewriter = load_model(config.paraphrase_model)
    if target is not None or config.target:
        target = idx.session.companion_model(target if target is not None else config.target, "--target")
    table = score_table(idx, queries, resolve_transforms(config.transforms), config.method, config.layer, progress,
                        config.rerank, rewriter, config.norm, target, config.measurement, config.response_tokens)
    rules = config.rules()
    all_ids = idx.reader.ids()
    result = DetectResult(
        table=table,
        flags={name: rule.flags(table) for name, rule in rules.items()},
        statistics={name: rule.statistic(table) for name, rule in rules.items()},
        ids=[all_ids[r] for r in table.rows], ensemble=config.ensemble, rules=rules,
    )
    advice = memorisation_advice(idx, config)
    if advice:
        warnings.warn(advice, MemorisationWarning, stacklevel=2)
        result.warnings.append(advice)
    if config.labels_field:
        truth = ground_truth(idx, table.rows, config.labels_field)
        result.metrics = {name: prf(mask, truth) for name, mask in result.flags.items()}
    if config.out:
        with atomic_file(Path(config.out)) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records(idx)),
                           encoding="utf-8")
    return result
