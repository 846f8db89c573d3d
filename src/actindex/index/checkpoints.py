"""A checkpoint set on disk: indexes of the same rows built with several checkpoints of one training run.

``ActindexCallback`` writes one, and ``actindex query --index OUT`` reads it::

    OUT/rows.jsonl            the training rows as the trainer saw them (every index's data file)
    OUT/step-000000/          a complete index built with the starting weights (step 0)
    OUT/step-000000/model/    those weights (a PEFT adapter, or the full model), which later queries load
    OUT/step-000050/ ...      one index per indexed step
    OUT/checkpoints.json      the list below

``checkpoints.json``: ``{"format": 1, "data": "rows.jsonl", "data_sha256": ..., "rows": N, "checkpoints":
[{"step", "epoch", "index", "weights", "fingerprint", "seconds", "memorisation"}, ...]}`` with paths relative
to ``OUT``, ordered by step. Each index's manifest records the same step and epoch (``checkpoint``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from actindex.errors import IndexFileError
from actindex.files import atomic_write_text, inside

CHECKPOINTS_FILE = "checkpoints.json"
CHECKPOINTS_FORMAT = 1
#: the directory inside a checkpoint's index that holds its weights
WEIGHTS_DIR = "model"


def step_dir(step: int) -> str:
    """The index directory of a training step, relative to the set: ``step-000050``."""
    return f"step-{step:06d}"


@dataclass
class CheckpointEntry:
    """One indexed checkpoint: its step and epoch, its index and weights directories (relative to the set),
    the weights' fingerprint, the seconds the callback spent on it and the memorisation figures."""

    step: int
    index: str
    epoch: float | None = None
    weights: str | None = None
    fingerprint: str = ""
    seconds: float = 0.0
    memorisation: dict[str, Any] | None = None


@dataclass
class CheckpointList:
    """What ``checkpoints.json`` holds (see the module docstring)."""

    data: str
    data_sha256: str
    rows: int
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    format: int = CHECKPOINTS_FORMAT

    def add(self, entry: CheckpointEntry) -> None:
        """Add (or replace) the entry of ``entry.step``, keeping the list ordered by step."""
        self.checkpoints = sorted([c for c in self.checkpoints if c.step != entry.step] + [entry],
                                  key=lambda c: c.step)

    def write(self, root: str | os.PathLike) -> None:
        atomic_write_text(Path(root) / CHECKPOINTS_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, root: str | os.PathLike) -> CheckpointList:
        """The list in ``root/checkpoints.json``; a missing or malformed file is one :class:`IndexFileError`."""
        path = Path(root) / CHECKPOINTS_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            entries = [CheckpointEntry(**c) for c in values.pop("checkpoints")]
            listed = cls(**values, checkpoints=entries)
        except FileNotFoundError:
            raise IndexFileError(f"{root} is not a checkpoint set (no {CHECKPOINTS_FILE})") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise IndexFileError(f"{path}: malformed checkpoint list ({type(err).__name__}: {err})") from None
        for entry in listed.checkpoints:  # every path it names stays inside the set
            if entry.weights is not None:
                _inside(root, entry, entry.weights)
        listed.index_dirs(root)
        return listed

    def index_dirs(self, root: str | os.PathLike) -> list[Path]:
        """The index directory of every checkpoint, resolved inside the set ``root`` (one
        :class:`IndexFileError` line for a path that ends outside it)."""
        return [_inside(root, entry, entry.index) for entry in self.checkpoints]


def _inside(root: str | os.PathLike, entry: CheckpointEntry, relative: object) -> Path:
    return inside(Path(root), str(relative), source=f"{CHECKPOINTS_FILE} (step {entry.step})", what="checkpoint set")


def is_checkpoint_set(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint set (holds ``checkpoints.json``) rather than one index."""
    return (Path(path) / CHECKPOINTS_FILE).is_file()
