"""Writing the corrected model: a PEFT adapter directory or merged weights, and ``correction.json``.

``peft-adapter`` (the default with LoRA): ``load_model(dir)`` loads base + adapter. ``merged`` (with
``merge``, ``full``, or when the base is itself an adapter directory): ``config.json`` +
``model.safetensors`` + tokenizer. The directory is written in a staging directory beside it and
moved into place, so a failed save leaves no half-written model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

from actindex.core.models import LoadedModel, is_adapter_dir, save_weights
from actindex.files import staged_directory
from actindex.outputs import Input, check_output

#: the report's file name inside the output directory
REPORT = "correction.json"


def check_out(out: Path, overwrite: bool, inputs: list[Input]) -> Path:
    """``out`` checked by the output rule (:mod:`actindex.outputs`) before any work: an existing non-empty
    directory is replaced only with ``overwrite`` and only when this stage wrote it (it holds ``correction.json``);
    never an index, an input, or a directory inside an index. Its parent is made."""
    out = check_output(out, overwrite=overwrite, inputs=inputs, directory=True,
                       ours=lambda path: (path / REPORT).is_file())
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def saved_format(model: nn.Module, lm: LoadedModel, merge: bool) -> str:
    """How :func:`save_corrected` writes ``model``: ``peft-adapter`` (an adapter over a base model loaded by name)
    or ``merged`` (full weights)."""
    is_peft = type(model).__name__.startswith("Peft")
    return "peft-adapter" if is_peft and not merge and not is_adapter_dir(lm.name) else "merged"


def save_corrected(model: nn.Module, lm: LoadedModel, out: Path, merge: bool, report: dict[str, Any]) -> str:
    """Write the corrected model and its ``correction.json`` report to ``out``, replaced in one step (a staged
    directory: an interruption leaves the old ``out`` or the whole new one); returns the format written.

    ``peft-adapter``: ``save_pretrained`` of the adapter, its ``base_model_name_or_path`` set to the
    name the base model was loaded by; ``merged``: full weights via :func:`models.save_weights`, also
    when the base model is itself an adapter directory (an adapter over an adapter would not load).
    """
    kind = saved_format(model, lm, merge)
    with staged_directory(out) as staging:
        if kind == "peft-adapter":
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = lm.name
            model.save_pretrained(str(staging), save_embedding_layers=False)  # no hub lookup: embeddings not adapted
            lm.tokenizer.save_pretrained(str(staging))
        else:
            plain = copy.deepcopy(model).merge_and_unload() if type(model).__name__.startswith("Peft") else model
            save_weights(plain, lm.tokenizer, staging)
        (staging / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return kind
