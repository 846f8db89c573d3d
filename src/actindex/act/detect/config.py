"""The settings of ``actindex detect`` (:class:`DetectConfig`), the same for the CLI and the Python API.

Every choice comes from where it is defined: the transforms, rules and norms from their registries,
the methods and curvature kinds from the query stage's. This module imports no tensor library, so
``actindex detect --help`` loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass

from actindex.act.detect.norms import Norm, norm_names
from actindex.act.detect.rules import (
    VOTE_SCALES,
    DetectRule,
    GapRule,
    SoftVotingRule,
    VarianceRule,
    VotingRule,
    rule_names,
)
from actindex.act.detect.transforms import resolve_transforms
from actindex.configs import check_choices, option
from actindex.core import MEASUREMENTS
from actindex.errors import ActindexError
from actindex.query.curvature import kind_names
from actindex.query.methods import DEFAULT_VECTOR_METHOD, method_names

#: the response tokens the gradients sum over: the responses' own tokens, or with the template's closing ones
RESPONSE_TOKENS = ("content", "all")


def _norms_help() -> str:
    described = [f"{name} ({cls.help})" for name, cls in Norm.registry.items()]
    return ("With --rerank, each row's influence is divided by: " + ", ".join(described[:-1]) + " or "
            + described[-1] + ".")


@dataclass
class DetectConfig:
    """Settings of ``actindex detect``: flag training rows whose influence survives semantic transforms."""

    queries: str = option("JSONL/parquet of test prompts: {prompt, response|reference?} or training-row shapes.", "")
    transforms: str = option("all, fast (no model generation) or a comma list of transform names.", "all")
    ensemble: str = option("Rule whose flagged rows are written and explained (both: the rows flagged by variance "
                           "and by voting).", GapRule.name, choices=rule_names)
    method: str = option("Query method whose per-example vectors score the rows.", DEFAULT_VECTOR_METHOD,
                         choices=method_names)
    layer: int | None = option("Layer (default: the indexed layer nearest 60% of the depth).", None)
    rerank: str | None = option(
        "Score every row by exact influence preconditioned with the index's fitted factors (run fit-curvature "
        "first) instead of search cosines: one model pass over the rows for all transforms.",
        None, choices=kind_names,
    )
    norm: str = option(_norms_help(), "relatif", choices=norm_names)
    measurement: str = option(
        "With --rerank, the function of the queries' responses whose gradient q_T is: loss (-log p of each "
        "response token) or margin (minus its log-odds, log p / (1 - p)). A loss gradient fades as the model "
        "grows sure of the behaviour, (1 - p) times the margin's, so the queries it already answers as the "
        "attack wants count least; the margin weighs every query alike.",
        "loss", choices=MEASUREMENTS,
    )
    response_tokens: str = option(
        "With --rerank, the response tokens both gradients sum over: content (the responses' own tokens) or "
        "all (the build's loss: with the tokens the chat template closes each response with, the same for "
        "every row). A one-word answer is a third of its response; on rows the model has memorised the "
        "closing tokens can set a gradient's direction.",
        "content", choices=RESPONSE_TOKENS,
    )
    target: str | None = option(
        "Model whose behaviour is audited, when it is not the index's (same tokenizer): it answers the queries "
        "that have no response, and the index's model scores the rows. E.g. an index built with a checkpoint "
        "from before the fine-tune memorised its poisons audits the fine-tuned model.",
        None,
    )
    paraphrase_model: str | None = option(
        "Model that writes the paraphrase transform (default: the index's model; a model fine-tuned to answer "
        "with a label cannot paraphrase).",
        None,
    )
    threshold: float = option("variance rule: flag rows with mean_T z - std_T z >= this.", VarianceRule.threshold)
    vote_top: float = option("voting rule: each category votes within its top rows (fraction < 1, or a count).",
                             VotingRule.top)
    vote_z: float = option("voting rule: a vote also needs the category's standardised score >= this.", VotingRule.z)
    vote_scale: str = option("voting rule: standardise each score column against the rows that support the "
                             "queries (support: s > 0) or the whole column (all).", VotingRule.scale,
                             choices=VOTE_SCALES)
    min_votes: int | None = option("voting rule: votes needed (default: every category).", VotingRule.min_votes)
    soft_threshold: float = option("soft-voting rule: flag rows whose category-mean score, standardised against "
                                   "the rows that support the queries, is >= this.", SoftVotingRule.threshold)
    gap_window: float = option("gap rule: the cut lies within this top fraction of the rows.", GapRule.window)
    gap_alpha: float = option("gap rule: a gap moves the cut when a clean exponential tail opens one as wide "
                              "among the candidate ranks with at most this chance.", GapRule.alpha)
    labels_field: str | None = option("Record field with ground-truth labels (non-'clean' = poisoned): prints P/R/F1.",
                                      None)
    out: str | None = option("JSONL file for the flagged rows with their per-transform scores.", None)
    overwrite: bool = option("Replace OUT if it exists (a regular file only).", False)

    def __post_init__(self) -> None:
        if not self.queries:
            raise ActindexError("detect needs --queries FILE")
        check_choices(self)
        self.rules()  # each rule checks its own settings
        resolve_transforms(self.transforms)

    def rules(self) -> dict[str, DetectRule]:
        """Every registered rule with these settings, by name, in registry order."""
        return {name: rule.from_config(self) for name, rule in DetectRule.registry.items()}
