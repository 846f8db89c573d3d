"""How a correction is judged, before and after: the behaviour margin and the perplexity of held-out rows.

* margin: ``mean_j [mean_t log p(treatment_j) - mean_t log p(control_j)]`` over the held-out pairs
  (``--held-out``, or the behaviour's own pairs); a correction should lower it;
* perplexity: ``exp(-sum log p / sum |R|)`` over the response tokens of a fixed random sample of the
  index's rows outside ``D+``, ``D-`` and ``D0``; a correction should leave it where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actindex.act.correct.logprobs import response_log_probs
from actindex.act.correct.selection import Split
from actindex.core.encode import Encoded
from actindex.core.models import LoadedModel
from actindex.query.behaviors import Behavior, Pair, complete_behavior, load_pairs
from actindex.query.context import encode_conversations, pair_conversations


def behavior_margin(lm: LoadedModel, pairs: Sequence[Pair], max_length: int | None = None, batch_size: int = 8,
                    desc: str | None = None) -> float:
    """``mean_j [mean_t log p(treatment_j) - mean_t log p(control_j)]`` (per-token means over the response)."""
    encoded = encode_conversations(lm, pair_conversations(pairs), max_length)
    total, count = response_log_probs(lm.model, encoded, lm.tokenizer.pad_token_id,
                                      batch_size, desc)
    mean = total / np.maximum(count, 1)
    n = len(pairs)
    return float((mean[:n] - mean[n:]).mean())


def perplexity(lm: LoadedModel, encoded: Sequence[Encoded], batch_size: int = 8, desc: str | None = None) -> float:
    """``exp(-sum_rows sum_{t in R} log p / sum_rows |R|)`` over the response tokens of the rows."""
    total, count = response_log_probs(lm.model, encoded, lm.tokenizer.pad_token_id, batch_size, desc)
    return float(np.exp(-total.sum() / max(int(count.sum()), 1)))


def held_out_pairs(path: str | None, behavior: Behavior, lm: LoadedModel) -> tuple[list[Pair], str]:
    """The pairs of the margin and where they come from: the file ``path`` (completed with ``lm``), else the
    behaviour's own pairs."""
    if path:
        held = Behavior(name="held-out", pairs=load_pairs(Path(path)), source=path)
        return complete_behavior(held, lm).pairs, path
    return behavior.pairs, f"the behaviour's own pairs ({behavior.source or behavior.name}; they also formed the query)"


def perplexity_rows(split: Split, n: int, seed: int) -> np.ndarray:
    """A fixed random sample (``seed``) of at most ``n`` ranked rows outside ``D+``, ``D-`` and ``D0``, sorted."""
    used = np.concatenate([split.pos, split.neg, split.zero])
    valid = np.flatnonzero(np.isfinite(split.influence))
    pool = np.setdiff1d(valid, used)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


@dataclass
class HeldOut:
    """What the correction is judged on: the margin's pairs and the perplexity's rows (see the module docstring)."""

    pairs: list[Pair]
    pairs_source: str
    rows: np.ndarray
    encoded: list[Encoded]
    seed: int

    def measure(self, lm: LoadedModel, max_length: int | None, batch_size: int, when: str,
                progress: bool) -> dict[str, Any]:
        """``{"margin": ..., "perplexity": ...}`` of ``lm`` (perplexity ``None`` without rows)."""
        say = (lambda text: text) if progress else (lambda text: None)
        margin = behavior_margin(lm, self.pairs, max_length, batch_size, say(f"margin ({when})"))
        ppl = perplexity(lm, self.encoded, batch_size, say(f"perplexity ({when})")) if len(self.rows) else None
        return {"margin": margin, "perplexity": ppl}

    def report(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """The ``margin`` and ``perplexity`` entries of ``correction.json``."""
        n = len(self.rows)
        return {
            "margin": {"before": before["margin"], "after": after["margin"],
                       "change": after["margin"] - before["margin"], "pairs": len(self.pairs),
                       "source": self.pairs_source},
            "perplexity": {"before": before["perplexity"], "after": after["perplexity"], "rows": n,
                           "source": f"{n} index rows outside D+, D- and D0 (random, seed {self.seed})"},
        }
