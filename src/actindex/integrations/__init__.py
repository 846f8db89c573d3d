"""Integrations with training loops.

    trainer.py  ActindexCallback: a transformers TrainerCallback (TRL's SFTTrainer included) that indexes the
                training rows at chosen checkpoints (step 0 by default) into a checkpoint set
    rows.py     a trainer's dataset as the rows actindex reads (tokenised columns dropped)

``transformers`` is imported when ``ActindexCallback`` is first used. Install the extra for TRL:
``pip install 'actindex[train]'``.
"""

from __future__ import annotations

from actindex.lazy import lazy_exports

_EXPORTS = {"ActindexCallback": "trainer", "CallbackConfig": "trainer", "trainer_record": "rows", "write_rows": "rows"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
