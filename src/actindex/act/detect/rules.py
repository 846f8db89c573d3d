"""The detection rules: ways to flag rows of a score table (``--ensemble``).

A rule is a few lines (:class:`DetectRule`), listed in :data:`RULES`. It reads its settings from a
:class:`~actindex.act.detect.config.DetectConfig` (:meth:`~DetectRule.from_config`, where it also checks them),
gives every row a ``statistic`` (what orders its flagged rows) and a boolean ``flags`` mask; ``record_field``
names the statistic in the flagged rows written by ``--out``. Modules here import no tensor library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from actindex.act.detect.statistics import Gap, GapCut, category_means, gap_cut, support_z, top_count
from actindex.configs import check_choice
from actindex.errors import ActindexError
from actindex.registry import Registered

if TYPE_CHECKING:
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.scoring import ScoreTable


class DetectRule(Registered, noun="ensemble", listed=True):
    """A rule that flags rows of a :class:`~actindex.act.detect.scoring.ScoreTable`; ``statistic`` orders the
    flagged rows."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: the key of the row's statistic in a written record (``None``: not written), and its type there
    record_field: ClassVar[str | None] = None
    record_type: ClassVar[type] = float

    @classmethod
    def from_config(cls, config: DetectConfig) -> DetectRule:
        """This rule with the config's settings (checked)."""
        raise NotImplementedError

    def statistic(self, table: ScoreTable) -> np.ndarray:
        raise NotImplementedError

    def flags(self, table: ScoreTable) -> np.ndarray:
        """Boolean mask over ``table.rows``."""
        raise NotImplementedError

    @classmethod
    def record(cls, statistic: float) -> dict[str, Any]:
        """A row's statistic as its record writes it (``{}`` when the rule writes none)."""
        return {cls.record_field: cls.record_type(statistic)} if cls.record_field else {}

    def explain(self, table: ScoreTable, positions: np.ndarray) -> list[str]:
        """One line per row of ``table`` at ``positions``: why the rule flags it (or not): the scores it read,
        the threshold or votes they met."""
        raise NotImplementedError

    def describe(self, table: ScoreTable) -> str | None:
        """The threshold the rule drew on this table, when it draws one from the table itself."""
        return None


class ThresholdRule(DetectRule):
    """A rule that flags the rows whose statistic is at least the rule's ``threshold`` (a dataclass field of
    the subclass); ``formula`` names the statistic in an explanation."""

    threshold: float
    formula: ClassVar[str]

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.statistic(table) >= self.threshold

    def parts(self, table: ScoreTable) -> tuple[list[str], np.ndarray]:
        """``(names, values)``: the per-column or per-category scores the statistic is made of."""
        raise NotImplementedError

    def explain(self, table: ScoreTable, positions: np.ndarray) -> list[str]:
        stat = self.statistic(table)
        names, values = self.parts(table)
        return [f"{self.formula} = {stat[p]:.2f} {'>=' if stat[p] >= self.threshold else '<'} threshold "
                f"{self.threshold:g} ({named(names, values[p])})" for p in positions]


def named(names: list[str], values: np.ndarray) -> str:
    """``name value, ...`` with two decimals."""
    return ", ".join(f"{n} {v:.2f}" for n, v in zip(names, values))


@dataclass
class VarianceRule(ThresholdRule):
    """Flag ``v_i = mean_T z_{T,i} - std_T z_{T,i} >= threshold`` (robust z per transform)."""

    name: ClassVar[str] = "variance"
    help: ClassVar[str] = "mean_T z - std_T z over the robustly standardised columns"
    record_field: ClassVar[str] = "variance_statistic"
    formula: ClassVar[str] = "mean z - std z"
    threshold: float = 3.0

    @classmethod
    def from_config(cls, config: DetectConfig) -> VarianceRule:
        return cls(config.threshold)

    def statistic(self, table: ScoreTable) -> np.ndarray:
        z = table.z()
        return z.mean(axis=1) - z.std(axis=1)

    def parts(self, table: ScoreTable) -> tuple[list[str], np.ndarray]:
        return [f"z {n}" for n in table.names], table.z()


#: what each score column is standardised against: the rows that support the queries, or all of them
VOTE_SCALES = ("support", "all")


@dataclass
class VotingRule(DetectRule):
    """Each category votes for rows in its top ``top`` with mean standardised score ``>= z``; flag
    ``votes >= min_votes``.

    ``min_votes = None`` asks for every category present. ``scale``: ``support`` standardises each column
    against the rows with ``s > 0`` (:func:`support_z`), ``all`` against the whole column (:func:`robust_z`).
    """

    name: ClassVar[str] = "voting"
    help: ClassVar[str] = "votes of the transform categories (original, negation, lexical, syntax, paraphrase)"
    record_field: ClassVar[str] = "votes"
    record_type: ClassVar[type] = int
    top: float = 0.1
    z: float = 2.0
    min_votes: int | None = None
    scale: str = "support"

    def __post_init__(self) -> None:
        if self.top <= 0:
            raise ActindexError(f"--vote-top must be positive, got {self.top}")
        if self.min_votes is not None and self.min_votes < 1:
            raise ActindexError(f"--min-votes must be at least 1, got {self.min_votes}")
        check_choice("--vote-scale", self.scale, VOTE_SCALES)

    @classmethod
    def from_config(cls, config: DetectConfig) -> VotingRule:
        return cls(config.vote_top, config.vote_z, config.min_votes, config.vote_scale)

    def category_z(self, table: ScoreTable) -> tuple[list[str], np.ndarray]:
        z = support_z(table.scores) if self.scale == "support" else table.z()
        return category_means(z, table.categories)

    def votes(self, table: ScoreTable) -> np.ndarray:
        _, cz = self.category_z(table)
        n = len(cz)
        k = top_count(self.top, n)
        out = np.zeros(n, np.int64)
        for c in range(cz.shape[1]):
            top = np.argsort(-cz[:, c], kind="stable")[:k]
            vote = np.zeros(n, bool)
            vote[top] = True
            out += vote & (cz[:, c] >= self.z)
        return out

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return self.votes(table).astype(np.float64)

    def needed(self, table: ScoreTable) -> int:
        return self.min_votes if self.min_votes is not None else len(set(table.categories))

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.votes(table) >= self.needed(table)

    def explain(self, table: ScoreTable, positions: np.ndarray) -> list[str]:
        cats, cz = self.category_z(table)
        k = top_count(self.top, len(cz))
        rank = np.argsort(np.argsort(-cz, axis=0, kind="stable"), axis=0, kind="stable") + 1
        votes, needed = self.votes(table), self.needed(table)
        out = []
        voted = (rank <= k) & (cz >= self.z)
        for p in positions:
            each = [f"{c} z {cz[p, j]:.2f} rank {rank[p, j]}{' (vote)' if voted[p, j] else ''}"
                    for j, c in enumerate(cats)]
            out.append(f"{votes[p]} of {needed} votes needed ({', '.join(each)}; a category votes for its top {k} "
                       f"rows with z >= {self.z:g})")
        return out


@dataclass
class BothRule(DetectRule):
    """Flag the rows both ``variance`` and ``voting`` flag; their order is the variance statistic's."""

    name: ClassVar[str] = "both"
    help: ClassVar[str] = "flagged by variance and by voting"
    variance: VarianceRule = field(default_factory=VarianceRule)
    voting: VotingRule = field(default_factory=VotingRule)

    @classmethod
    def from_config(cls, config: DetectConfig) -> BothRule:
        return cls(VarianceRule.from_config(config), VotingRule.from_config(config))

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return self.variance.statistic(table)

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.variance.flags(table) & self.voting.flags(table)

    def explain(self, table: ScoreTable, positions: np.ndarray) -> list[str]:
        return [f"variance: {v}; voting: {w}" for v, w in zip(self.variance.explain(table, positions),
                                                            self.voting.explain(table, positions))]


@dataclass
class SoftVotingRule(ThresholdRule):
    """Flag ``mean_c mean_{T in c} u_{T,i} >= threshold``, ``u`` the scores standardised against their
    supporters (:func:`support_z`; module docstring of :mod:`actindex.act.detect`)."""

    name: ClassVar[str] = "soft-voting"
    help: ClassVar[str] = "mean over the categories of the supporter-standardised scores"
    record_field: ClassVar[str] = "soft_voting_statistic"
    formula: ClassVar[str] = "mean category z"
    threshold: float = 2.5

    @classmethod
    def from_config(cls, config: DetectConfig) -> SoftVotingRule:
        return cls(config.soft_threshold)

    def statistic(self, table: ScoreTable) -> np.ndarray:
        return self.parts(table)[1].mean(axis=1)

    def parts(self, table: ScoreTable) -> tuple[list[str], np.ndarray]:
        return category_scores(table)


def category_scores(table: ScoreTable) -> tuple[list[str], np.ndarray]:
    """``(categories, cz)``: ``cz[i, c]`` the mean over category ``c``'s transforms of row ``i``'s score
    standardised against the supporters (:func:`support_z`)."""
    return category_means(support_z(table.scores), table.categories)


@dataclass
class GapRule(DetectRule):
    """Flag the rows above the gaps at the top of the consensus ``c_i = mean_c mean_{T in c} u_{T,i}`` (soft
    voting's statistic) that a clean tail would open with probability at most ``alpha``: :func:`gap_cut`.

    The threshold is read off the table. A backdoor's poisons share one cause, the trigger, so they stand
    together above the clean rows, whose top scores trail off; how far above depends on how well the
    backdoor took and on its answers, so no fixed threshold holds across backdoors. The spacings of the rows
    below a gap measure how far apart clean rows fall, and a gap moves the cut only when a clean exponential
    tail opens one as wide among the ``K`` candidate ranks with chance at most ``alpha``. The cut lies within
    the top ``window`` of the rows: poisons are assumed to be at most that share of them."""

    name: ClassVar[str] = "gap"
    help: ClassVar[str] = "rows above a gap in the category-mean score wider than a clean tail opens"
    record_field: ClassVar[str] = "consensus"
    window: float = 0.1
    alpha: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.window < 1:
            raise ActindexError(f"--gap-window must be a fraction between 0 and 1, got {self.window}")
        if not 0 < self.alpha < 1:
            raise ActindexError(f"--gap-alpha must be a probability between 0 and 1, got {self.alpha}")

    @classmethod
    def from_config(cls, config: DetectConfig) -> GapRule:
        return cls(config.gap_window, config.gap_alpha)

    def consensus(self, table: ScoreTable) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(categories, category scores, consensus)``: the mean supporter z per category, and their mean."""
        cats, cz = category_scores(table)
        return cats, cz, cz.mean(axis=1)

    def cut(self, table: ScoreTable) -> GapCut:
        return gap_cut(self.consensus(table)[2], self.window, self.alpha)

    def statistic(self, table: ScoreTable) -> np.ndarray:
        """The consensus (which orders the flagged rows)."""
        return self.consensus(table)[2]

    def flags(self, table: ScoreTable) -> np.ndarray:
        return self.cut(table).flags(len(table.rows))

    def describe(self, table: ScoreTable) -> str:
        """Where the cut falls on this table and why: each gap that moved it, and the most significant that did
        not."""
        cut = self.cut(table)
        if not cut.gaps:
            return "too few rows for a gap test"

        def told(g: Gap) -> str:
            return (f"after rank {g.rank} the consensus falls from {cut.ranked[g.rank - 1]:.2f} to "
                    f"{cut.ranked[g.rank]:.2f}, {g.ratio:.2f} times the median spacing of the {g.references} rows "
                    f"below; a clean tail opens that with chance {g.pvalue:.2g}, x {g.candidates} "
                    f"candidate{'s' if g.candidates != 1 else ''} = "
                    f"{g.candidates * g.pvalue:.2g} {'<=' if g.cleared else '>'} {self.alpha:g}")

        moved = [told(g) for g in cut.gaps if g.cleared]
        last = cut.gaps[-1]
        head = f"cut after rank {cut.k} (of the top {cut.window}): " if cut.k else \
            f"no cut within the top {cut.window}: "
        tail = [] if last.cleared else [f"the most significant gap below it: {told(last)}" if moved else
                                        f"the most significant gap: {told(last)}"]
        return head + "; ".join(moved + tail)

    def explain(self, table: ScoreTable, positions: np.ndarray) -> list[str]:
        cats, cz, c = self.consensus(table)
        cut = self.cut(table)
        rank = np.empty(len(c), np.int64)
        rank[cut.order] = np.arange(1, len(c) + 1)
        where = f"the cut after rank {cut.k}" if cut.k else "no cut"
        return [f"consensus {c[p]:.2f} ({named(cats, cz[p])}), rank {rank[p]}, "
                f"{'above' if rank[p] <= cut.k else 'not above'} {where}" for p in positions]


#: the registry, in the order of the CLI's table and of a flagged row's record fields (the default first)
RULES = (GapRule, VarianceRule, VotingRule, BothRule, SoftVotingRule)
DetectRule.register(*RULES)
#: the rule whose statistic breaks ties in the order of any rule's flagged rows
TIE_BREAK = VarianceRule.name


def rule_names() -> list[str]:
    """Every registered rule, for the choices of ``--ensemble``."""
    return list(DetectRule.registry)
