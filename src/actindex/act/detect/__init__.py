"""Stage 11 — poison detection: influence that survives semantic transforms (docs/design.md#detection).

A backdoor's poisoned training rows drive the model's answer to a triggered prompt whatever the
prompt says; clean rows drive it through the prompt's meaning. So each test query is rewritten by
a set of semantic transforms (negations, antonyms, clause order, a paraphrase by the model), every
training row is scored under the original and under each transform, and the rows whose influence
stays strongly positive across all of them are flagged.

Query vectors. For a transform ``T`` (the identity ``original`` included) and test queries
``(x_j, y_j)``, ``j = 1..n``:

    psi_T = norm(mean_j v_l(T(x_j), y_j^T))

where ``v_l`` is the method's per-example vector (the treatment side of :mod:`actindex.query.methods`:
the residual change ``t_l`` for ``residual-change``, the mean activation for ``residual-difference``,
the projected gradient for ``gradient``), computed exactly as the build computes training vectors,
and ``y_j^T`` is the query's given response (``response`` or ``reference``) or, when it has none,
the greedy answer to ``T(x_j)`` of the model audited (``target``, by default the index's model). A
given response is kept under every transform: a backdoored model answers a triggered prompt the
same way whatever the rest of it says, which is what the given response records. Queries a
transform does not apply to (no auxiliary verb to negate, no word in the antonym lexicon...) are
left out of that transform's mean. Scores ``s_{T,i}`` are the cosines of ``psi_T`` with every
stored training vector: one full search per transform.

With ``rerank`` (``ekfac`` or ``linfac``, the index's fitted curvature) the scores are exact
influences instead of search cosines, every transform from one pass over the training rows:

    s_{T,m} = <precond(q_T), G_m> / sqrt(<G_m, precond(G_m)>),     q_T = mean_j grad L(T(x_j), y_j^T),

``G_m`` the row's loss gradient over the curvature's modules (docs/design.md#influence; positive = training on ``m``
makes the queries' responses likelier). The denominator is RelatIF's (Barshan et al. 2020; ``norm``
also offers ``||G_m||`` or none): like the index's cosines it scores a row's direction, not its
size, so a row the model has memorised (a learned poison: small gradient) stays in view. The
preconditioner discounts the directions every row of a common answer shares (all the rows that
answer "Negative"), which is what leaves a trigger visible (bench/RESULTS.md, "Poison detection
with exact EK-FAC influence").

Both gradients sum over the responses' content tokens (``response_tokens="content"``), not the
tokens the chat template closes every response with (``<|im_end|>`` and a newline): those are the
same in every row, two of the three response tokens of a one-word label, and on a memorised row,
where every token is near certain, they can set the gradient's direction (``all`` keeps them, as
the build's loss does). With ``measurement="margin"`` the queries differentiate minus the log-odds
of their response tokens instead of ``L`` (TRAK's margin, kronfluence's classification
measurement): ``grad L = (1 - p) grad margin`` per token, so under the loss the queries the model
already answers as the attack wants count least, under the margin every token counts alike.

Ensembles (rows ``i``, transforms ``T``, each score column robustly standardised as
``z_{T,i} = (s_{T,i} - median_i s_T) / (1.4826 MAD_i s_T)``):

* ``variance``: ``v_i = mean_T z_{T,i} - std_T z_{T,i}`` (a lower confidence bound: high when the
  row is consistently far above the typical row, penalised when its score moves with the
  transforms); flag ``v_i >= threshold``.
* ``voting``: the transforms are grouped into categories (original, negation, lexical, syntax,
  paraphrase); a category scores a row by the mean standardised score of its transforms and votes
  for the row when that is at least ``vote_z`` and the row is among the category's top ``vote_top``
  rows (a fraction of the rows, or a count); flag rows with at least ``min_votes`` votes (default:
  every category present). The scores are standardised against the rows that support the queries
  (``u`` below, ``vote_scale="support"``, the default) or against the whole column (``z``,
  ``vote_scale="all"``).
* ``both``: rows flagged by both rules.
* ``soft-voting``: the categories average instead of voting, on a scale fitted to the rows that
  support the queries. Influence has a meaningful zero (``s > 0``: training on the row makes the
  queries' responses likelier), and when half the rows give the queries' answer (every clean row
  answering "Negative" in a sentiment set) a column is two humps, whose MAD measures the gap between
  them rather than the spread a poison must stand out from. So each column is standardised against
  its supporters, ``u_{T,i} = (s_{T,i} - median_{s_T > 0}) / (1.4826 MAD_{s_T > 0})`` (the whole
  column when fewer than ``MIN_SUPPORT_SHARE`` of the rows support it: with poisons at most 10% of
  the rows they are then at most 40% of the supporters, below the MAD's 50% breakdown point), a
  category scores a row by the mean ``u`` of its transforms, and a row is flagged when the mean of
  its category scores is at least ``soft_threshold`` (bench/RESULTS.md, "soft voting").
* ``gap`` (the default): the same consensus ``c_i`` (mean over the categories of the mean ``u``), its
  threshold read off the table. Sorted, ``c_(1) >= c_(2) >= ...``, with ``m`` rows above the cut (0 at
  first), the normalised spacings ``D_j = (j - m)(c_(j) - c_(j+1))`` are independent and identically
  exponential in an exponential tail (Rényi), so ``ratio_k = D_k / median(D_{k+1..n/2})`` has a known
  chance ``p_k`` (:func:`~actindex.act.detect.statistics.tail_pvalue`); the most significant candidate
  ``m < k <= K = ceil(gap_window n)`` moves the cut to ``k`` when ``(K - m) p_k <= gap_alpha``, and the
  step repeats below it: a backdoor's poisons stand together above the clean rows by a gap that a clean
  tail opens with chance at most about ``gap_alpha`` (:func:`~actindex.act.detect.statistics.gap_cut`).

The package, step by step: :mod:`.config` (the settings), :mod:`.queries` (the test queries),
:mod:`.transforms` (the rewrites, a class each, over the word lists of :mod:`.lexicon`),
:mod:`.scoring` (the score table: one column per transform, search cosines or exact influence,
divided by a :mod:`.norms` entry), :mod:`.statistics` (robust standardisation, precision/recall),
:mod:`.rules` (the flagging rules, a class each) and :mod:`.stage` (the whole detection).
Only :mod:`.scoring` and :mod:`.stage` load a tensor library; their names are imported on first use.
"""

from __future__ import annotations

from actindex.act.detect.config import MEASUREMENTS, RESPONSE_TOKENS, DetectConfig
from actindex.act.detect.norms import Norm, norm_names
from actindex.act.detect.queries import TestQuery, load_queries
from actindex.act.detect.rules import (
    TIE_BREAK,
    VOTE_SCALES,
    BothRule,
    DetectRule,
    GapRule,
    SoftVotingRule,
    VarianceRule,
    VotingRule,
    rule_names,
)
from actindex.act.detect.statistics import (
    MIN_SUPPORT_SHARE,
    GapCut,
    category_means,
    gap_cut,
    prf,
    robust_location_scale,
    robust_z,
    support_z,
    top_count,
)
from actindex.act.detect.transforms import MAX_NEW_TOKENS, ORIGINAL, Transform, resolve_transforms
from actindex.lazy import lazy_exports

#: the rules' names in registry order (``--ensemble``), and the norms' (``--norm``)
ENSEMBLE_CHOICES = tuple(DetectRule.registry)
NORMS = tuple(Norm.registry)

# the rules under their earlier names
Ensemble, VarianceEnsemble, VotingEnsemble, SoftVotingEnsemble = DetectRule, VarianceRule, VotingRule, SoftVotingRule

#: names that load a tensor library, imported on first use (PEP 562): name -> module
_LAZY = {
    "ScoreTable": "scoring", "QuerySet": "scoring", "query_sets": "scoring", "search_columns": "scoring",
    "influence_columns": "scoring", "score_table": "scoring", "transformed_conversations": "scoring",
    "DetectResult": "stage", "detect": "stage", "ground_truth": "stage",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "ENSEMBLE_CHOICES", "MAX_NEW_TOKENS", "MEASUREMENTS", "MIN_SUPPORT_SHARE", "NORMS", "ORIGINAL", "RESPONSE_TOKENS",
    "TIE_BREAK", "VOTE_SCALES", "BothRule", "DetectConfig", "DetectResult", "DetectRule", "Ensemble", "GapCut",
    "GapRule", "Norm", "QuerySet", "ScoreTable", "SoftVotingEnsemble", "SoftVotingRule", "TestQuery", "Transform",
    "VarianceEnsemble", "VarianceRule", "VotingEnsemble", "VotingRule", "category_means", "detect", "gap_cut",
    "ground_truth", "influence_columns", "load_queries", "norm_names", "prf", "query_sets", "resolve_transforms",
    "robust_location_scale", "robust_z", "rule_names", "score_table", "search_columns", "support_z", "top_count",
    "transformed_conversations",
]
