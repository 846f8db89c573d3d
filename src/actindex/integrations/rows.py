"""A trainer's dataset as rows actindex reads: the rows as the trainer sees them, written once as JSONL.

``transformers``' and TRL's datasets hold rows in the shapes actindex reads (``messages``, ``prompt`` +
``completion``, ``text``) plus the columns a trainer adds when it tokenises them (``input_ids``,
``labels``...). :func:`trainer_record` drops those, and joins TRL's conversational ``prompt`` +
``completion`` (two lists of messages) into one ``messages`` list; every other column is kept as
metadata. :func:`write_rows` writes the records in dataset order, so the index's rows are the trainer's
rows, and its bytes (hence the data sha256 every checkpoint's index records) depend on the rows alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actindex.errors import ActindexError
from actindex.files import atomic_file

#: the columns trainers add when they tokenise rows (TRL's SFTTrainer, DataCollators): not part of a row
TOKENISED_COLUMNS = frozenset({
    "input_ids", "attention_mask", "labels", "completion_mask", "assistant_masks", "position_ids",
    "token_type_ids", "mm_token_type_ids", "seq_lengths",
})


def trainer_record(record: dict[str, Any]) -> dict[str, Any]:
    """One dataset row in a shape actindex reads (see the module docstring)."""
    out = {key: value for key, value in record.items() if key not in TOKENISED_COLUMNS}
    prompt, completion = out.get("prompt"), out.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt-completion
        del out["prompt"], out["completion"]
        out = {"messages": [*prompt, *completion], **out}
    return out


def _jsonable(value: Any) -> Any:
    """numpy and torch scalars and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def dataset_records(dataset: Any) -> Iterator[dict[str, Any]]:
    """The rows of a Hugging Face ``Dataset``, a list of dicts or any indexable dataset of dicts, in order."""
    if dataset is None:
        raise ActindexError("ActindexCallback needs the training rows: pass dataset=..., or add the callback with "
                            "ActindexCallback(...).attach(trainer)")
    try:
        rows = iter(dataset) if not hasattr(dataset, "__getitem__") or hasattr(dataset, "column_names") else (
            dataset[i] for i in range(len(dataset)))
        for row in rows:
            if not isinstance(row, dict):
                raise ActindexError(f"ActindexCallback: the dataset's rows must be dicts (messages, prompt + "
                                    f"completion or text columns), got {type(row).__name__}")
            yield row
    except TypeError as err:
        raise ActindexError(f"ActindexCallback: cannot read rows from a {type(dataset).__name__} ({err})") from None


def write_rows(dataset: Any, path: Path, expected: str | None = None) -> str:
    """Write the dataset's rows (:func:`trainer_record`) to ``path`` as JSONL, atomically, and return their sha256;
    refused (``path`` left as it was) when ``expected`` names another sha256: the rows of an earlier run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in dataset_records(dataset):
                line = json.dumps(trainer_record(record), ensure_ascii=False, default=_jsonable) + "\n"
                digest.update(line.encode("utf-8"))
                handle.write(line)
        if expected is not None and digest.hexdigest() != expected:
            raise ActindexError(f"{path.parent} holds indexes of other rows (sha256 {expected[:12]}…) than this "
                                f"trainer's ({digest.hexdigest()[:12]}…); write this run's checkpoints elsewhere")
    return digest.hexdigest()
