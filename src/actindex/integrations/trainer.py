"""``ActindexCallback``: index the training set from inside the training loop, at chosen checkpoints.

A ``transformers.TrainerCallback`` (so it also runs under TRL's ``SFTTrainer``, a ``Trainer``) that builds a
normal actindex index of the training rows with the model's weights as they are at chosen optimiser steps:
by default step 0, the starting checkpoint (before the first update), which is the one to rank with: a
fine-tuned model has memorised its rows, whose gradients have then collapsed (bench/RESULTS.md).

    callback = ActindexCallback("ckpt-index", steps=[0], every=50, final=True).attach(trainer)
    trainer.train()
    # ckpt-index/step-000000/, ckpt-index/step-000050/, ..., ckpt-index/checkpoints.json

* The rows are the trainer's dataset (``attach`` takes ``trainer.train_dataset``, or pass ``dataset=``) as
  it sees them (:mod:`actindex.integrations.rows`), written once to ``OUT/rows.jsonl``; a path (JSONL,
  parquet, a ``save_to_disk`` directory) is indexed as it is. They are encoded with the trainer's tokenizer
  and chat template, the loss on the assistant turns (conversational rows) or the completion.
* Each index is built by :func:`actindex.build` with the trainer's model as it is, in eval mode with its
  parameters frozen for the pass (restored after: training goes on exactly as without the callback). LoRA /
  PEFT adapters are the tracked modules of ``--grad`` indexes. Its manifest records the step and epoch
  (``checkpoint``) and the weights fingerprint; its weights are saved beside it (``step-N/model``: the
  adapter of a PEFT model, else the full model; ``save_weights=False`` to skip) so that later queries load
  them. The held-out rows of the memorisation check are the trainer's evaluation set when ``attach`` finds
  one (``OUT/heldout.jsonl``), else ``heldout=`` or the build's default.
* Under ``torchrun`` every rank calls the build, which shards the rows over the ranks and merges once
  (:func:`~actindex.index.build.build_distributed`); rank 0 writes the rows, the weights and the list.
* Resumable: a rerun (``trainer.train(resume_from_checkpoint=...)``) keeps the complete indexes and resumes
  an unfinished one; the rows must be the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from actindex.configs import option
from actindex.errors import ActindexError
from actindex.index.checkpoints import WEIGHTS_DIR, CheckpointEntry, CheckpointList, step_dir
from actindex.index.config import BuildConfig
from actindex.index.manifest import MANIFEST, CheckpointInfo
from actindex.integrations.rows import write_rows

ROWS_FILE = "rows.jsonl"
HELDOUT_FILE = "heldout.jsonl"
#: build settings the trainer decides (its model, device, rows) or the callback does (one index per step)
TRAINER_DECIDES = frozenset({"data", "out", "model", "device", "dtype", "shard", "append", "overwrite",
                             "trust_remote_code", "heldout"})


@dataclass
class CallbackConfig:
    """When ``ActindexCallback`` indexes the training rows, and where."""

    out: str = option("Directory of the checkpoint set: OUT/step-000000/, ... and OUT/checkpoints.json.", "")
    steps: list[int] = option("Optimiser steps to index at (0 = the starting weights, before the first update).",
                              default_factory=lambda: [0])
    every: int | None = option("Also index every N optimiser steps.", None, minimum=1)
    epochs: list[int] = option("Also index at the end of these epochs (1 = the first).", default_factory=list)
    final: bool = option("Also index the weights training ends with.", False)
    save_weights: bool = option("Save each checkpoint's weights beside its index (the adapter of a PEFT model, else "
                                "the full model), so that later queries can load them.", True)

    def __post_init__(self) -> None:
        if not self.out:
            raise ActindexError("ActindexCallback needs out: the directory of the checkpoint set")
        if any(step < 0 for step in self.steps) or any(epoch < 1 for epoch in self.epochs):
            raise ActindexError("ActindexCallback: steps must be >= 0 and epochs >= 1")

    def wants_step(self, step: int) -> bool:
        """Whether optimiser step ``step`` is indexed (``steps`` or a multiple of ``every``)."""
        return step in self.steps or bool(self.every and step > 0 and step % self.every == 0)


@contextmanager
def frozen(model: Any) -> Iterator[None]:
    """``model`` in eval mode with every parameter frozen, then exactly as it was (each module's mode, each
    parameter's ``requires_grad``)."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    model.eval()
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def _barrier() -> None:
    """Wait for every rank of a ``torch.distributed`` job (nothing outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _tokenizer(processing_class: Any) -> Any:
    """The tokenizer of the trainer's processing class (a processor's ``tokenizer``)."""
    if processing_class is None:
        raise ActindexError("ActindexCallback needs the trainer's tokenizer: pass processing_class= to the trainer")
    tokenizer = getattr(processing_class, "tokenizer", None) or processing_class
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ActindexCallback(TrainerCallback):
    """Index the training rows at chosen checkpoints (see the module docstring).

    ``out`` and ``options`` are :class:`CallbackConfig` fields (``steps``, ``every``, ``epochs``, ``final``,
    ``save_weights``) and :class:`~actindex.index.config.BuildConfig` fields for every index (``layers``,
    ``max_length``, ``batch_size``, ``grad``, ``families``, ``sample``...; not the model, device or data, which
    the trainer gives). ``dataset``: the training rows (default: ``attach``'s ``trainer.train_dataset``);
    ``heldout``: rows the model is not trained on (a dataset or a path; default: ``attach``'s
    ``trainer.eval_dataset``, else the build's default). ``seconds`` adds up the time spent indexing.
    """

    def __init__(self, out: str | os.PathLike | None = None, *, dataset: Any = None, heldout: Any = None,
                 progress: bool = False, **options: Any):
        names = {f.name for f in fields(CallbackConfig)}
        mine = {key: options.pop(key) for key in list(options) if key in names}
        self.config = CallbackConfig(**mine, **({"out": str(out)} if out is not None else {}))
        known = {f.name for f in fields(BuildConfig)} - TRAINER_DECIDES
        unknown = [key for key in options if key not in known]
        if unknown:
            raise ActindexError(f"ActindexCallback: unknown option {unknown[0]!r} (the trainer gives the model, "
                                f"device and rows; build options: {', '.join(sorted(known))})")
        BuildConfig(data="-", out="-", **options)  # the build options are checked now, not at the first index
        self.build_options = options
        self.dataset, self.heldout, self.progress = dataset, heldout, progress
        self.root = Path(self.config.out)
        self.seconds = 0.0
        self._data: str | None = None
        self._heldout: str | None = None
        self._tokenizer: Any = None

    def attach(self, trainer: Any) -> ActindexCallback:
        """Take the trainer's training (and evaluation) rows unless given, add the callback to it; returns it."""
        if self.dataset is None:
            self.dataset = trainer.train_dataset
        if self.heldout is None and trainer.eval_dataset is not None and not isinstance(trainer.eval_dataset, dict):
            self.heldout = trainer.eval_dataset
        trainer.add_callback(self)
        return self

    # ---- the trainer's events ------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, processing_class: Any = None,
                       **kwargs: Any) -> None:
        self._tokenizer = _tokenizer(processing_class)
        started = time.perf_counter()
        self._prepare_rows(state.is_world_process_zero)
        self.seconds += time.perf_counter() - started
        if state.global_step == 0 and 0 in self.config.steps:
            self.index(model, state)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.config.wants_step(state.global_step):
            self.index(model, state)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.epoch is not None and round(state.epoch) in self.config.epochs:
            self.index(model, state)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.config.final:
            self.index(model, state)

    # ---- the work ---------------------------------------------------------------------------------
    def _prepare_rows(self, main: bool) -> None:
        """Rank 0 writes the rows (and held-out rows) beside the indexes; every rank then reads them."""
        listed = self.checkpoints()
        if isinstance(self.dataset, (str, os.PathLike)):
            self._data = str(self.dataset)
        else:
            self._data = str(self.root / ROWS_FILE)
            if main:
                write_rows(self.dataset, self.root / ROWS_FILE, listed.data_sha256 if listed.checkpoints else None)
        if isinstance(self.heldout, (str, os.PathLike)) or self.heldout is None:
            self._heldout = None if self.heldout is None else str(self.heldout)
        else:
            self._heldout = str(self.root / HELDOUT_FILE)
            if main:
                write_rows(self.heldout, self.root / HELDOUT_FILE)
        _barrier()

    def checkpoints(self) -> CheckpointList:
        """The set's ``checkpoints.json`` (an empty list before the first index)."""
        if (self.root / "checkpoints.json").is_file():
            return CheckpointList.read(self.root)
        return CheckpointList(data=ROWS_FILE, data_sha256="", rows=0)

    def _save_weights(self, model: Any, target: Path, main: bool) -> Path | None:
        """The model's weights in ``target`` (rank 0 writes them; kept when a rerun finds them)."""
        from actindex.core.models import ADAPTER_CONFIG, save_weights
        from actindex.files import staged_directory

        if not self.config.save_weights:
            return None
        if main and not ((target / ADAPTER_CONFIG).is_file() or (target / "config.json").is_file()):
            with staged_directory(target) as staging:
                if hasattr(model, "peft_config"):
                    model.save_pretrained(staging)
                    self._tokenizer.save_pretrained(staging)
                else:
                    save_weights(model, self._tokenizer, staging)
        _barrier()
        return target.resolve()

    def index(self, model: Any, state: Any) -> Path:
        """Index the rows with ``model`` as it is now, at ``state.global_step``; returns the index directory."""
        from actindex.core.models import LoadedModel, weights_fingerprint
        from actindex.index.build import build

        step = state.global_step
        target = self.root / step_dir(step)
        if (target / MANIFEST).is_file():
            return target
        started = time.perf_counter()
        main = state.is_world_process_zero
        weights = self._save_weights(model, target / WEIGHTS_DIR, main)
        name = str(weights) if weights is not None else getattr(model, "name_or_path", "") or "trainer-model"
        lm = LoadedModel(model=model, tokenizer=self._tokenizer, name=name, fingerprint=weights_fingerprint(model))
        extra = {"heldout": self._heldout} if self._heldout is not None else {}
        config = BuildConfig(data=self._data, out=str(target), model=name, device=str(lm.device),
                             **self.build_options, **extra)
        epoch = None if state.epoch is None else round(float(state.epoch), 4)
        with frozen(model):
            manifest = build(config, model=lm, progress=self.progress and main,
                             checkpoint=CheckpointInfo(step=step, epoch=epoch))
        seconds = time.perf_counter() - started
        self.seconds += seconds
        if main:
            listed = self.checkpoints()
            listed.data, listed.rows = os.path.relpath(self._data, self.root), manifest.rows
            listed.data_sha256 = manifest.data[0].sha256
            listed.add(CheckpointEntry(
                step=step, epoch=epoch, index=step_dir(step), fingerprint=lm.fingerprint, seconds=round(seconds, 3),
                weights=os.path.relpath(weights, self.root.resolve()) if weights is not None else None,
                memorisation=(manifest.summary or {}).get("memorisation")))
            listed.write(self.root)
        return target
