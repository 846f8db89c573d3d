"""The test queries: the prompts a detection rewrites, with the responses whose influence it follows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from actindex.core.rows import Row, normalise_record
from actindex.core.sources import iter_records
from actindex.errors import DataError


@dataclass
class TestQuery:
    """A test prompt (the last user turn, after ``context`` turns) and its response, if given."""

    prompt: str
    response: str | None
    context: list[dict[str, str]] = field(default_factory=list)
    line: int = 0
    source: str = "queries"  # the file it was read from, for errors

    __test__ = False  # not a pytest class

    def conversation(self, prompt: str, response: str) -> list[dict[str, str]]:
        return self.context + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def load_queries(path: str | os.PathLike) -> list[TestQuery]:
    """Test queries from JSONL/parquet: ``{prompt, response|reference?}`` or any training-row shape.

    A training row's last user turn is the prompt and its last assistant turn the response.
    """
    path = Path(path)
    queries: list[TestQuery] = []
    for line, record in iter_records(path):
        if "prompt" in record and "completion" not in record:
            prompt = record["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(path, line, "prompt", "must be a non-empty string")
            response = None
            for key in ("response", "reference"):
                if key in record and record[key] is not None:
                    value = record[key]
                    if not isinstance(value, str) or not value.strip():
                        raise DataError(path, line, key, "must be a non-empty string (or absent, to generate one)")
                    response = value
                    break
            queries.append(TestQuery(prompt, response, [], line, str(path)))
            continue
        row: Row = normalise_record(path, line, len(queries), record)
        if row.messages is None:
            raise DataError(path, line, "text", "a plain-text row has no prompt to transform; give 'prompt'")
        users = [i for i, m in enumerate(row.messages) if m["role"] == "user"]
        if not users:
            raise DataError(path, line, "messages", "has no user turn to transform")
        last = users[-1]
        queries.append(TestQuery(row.messages[last]["content"], row.messages[-1]["content"],
                                 row.messages[:last], line, str(path)))
    return queries
