"""The memorisation trap, made visible: has the index's model memorised the rows it indexes?

A model that has memorised a row predicts its response almost surely, so the row's loss gradient
(``(1 - p)`` per token) and every vector made from it (residual change, projected gradients) have
collapsed: an index built with a fine-tuned model ranks the rows that planted a behaviour poorly,
while one built with the checkpoint the fine-tune started from ranks them well (bench/RESULTS.md,
filtering counterfactual and the callback benchmark).

The statistic, computed from what the index stores (``loss`` and ``n_response`` per row, and the
manifest's ``heldout`` entry, written by the build):

    rows     = median over the searchable rows x of  L(x) / n_response(x)
    held-out = median over 32 held-out rows h of      L(h) / n_response(h)     (same model, first 128 tokens)
    ratio    = rows / held-out

with ``L`` the summed response loss (nats). The model is taken to have memorised its rows when
``ratio < MEMORISED_RATIO`` (0.35): it is about three times surer of its training responses than of
text it has not seen. A model that has only learnt the rows' style lowers both medians together; a
model that has learnt the rows themselves lowers the first alone. Held-out rows: ``build --heldout``
(default: the shipped demo corpus; the callback uses the trainer's evaluation set when it has one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from actindex.errors import MemorisationWarning
from actindex.index.manifest import HeldoutInfo

if TYPE_CHECKING:
    from actindex.core.models import LoadedModel
    from actindex.index.manifest import Manifest
    from actindex.index.reader import RowTable

#: held-out rows whose loss the check compares with (a seeded sample of the held-out file)
HELDOUT_ROWS = 32
#: held-out rows are cut at this many tokens (or the index's max length, if less): the pass stays cheap
HELDOUT_TOKENS = 128
#: below this ratio of median per-token losses (indexed rows / held-out rows) the rows count as memorised
MEMORISED_RATIO = 0.35
#: ``build --heldout none`` switches the check off
NO_HELDOUT = "none"


def per_token_losses(loss: np.ndarray, n_response: np.ndarray) -> np.ndarray:
    """``L(x) / n_response(x)`` of the rows with a response token and a finite loss."""
    loss, n = np.asarray(loss, np.float64), np.asarray(n_response, np.float64)
    keep = (n > 0) & np.isfinite(loss)
    return loss[keep] / n[keep]


def heldout_loss(lm: LoadedModel, source: str, max_length: int, batch_size: int) -> HeldoutInfo | None:
    """The model's median response loss per token over :data:`HELDOUT_ROWS` rows of ``source`` (a seeded
    sample; every row of a smaller file), encoded as the build encodes rows but cut at
    :data:`HELDOUT_TOKENS` tokens; ``None`` for ``none``."""
    import torch

    from actindex.core.encode import encode_row
    from actindex.core.readers import file_sha256, scan_rows
    from actindex.core.vectors import Batch, sequence_losses

    if source == NO_HELDOUT:
        return None
    rows = scan_rows(source, sample=HELDOUT_ROWS, seed=0)
    cut = min(max_length, HELDOUT_TOKENS)
    encoded = [e for e in (encode_row(lm.tokenizer, row, cut) for row in rows) if e.n_response > 0]
    losses, counts = [], []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = Batch.collate(chunk, lm.tokenizer.pad_token_id, lm.device)
            losses += sequence_losses(lm.model, batch).float().cpu().tolist()
            counts += [e.n_response for e in chunk]
    values = per_token_losses(np.array(losses), np.array(counts))
    if not len(values):
        return None
    return HeldoutInfo(source=source if source == "demo" else str(Path(source).resolve()),
                       sha256=file_sha256(source), rows=len(values), loss_per_token=float(np.median(values)))


@dataclass(frozen=True)
class Memorisation:
    """The check's figures for one index (see the module docstring)."""

    rows: int
    rows_loss: float
    heldout: HeldoutInfo

    @property
    def ratio(self) -> float:
        return self.rows_loss / max(self.heldout.loss_per_token, 1e-12)

    @property
    def memorised(self) -> bool:
        return self.ratio < MEMORISED_RATIO

    def figures(self) -> dict[str, float | int | bool]:
        """The figures as a build summary or a query's JSON shows them."""
        return {"rows": self.rows, "rows_loss_per_token": round(self.rows_loss, 4),
                "heldout_rows": self.heldout.rows, "heldout_loss_per_token": round(self.heldout.loss_per_token, 4),
                "ratio": round(self.ratio, 4), "threshold": MEMORISED_RATIO, "memorised": self.memorised}

    def message(self, root: str | Path) -> str:
        """One line: what was measured, and what to do."""
        source = "the demo corpus" if self.heldout.source == "demo" else Path(self.heldout.source).name
        return (f"{root}: the index's model has memorised its rows: median response loss "
                f"{self.rows_loss:.3f} nats/token on the {self.rows} indexed rows against "
                f"{self.heldout.loss_per_token:.3f} on {self.heldout.rows} held-out rows ({source}), ratio "
                f"{self.ratio:.2f} < {MEMORISED_RATIO}; their gradients have collapsed and rankings by them are "
                "unreliable: index the checkpoint the fine-tune started from (build --model BASE, or "
                "ActindexCallback's step-0 index) and pass the fine-tuned model to correct/detect --target")


def memorisation(table: RowTable, manifest: Manifest) -> Memorisation | None:
    """The check's figures for an index, or ``None`` when its manifest holds no held-out loss (built with
    ``--heldout none`` or before 2026-12) or it has no row with a response."""
    if manifest.heldout is None:
        return None
    values = per_token_losses(table.loss[table.valid], table.n_response[table.valid])
    if not len(values):
        return None
    return Memorisation(rows=len(values), rows_loss=float(np.median(values)), heldout=manifest.heldout)


def warn_if_memorised(check: Memorisation | None, root: str | Path, stacklevel: int = 3) -> str | None:
    """Warn (:class:`~actindex.errors.MemorisationWarning`) when ``check`` says memorised; returns the message."""
    if check is None or not check.memorised:
        return None
    message = check.message(root)
    warnings.warn(message, MemorisationWarning, stacklevel=stacklevel)
    return message
