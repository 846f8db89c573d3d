"""Stage 12 — correct: post-train the model against a behaviour from the index's ranking (docs/design.md#correction).

Influence-based optimisation (IBO). Scores ``s_i`` (the index ranking's cosine scores, or any
influence scores) are scaled by their largest magnitude, ``I_i = s_i / max_j |s_j|``, and split into

* ``D+``: strongly positive rows (they push the model towards the behaviour),
* ``D-``: strongly negative rows (they inhibit it; ``I < 0``),
* ``D0``: rows with ``I`` nearest zero (not influential: the model should not move on them).

With ``log r(z) = mean_{t in R} [log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]`` (the
per-token mean log-ratio over the response tokens ``R`` of ``z``; ``pi_ref`` is the model before
correction, its log-probabilities computed once) the objective is

    L_COR  = -E_{z+ in D+, z- in D-} log sigmoid(beta * (-I(z+) log r(z+) - I(z-) log r(z-)))
    L_BD   =  E_{z in D0} [r(z) - log r(z) - 1]          (Bregman divergence of r from 1, >= 0)
    L_prox =  lambda/2 * ||theta - theta_ref||^2          (over the trainable parameters)
    L_IBO  =  L_COR + L_BD + L_prox

``L_COR`` lowers ``r`` on ``D+`` and raises it on ``D-`` in proportion to their influence;
``L_BD`` is zero, with zero gradient, where ``r = 1`` and keeps ``D0`` where it was. Baselines:
gradient ascent on ``D+`` (``L_GA = E_{z in D+} log r(z)``, i.e. maximise the NLL of ``D+``) and
PBO (``L_GA + L_BD + L_prox``). Objectives are registered by subclassing :class:`Objective`.

The trainable parameters are LoRA adapters on every linear projection of the decoder blocks
(attention and MLP) by default, or all weights with ``full=True``. The result is saved as a PEFT
adapter directory (``load_model(dir)`` loads base + adapter) or, with ``merge=True`` or ``full``,
as merged weights (``config.json`` + ``model.safetensors`` + tokenizer), with ``correction.json``.

The ranking model and the corrected model may differ (``target``): a fine-tune that memorised its
planted rows leaves them almost no gradient, so an index built with the fine-tuned model ranks them
poorly, while an index built with the checkpoint the fine-tune started from still sees them
(bench/RESULTS.md, filtering counterfactual); that index ranks, the fine-tuned model is corrected.

The stage, module by module (each importable on its own; the names below are imported on first use,
so ``import actindex.act.correct.config`` loads no tensor library):

* :mod:`~actindex.act.correct.config`: :class:`CorrectConfig`, the settings (light);
* :mod:`~actindex.act.correct.selection`: ``I`` and the rules that choose ``D+``/``D-`` (``topk``,
  ``pareto``), one registered class per file, applied by :func:`select_rows`;
* :mod:`~actindex.act.correct.weighting`: how ``log r`` averages a row's response tokens (``mean``,
  ``query``, ``top``);
* :mod:`~actindex.act.correct.logprobs`: the response tokens' log-probabilities, with and without gradient;
* :mod:`~actindex.act.correct.objectives`: the loss terms and the objectives (``ibo``, ``ga``, ``pbo``);
* :mod:`~actindex.act.correct.training`: the trainable copy (LoRA or full) and the optimiser loop;
* :mod:`~actindex.act.correct.evaluate`: the behaviour margin and the held-out perplexity;
* :mod:`~actindex.act.correct.save`: the adapter or merged weights, and ``correction.json``;
* :mod:`~actindex.act.correct.stage`: :func:`correct`, the steps in order.
"""

from __future__ import annotations

from actindex.lazy import lazy_exports

#: public name -> the submodule that defines it (imported lazily, PEP 562)
_EXPORTS = {
    **dict.fromkeys(["CorrectConfig"], "config"),
    **dict.fromkeys(["Selection", "Split", "knee_count", "scale_scores", "select_rows", "selection_names"],
                    "selection"),
    **dict.fromkeys(["TokenWeighting", "carrier_report", "mean_weights", "query_token_weights", "token_weights",
                     "weighting_names"], "weighting"),
    **dict.fromkeys(["mean_log_probs", "predicted_tokens", "reference_log_probs", "response_log_probs",
                     "stack_weights", "weighted_log_probs"], "logprobs"),
    **dict.fromkeys(["IBO", "PBO", "GradientAscent", "Objective", "StepInputs", "bregman_loss", "correction_loss",
                     "objective_names", "proximity_loss"], "objectives"),
    **dict.fromkeys(["_trainable", "lora_targets", "train", "trainable_copy"], "training"),
    **dict.fromkeys(["HeldOut", "behavior_margin", "held_out_pairs", "perplexity", "perplexity_rows"], "evaluate"),
    **dict.fromkeys(["REPORT", "save_corrected"], "save"),
    **dict.fromkeys(["Correction", "correct", "encode_rows", "index_scores"], "stage"),
}

__all__ = sorted(name for name in _EXPORTS if not name.startswith("_"))


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
