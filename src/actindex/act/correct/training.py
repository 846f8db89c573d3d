"""Training: Adam on an objective's terms (+ the proximity term) over LoRA adapters or every weight.

The trainable parameters are LoRA adapters (rank ``r``, ``alpha = 2r``, no dropout) on every linear
projection of the decoder blocks (attention and MLP) by default, or all weights with ``full``. Each
step draws a minibatch from each set the objective reads (:class:`_Sampler`: a set this small or
smaller is used whole) and runs one forward pass over all of them; the log-ratios ``log r`` against
the reference log-probs, and the scaled scores, go to :meth:`Objective.terms`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from actindex.act.correct.config import CorrectConfig
from actindex.act.correct.logprobs import mean_log_probs, stack_weights
from actindex.act.correct.objectives import Objective, StepInputs, proximity_loss
from actindex.act.correct.weighting import mean_weights
from actindex.core.encode import Encoded
from actindex.core.vectors import Batch, select_grad_modules
from actindex.errors import ActindexError
from actindex.progress import bar


def lora_targets(model: nn.Module) -> list[str]:
    """Every linear projection inside the decoder blocks (attention and MLP), by module name."""
    return select_grad_modules(model)


def _trainable(model: nn.Module, config: CorrectConfig) -> nn.Module:
    """The model to train: a PEFT LoRA wrapper by default, or the model with every weight trainable."""
    if type(model).__name__.startswith("Peft"):  # a model that already carries adapters: fold them in first
        model = model.merge_and_unload()
    if config.full:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                      target_modules=lora_targets(model), bias="none")
    torch.manual_seed(config.seed)
    return get_peft_model(model, lora)


def trainable_copy(model: nn.Module, config: CorrectConfig) -> nn.Module:
    """A copy of ``model`` to train (:func:`_trainable`; ``model`` is left as it was), in eval mode: no
    dropout, so the loss terms are deterministic functions of theta."""
    trained = _trainable(copy.deepcopy(model), config)
    trained.eval()
    return trained


class _Sampler:
    """Minibatches of one set: the whole set when it fits, else successive random permutations."""

    def __init__(self, n: int, size: int, gen: torch.Generator):
        self.n, self.size, self.gen = n, size, gen
        self.queue: list[int] = []

    def next(self) -> list[int]:
        if self.n <= self.size:
            return list(range(self.n))
        if len(self.queue) < self.size:
            self.queue += torch.randperm(self.n, generator=self.gen).tolist()
        out, self.queue = self.queue[: self.size], self.queue[self.size :]
        return out


def train(
    model: nn.Module,
    objective: Objective,
    sets: dict[str, list[Encoded]],
    ref: dict[str, torch.Tensor],
    influence: dict[str, torch.Tensor],
    config: CorrectConfig,
    pad_id: int,
    progress: bool = True,
    weights: dict[str, list[np.ndarray]] | None = None,
) -> list[dict[str, float]]:
    """Adam on ``sum(objective terms) (+ L_prox)`` for ``config.steps`` steps; returns the terms per step.

    ``sets`` maps ``pos``/``neg``/``zero`` to encoded rows, ``ref`` to their reference per-token mean
    log-probs and ``influence`` to their scaled scores. One forward pass per step covers the
    minibatches of every set the objective reads. ``weights`` gives some sets per-token weights
    (:func:`token_weights`; ``ref`` must then hold the same weighted means); other sets use the mean.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ActindexError("the model has no trainable parameter")
    refs = [p.detach().clone() for p in params]
    device = params[0].device
    optimizer = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    samplers = {name: _Sampler(len(sets[name]), config.batch_size, gen) for name in objective.sets}
    history: list[dict[str, float]] = []
    steps = bar(range(config.steps), show=progress, desc=f"correct ({objective.name})")
    for step in steps:
        chosen = {name: samplers[name].next() if name in samplers else [] for name in ("pos", "neg", "zero")}
        encoded = [sets[name][i] for name in ("pos", "neg", "zero") for i in chosen[name]]
        with torch.enable_grad():
            batch = Batch.collate(encoded, pad_id, device)
            w = None
            if weights:
                rows_w = [weights[name][i] if name in weights else mean_weights(sets[name][i])
                          for name in ("pos", "neg", "zero") for i in chosen[name]]
                w = stack_weights(rows_w, batch.input_ids.shape[1]).to(device)
            logp = mean_log_probs(model, batch, w)
            parts = torch.split(logp, [len(chosen["pos"]), len(chosen["neg"]), len(chosen["zero"])])
            logr = {name: part - ref[name][chosen[name]].to(part) for name, part in zip(("pos", "neg", "zero"), parts)}
            infl = {name: influence[name][chosen[name]].to(logp) for name in ("pos", "neg")}
            terms = objective.terms(StepInputs(logr["pos"], logr["neg"], logr["zero"], infl["pos"], infl["neg"],
                                               config.beta))
            if objective.proximity:
                terms["prox"] = proximity_loss(params, refs, config.lambda_prox)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise ActindexError(f"the loss became non-finite at step {step + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append({name: float(value.detach()) for name, value in terms.items()})
        steps.set_postfix({name: f"{value:.4f}" for name, value in history[-1].items()})
    steps.close()
    return history
