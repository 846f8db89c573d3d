"""A checkpoint set opened for querying: indexes of the same rows, each built with its own checkpoint.

``CheckpointSet.open("OUT")`` reads a set written by ``ActindexCallback`` (``OUT/checkpoints.json``),
``CheckpointSet.open(["a", "b"])`` takes any indexes of the same rows. Every index answers the query with
its own model (the (method, layer) members of :class:`~actindex.query.pipeline.QueryPipeline`, calibrated
over that index), and a :class:`~actindex.query.checkpoints.fusion.CheckpointFusion` rule fuses the answers.
Each hit is shown with the calibrated TracIn score ``S(x) = sum_c s_c(x)`` and each ``s_c(x)``
(``checkpoint_scores``); ``fused`` is the rule's own score, which orders the rows.

Indexes whose rows differ (data sha256, ids or their order) are refused in one line: a row's scores
under two checkpoints are only comparable when it is the same row. So is the same index (or the same weights)
given twice, which would count its scores twice. Each checkpoint is labelled by its step, or by its
directory's name, with as many parent folders as make the labels differ.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from actindex.api import Index
from actindex.errors import ActindexError, IndexFileError
from actindex.index.checkpoints import CheckpointList, is_checkpoint_set
from actindex.index.memorisation import warn_if_memorised
from actindex.query.behaviors import Behavior
from actindex.query.checkpoints.config import DEFAULT_CHECKPOINT_FUSION
from actindex.query.checkpoints.fusion import CheckpointFusion, CheckpointRanking, tracin_scores
from actindex.query.fusion import BOTTOM, TOP
from actindex.query.pipeline import QueryConfig, Ranking, describe
from actindex.query.result import Hit, QueryResult


def labels(indexes: Sequence[Index]) -> list[str]:
    """A distinct label per index: ``step-NNNNNN`` of its training step, else its directory's name, else the
    last folders of its resolved path, as many as make it differ from every other label."""
    def label(idx: Index, depth: int) -> str:
        checkpoint = idx.manifest.checkpoint
        if checkpoint is not None and depth == 1:
            return f"step-{checkpoint.step:06d}"
        return "/".join(idx.root.resolve().parts[-depth:])

    depths = [1] * len(indexes)
    while True:
        out = [label(idx, d) for idx, d in zip(indexes, depths)]
        clashing = [i for i, x in enumerate(out)
                    if out.count(x) > 1 and depths[i] < len(indexes[i].root.resolve().parts)]
        if not clashing:
            return out
        for i in clashing:
            depths[i] += 1


def check_distinct(indexes: Sequence[Index]) -> None:
    """Refuse, in one line, the same index (one resolved directory) or the same weights (one model fingerprint)
    given twice: a checkpoint counted twice doubles its share of every score."""
    seen: dict[tuple[str, str], Index] = {}
    for idx in indexes:
        for key in (("directory", str(idx.root.resolve())), ("model", idx.manifest.model.fingerprint)):
            if key in seen:
                same = "is the same index as" if key[0] == "directory" else "was built with the same weights as"
                raise IndexFileError(f"cannot query {seen[key].root} and {idx.root} as checkpoints: {idx.root} {same} "
                                     f"{seen[key].root} (a checkpoint counted twice doubles its scores); give each "
                                     "checkpoint once")
            seen[key] = idx


def check_same_rows(indexes: Sequence[Index]) -> None:
    """Refuse, in one line, indexes that do not hold the same rows in the same order."""
    first = indexes[0]
    for idx in indexes[1:]:
        a, b = [f.sha256 for f in first.manifest.data], [f.sha256 for f in idx.manifest.data]
        problem = None
        if a != b:
            problem = f"they index other data (sha256 {a[0][:12]}… against {b[0][:12]}…)"
        elif first.reader.ids() != idx.reader.ids():
            ids_a, ids_b = first.reader.ids(), idx.reader.ids()
            at = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
            if at == min(len(ids_a), len(ids_b)):
                problem = f"they hold {len(ids_a)} and {len(ids_b)} rows"
            else:
                problem = f"row {at} is {ids_a[at]!r} in the first and {ids_b[at]!r} in the second"
        if problem:
            raise IndexFileError(f"cannot query {first.root} and {idx.root} as checkpoints of the same rows: "
                                 f"{problem}; index the same rows with every checkpoint")


class CheckpointSet:
    """Indexes of the same rows by several checkpoints, ordered by training step (see the module docstring)."""

    def __init__(self, indexes: Sequence[Index]):
        if not indexes:
            raise ActindexError("a checkpoint set needs at least one index")
        steps = [idx.manifest.checkpoint.step if idx.manifest.checkpoint else None for idx in indexes]
        if all(step is not None for step in steps):
            indexes = [idx for _, idx in sorted(zip(steps, indexes), key=lambda pair: pair[0])]
        check_distinct(indexes)
        check_same_rows(indexes)
        self.indexes = list(indexes)
        self.labels = labels(self.indexes)

    @classmethod
    def open(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], cache: bool = True,
             progress: bool = False) -> CheckpointSet:
        """Open a checkpoint set directory (``checkpoints.json``) and/or index directories."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        dirs: list[Path] = []
        for path in paths:
            if is_checkpoint_set(path):
                dirs += CheckpointList.read(path).index_dirs(path)
            else:
                dirs.append(Path(path))
        return cls([Index.open(d, cache=cache, progress=progress) for d in dirs])

    def __len__(self) -> int:
        return len(self.indexes)

    def __iter__(self) -> Iterator[Index]:
        return iter(self.indexes)

    def __repr__(self) -> str:
        return f"CheckpointSet({', '.join(self.labels)}: {len(self.indexes[0])} rows)"

    def select(self, step: int) -> Index:
        """The index built at training step ``step``."""
        for idx in self.indexes:
            if idx.manifest.checkpoint is not None and idx.manifest.checkpoint.step == step:
                return idx
        have = [str(idx.manifest.checkpoint.step) for idx in self.indexes if idx.manifest.checkpoint is not None]
        raise IndexFileError(f"no index of step {step} in the checkpoint set (steps: {', '.join(have) or 'none'})")

    def describe(self) -> list[dict[str, Any]]:
        """The checkpoints as a query result lists them."""
        out = []
        for idx, label in zip(self.indexes, self.labels):
            checkpoint = idx.manifest.checkpoint
            out.append({"label": label, "step": checkpoint.step if checkpoint else None,
                        "epoch": checkpoint.epoch if checkpoint else None, "index": str(idx.root),
                        "fingerprint": idx.manifest.model.fingerprint})
        return out

    # ---- the query --------------------------------------------------------------------------
    def _rank(self, idx: Index, label: str, behavior: str | Behavior, config: QueryConfig, depth: int,
              bottom_depth: int) -> tuple[Behavior, CheckpointRanking, dict[str, float]]:
        """One checkpoint's answer: its members ranked and calibrated over its own index, and its fused sides."""
        raw, completed, _ = idx.session.prepare_behavior(behavior)
        pipeline = idx.session.pipeline()
        idx.session.query_context().start()
        members = pipeline.member_rankings(pipeline.formed(completed, config.resolved_method(), config.layer),
                                           depth, bottom_depth)
        top, bottom = pipeline.fused(members, config.resolved_fusion(), depth, bottom_depth)
        idx.session.remember(raw, completed)
        timings = dict(pipeline.timings, **{"model pass": idx.session.query_context().model_seconds})
        return completed, CheckpointRanking(label, members, top.rows, bottom.rows), timings

    def _side(self, rule: CheckpointFusion, rankings: list[CheckpointRanking], side: str, n: int) -> list[Hit]:
        """The fused hits of one side, cut at ``n`` (0: every ranked row), with their per-checkpoint scores."""
        rows, fused = rule.fuse(rankings, side)
        rows, fused = (rows, fused) if n <= 0 else (rows[:n], fused[:n])
        hits = self.indexes[0].session.pipeline().hits(Ranking(fused, rows, tracin_scores(rankings, rows)))
        per_checkpoint = {r.label: r.scores(rows) for r in rankings}
        for i, hit in enumerate(hits):
            hit.checkpoint_scores = {label: float(scores[i]) for label, scores in per_checkpoint.items()}
        return hits

    def query(self, behavior: str | Behavior, config: QueryConfig | None = None,
              checkpoint_fusion: str = DEFAULT_CHECKPOINT_FUSION, **options: Any) -> QueryResult:
        """Rank the rows for a behaviour with every checkpoint and fuse the answers with ``checkpoint_fusion``
        (a :class:`~actindex.query.checkpoints.fusion.CheckpointFusion` rule); ``options`` are
        :class:`~actindex.query.pipeline.QueryConfig` fields."""
        config = config or QueryConfig(**options)
        rule = CheckpointFusion.get(checkpoint_fusion)
        if config.rerank is not None:
            raise ActindexError("--rerank re-scores with one checkpoint's curvature: pick one with --checkpoint STEP")
        started = time.perf_counter()
        depth = 0 if config.k <= 0 else max(1000, 10 * config.k)
        bottom_depth = max(1000, 10 * config.bottom_k) if config.bottom_k else 0
        rankings, timings, warnings, completed = [], {}, [], None
        for idx, label in zip(self.indexes, self.labels):
            completed, ranking, spent = self._rank(idx, label, behavior, config, depth, bottom_depth)
            rankings.append(ranking)
            for name, seconds in spent.items():
                timings[name] = timings.get(name, 0.0) + seconds
            warned = warn_if_memorised(idx.memorisation, idx.root)
            if warned:
                warnings.append(warned)
        top = self._side(rule, rankings, TOP, config.k)
        bottom = self._side(rule, rankings, BOTTOM, config.bottom_k) if config.bottom_k else []
        method = config.resolved_method()
        members = [{"checkpoint": r.label, **describe(m)} for r in rankings for m in r.members]
        return QueryResult(
            behavior=completed.name, method=f"{method} over {len(rankings)} checkpoints ({rule.name})",
            family=f"{rule.name}(" + ", ".join(r.label for r in rankings) + ")", top=top, bottom=bottom,
            seconds=time.perf_counter() - started, notes=list(completed.notes), members=members,
            timings={k: round(v, 4) for k, v in timings.items()}, warnings=warnings, checkpoints=self.describe(),
        )
