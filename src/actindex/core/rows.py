"""Stage 1a — rows: what a training row is, checked before any model is loaded.

Accepted row shapes (JSONL, parquet, or a Hugging Face ``save_to_disk`` directory, see
:mod:`actindex.core.readers`):

* ``{"messages": [{"role": ..., "content": ...}, ...]}`` — chat; the loss covers assistant turns;
* ``{"prompt", "response"}``, ``{"prompt", "completion"}``, ``{"instruction", "input", "output"}``
  — one user turn and one assistant turn; the loss covers the response;
* ``{"text"}`` — plain text; the loss covers every token.

A row holds exactly one of these shapes (two, such as ``messages`` and ``prompt``+``response``, are
refused), and a chat starts with optional system turns, then alternates user and assistant turns
starting with the user's and ending with the assistant's. Every other field is metadata: it is kept
with the row and never used for ranking. Ids (``id``) are unique, non-empty strings or integers; a row
without one gets ``row-<index>``.

The record stored in an index (:func:`capped_record`) has every string field longer than
``RECORD_STRING_CAP`` characters (64 Ki, or ``CHARS_PER_TOKEN`` x ``max_length`` if more) cut, with a
visible ``[actindex: cut ...]`` marker at the end, so the stored record stays a valid row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actindex.errors import DataError

TEXT_FIELDS = ("messages", "prompt", "response", "completion", "instruction", "input", "output", "text")
ROLES = ("system", "user", "assistant")
#: the complete training shapes a row may hold (exactly one of them)
SHAPES = (("messages",), ("prompt", "response"), ("prompt", "completion"), ("instruction", "output"), ("text",))
#: characters tokenised per token of ``max_length`` before a long text is cut (:func:`encode_row`)
CHARS_PER_TOKEN = 64
#: tokens a cut prefix must give beyond ``max_length``, so that the cut cannot change the kept tokens
CUT_MARGIN = 16
#: string fields of a stored record longer than this many characters are cut (:func:`capped_record`)
RECORD_STRING_CAP = 64 * 1024


def json_type(value: Any) -> str:
    """The JSON name of a value's type (``null``, ``integer``, ``array``...), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = ((int, "integer"), (float, "number"), (str, "string"), ((list, tuple), "array"), (dict, "object"))
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


@dataclass
class Row:
    """One training example, normalised.

    ``messages`` is the chat (the last turn is the assistant's) or ``None`` for plain ``text`` rows;
    ``path`` and ``line`` name where the row was read from (for error messages).
    """

    id: str
    index: int
    messages: list[dict[str, str]] | None
    text: str | None
    record: dict[str, Any]
    line: int
    path: str = "<row>"

    @property
    def content_hash(self) -> str:
        """sha256 of the row's training content (messages or text), canonical JSON."""
        payload = json.dumps(self.messages if self.messages is not None else self.text, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def snippet(self, width: int = 160) -> str:
        """A one-line preview: the last user turn and the response."""
        if self.messages is None:
            text = self.text or ""
        else:
            users = [m["content"] for m in self.messages if m["role"] == "user"]
            text = f"{users[-1] if users else ''} => {self.messages[-1]['content']}"
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"



def _string(path: Path, line: int, record: dict, key: str, *, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {json_type(value)}")
    if not allow_empty and not value.strip():
        raise DataError(path, line, key, "is empty")
    return value


def normalise_record(path: Path, line: int, index: int, record: dict[str, Any], first_id: int = 0) -> Row:
    """Turn one raw record into a :class:`Row`, or raise a :class:`DataError` naming the field.

    Checks everything the build needs before a model is loaded: one training shape, its fields'
    types, the turn order of a chat (:func:`_check_turn_order`) and the id. A row without an ``id`` gets
    ``row-<first_id + index>`` (an append numbers its rows after the index's).
    """
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    shapes = [shape for shape in SHAPES if all(record.get(key) is not None for key in shape)]
    if len(shapes) > 1:
        first, second = ("+".join(f"'{key}'" for key in shape) for shape in shapes[:2])
        raise DataError(path, line, None, f"holds two training shapes, {first} and {second}: keep only one")
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            got = "an empty array" if raw == [] else json_type(raw)
            problem = f"expected a non-empty list of {{role, content}} objects, got {got}"
            raise DataError(path, line, "messages", problem)
        messages = []
        for j, msg in enumerate(raw):
            name = f"messages[{j}]"
            if not isinstance(msg, dict):
                problem = f"expected an object with 'role' and 'content', got {json_type(msg)}"
                raise DataError(path, line, name, problem)
            role, content = msg.get("role"), msg.get("content")
            for key in ("role", "content"):
                if key not in msg:
                    raise DataError(path, line, f"{name}.{key}", "is missing")
            if role not in ROLES:
                got = repr(role) if isinstance(role, str) else json_type(role)
                raise DataError(path, line, f"{name}.role", f"expected one of {', '.join(ROLES)}, got {got}")
            if not isinstance(content, str):
                raise DataError(path, line, f"{name}.content", f"expected a string, got {json_type(content)}")
            messages.append({"role": role, "content": content})
        if messages[-1]["role"] != "assistant":
            raise DataError(path, line, "messages", "the last message must be the assistant's response")
        _check_turn_order(path, line, messages)
        if not messages[-1]["content"].strip():
            raise DataError(path, line, f"messages[{len(messages) - 1}].content", "assistant response is empty")
    elif "prompt" in record and ("response" in record or "completion" in record):
        key = "response" if "response" in record else "completion"
        messages = [
            {"role": "user", "content": _string(path, line, record, "prompt")},
            {"role": "assistant", "content": _string(path, line, record, key)},
        ]
    elif "instruction" in record and "output" in record:
        prompt = _string(path, line, record, "instruction")
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(path, line, "input", f"expected a string, got {json_type(extra)}")
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _string(path, line, record, "output")},
        ]
    elif "text" in record:
        text = _string(path, line, record, "text")
    else:
        raise DataError(
            path, line, None,
            "no training text: expected 'messages', 'prompt'+'response', 'prompt'+'completion', "
            "'instruction'+'output' or 'text'",
        )
    raw_id = record.get("id", f"row-{first_id + index}")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise DataError(path, line, "id", f"expected a string or integer, got {json_type(raw_id)}")
    if isinstance(raw_id, str) and "\0" in raw_id:
        raise DataError(path, line, "id", "contains a NUL character (\\u0000)")
    if isinstance(raw_id, str) and not raw_id.strip():
        raise DataError(path, line, "id", "is empty" if not raw_id else "is only whitespace")
    return Row(id=str(raw_id), index=index, messages=messages, text=text, record=record, line=line, path=str(path))


def _check_turn_order(path: Path, line: int, messages: list[dict[str, str]]) -> None:
    """System turns only at the start, then user and assistant turns alternating, starting with the user's.

    (That the last turn is the assistant's is checked before.) A :class:`DataError` names the first
    turn out of order, ``messages[j].role``.
    """
    expected = "user"
    for j, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if j > 0 and messages[j - 1]["role"] != "system":
                raise DataError(path, line, f"messages[{j}].role",
                                "a system message must come before every user and assistant message")
            continue
        if role != expected:
            if expected == "user" and all(m["role"] == "system" for m in messages[:j]):
                problem = f"expected 'user': a chat starts with a user turn (after any system turns), got {role!r}"
            else:
                problem = f"expected {expected!r}: user and assistant turns alternate, got a second {role!r} in a row"
            raise DataError(path, line, f"messages[{j}].role", problem)
        expected = "assistant" if role == "user" else "user"



def duplicate_problem(row_id: str, first: tuple[int | str, bool], generated: bool) -> str:
    """The message for an id seen before, saying which of the two lines got a generated ``row-<index>`` id."""
    first_line, first_generated = first
    if not (generated or first_generated):
        return f"duplicate id {row_id!r} (first on line {first_line})"
    if generated:
        return (f"duplicate id {row_id!r}: this row has no 'id' and was given the generated id {row_id!r} "
                f"(row-<index>), which line {first_line} gives explicitly; give every row an explicit id")
    return (f"duplicate id {row_id!r}: line {first_line} has no 'id' and was given the generated id {row_id!r} "
            f"(row-<index>), which this row gives explicitly; give every row an explicit id")



def record_cap(max_length: int | None = None) -> int:
    """The longest string field (in characters) a stored record keeps: ``RECORD_STRING_CAP``, or
    ``CHARS_PER_TOKEN * max_length`` when that is more (so a stored record encodes as its row did)."""
    return max(RECORD_STRING_CAP, CHARS_PER_TOKEN * (max_length or 0))


def capped_record(record: dict[str, Any], cap: int = RECORD_STRING_CAP) -> dict[str, Any]:
    """``record`` with every string longer than ``cap`` characters (at any depth, the top-level ``id``
    excepted) cut to ``cap`` characters followed by a visible marker ``" [actindex: cut N of M characters]"``.

    The cut record is still a valid row (a cut string is not empty), so snippets and re-encoding work.
    """

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > cap:
            return f"{value[:cap]} [actindex: cut {len(value) - cap} of {len(value)} characters]"
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [cut(v) for v in value]
        return value

    return {key: value if key == "id" else cut(value) for key, value in record.items()}
