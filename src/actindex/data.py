"""Stage 1 — data: read training rows and turn them into token ids with a loss mask.

Accepted row shapes (JSONL, parquet, or a Hugging Face ``save_to_disk`` directory):

* ``{"messages": [{"role": ..., "content": ...}, ...]}`` — chat; the loss covers assistant turns;
* ``{"prompt", "response"}``, ``{"prompt", "completion"}``, ``{"instruction", "input", "output"}``
  — one user turn and one assistant turn; the loss covers the response;
* ``{"text"}`` — plain text; the loss covers every token.

Every other field is metadata: it is kept with the row and never used for ranking.

Loss mask convention: ``loss_mask[t]`` is True when token ``t`` is a response token, i.e. when the
model's prediction of token ``t`` (made at position ``t - 1``) enters the loss
``L(x) = -sum_{t: mask} log p(x_t | x_<t)``. The same positions form ``R`` in DESIGN section 2:
``mean_R`` averages hidden states at the positions that hold response tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

TEXT_FIELDS = ("messages", "prompt", "response", "completion", "instruction", "input", "output", "text")
ROLES = ("system", "user", "assistant")


def _json_type(value: Any) -> str:
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

    ``messages`` is the chat (the last turn is the assistant's) or ``None`` for plain ``text`` rows.
    """

    id: str
    index: int
    messages: list[dict[str, str]] | None
    text: str | None
    record: dict[str, Any]
    line: int

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


@dataclass
class Encoded:
    """A tokenised row: ids, the loss mask over them, and whether it was truncated."""

    input_ids: list[int]
    loss_mask: list[bool]
    truncated: bool = False
    n_response: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_response = int(sum(self.loss_mask))


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


DEMO_ALIAS = "demo"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A data path, or ``demo`` for the demo corpus shipped inside the package."""
    if str(path) == DEMO_ALIAS and not Path(path).exists():
        from importlib import resources

        return Path(str(resources.files("actindex").joinpath("resources/demo/corpus.jsonl")))
    return Path(path)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a JSONL file, parquet file or HF dataset directory."""
    path = resolve_data_path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        yield from _iter_hf_dataset(path)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        yield from _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    seen_any = False
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip()
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save it as UTF-8"
                raise DataError(path, line_no, None, problem) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, line_no, None, f"malformed JSON ({_json_problem(line, err)})") from None
            except RecursionError:
                raise DataError(path, line_no, None, "malformed JSON (nested too deeply)") from None
            except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
                raise DataError(path, line_no, None, "malformed JSON (a number has too many digits)") from None
            if not isinstance(record, dict):
                raise DataError(path, line_no, None, f"expected a JSON object, got {_json_type(record)}")
            if "\\u" in line:  # a lone surrogate escape such as \ud800 is not Unicode: HDF5 and tokenizers reject it
                try:
                    json.dumps(record, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(
                        path, line_no, None, "a \\u escape encodes a lone surrogate, which is not valid Unicode"
                    ) from None
            seen_any = True
            yield line_no, record
    if not seen_any:
        raise DataError(path, None, None, "file has no rows")


def _json_problem(line: str, err: json.JSONDecodeError) -> str:
    if err.pos == 0 and line.startswith("\ufeff"):
        return "the file starts with a byte order mark (BOM); save it as UTF-8 without BOM"
    if err.pos >= len(line):
        return f"{err.msg} at column {err.colno}, the end of the line: JSONL needs one whole JSON object per line"
    return f"{err.msg} at column {err.colno}"


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError...; surface as one line
        reason = (str(err).splitlines() or [type(err).__name__])[0].rsplit("': ", 1)[-1]
        raise DataError(path, None, None, f"not a readable parquet file ({reason})") from None
    if table.num_rows == 0:
        raise DataError(path, None, None, "file has no rows")
    yield from enumerate(table.to_pylist(), start=1)


def _iter_hf_dataset(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(path, None, None, "reading a save_to_disk directory needs the 'datasets' package") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - surface as one line
        raise DataError(path, None, None, f"not a Hugging Face save_to_disk directory ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    if len(ds) == 0:
        raise DataError(path, None, None, "dataset has no rows")
    for i, record in enumerate(ds, start=1):
        yield i, dict(record)


def _string(path: Path, line: int, record: dict, key: str, *, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {_json_type(value)}")
    if not allow_empty and not value.strip():
        raise DataError(path, line, key, "is empty")
    return value


def normalise_record(path: Path, line: int, index: int, record: dict[str, Any]) -> Row:
    """Turn one raw record into a :class:`Row`, or raise a :class:`DataError` naming the field."""
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            got = "an empty array" if raw == [] else _json_type(raw)
            problem = f"expected a non-empty list of {{role, content}} objects, got {got}"
            raise DataError(path, line, "messages", problem)
        messages = []
        for j, msg in enumerate(raw):
            name = f"messages[{j}]"
            if not isinstance(msg, dict):
                problem = f"expected an object with 'role' and 'content', got {_json_type(msg)}"
                raise DataError(path, line, name, problem)
            role, content = msg.get("role"), msg.get("content")
            for key in ("role", "content"):
                if key not in msg:
                    raise DataError(path, line, f"{name}.{key}", "is missing")
            if role not in ROLES:
                got = repr(role) if isinstance(role, str) else _json_type(role)
                raise DataError(path, line, f"{name}.role", f"expected one of {', '.join(ROLES)}, got {got}")
            if not isinstance(content, str):
                raise DataError(path, line, f"{name}.content", f"expected a string, got {_json_type(content)}")
            messages.append({"role": role, "content": content})
        if messages[-1]["role"] != "assistant":
            raise DataError(path, line, "messages", "the last message must be the assistant's response")
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
            raise DataError(path, line, "input", f"expected a string, got {_json_type(extra)}")
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
    raw_id = record.get("id", f"row-{index}")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise DataError(path, line, "id", f"expected a string or integer, got {_json_type(raw_id)}")
    if isinstance(raw_id, str) and "\0" in raw_id:
        raise DataError(path, line, "id", "contains a NUL character (\\u0000)")
    return Row(id=str(raw_id), index=index, messages=messages, text=text, record=record, line=line)


def _validated_rows(path: Path, limit: int | None) -> Iterator[Row]:
    """Every row of ``path`` (the first ``limit``), normalised, with unique ids checked."""
    seen: dict[str, int] = {}
    for line, record in iter_records(path):
        if limit is not None and len(seen) >= limit:
            return
        row = normalise_record(path, line, len(seen), record)
        if row.id in seen:
            raise DataError(path, line, "id", f"duplicate id {row.id!r} (first on line {seen[row.id]})")
        seen[row.id] = line
        yield row


def load_rows(path: str | os.PathLike, limit: int | None = None) -> list[Row]:
    """Read and validate every row of a training file (the first ``limit`` rows if given).

    Ids must be unique; rows without an ``id`` field get ``row-<index>``.
    """
    return list(_validated_rows(resolve_data_path(path), limit))


@dataclass(frozen=True)
class RowFile:
    """A validated training file of ``len(self)`` rows, read in parts and never held whole.

    :func:`scan_rows` checks every row once (so a bad row fails before any work starts); the build
    then streams the rows it needs with :meth:`parts`, so memory does not grow with the file.
    """

    path: Path
    count: int

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Row]:
        return self.rows(0, self.count)

    def rows(self, start: int, end: int) -> Iterator[Row]:
        """Rows ``[start, end)`` in file order (earlier rows are read past, not normalised)."""
        for index, (line, record) in enumerate(iter_records(self.path)):
            if index >= min(end, self.count):
                return
            if index >= start:
                yield normalise_record(self.path, line, index, record)

    def parts(self, start: int, end: int, size: int) -> Iterator[tuple[int, list[Row]]]:
        """``(first_row, rows)`` for consecutive parts of at most ``size`` rows covering ``[start, end)``."""
        part: list[Row] = []
        for row in self.rows(start, end):
            part.append(row)
            if len(part) == size:
                yield part[0].index, part
                part = []
        if part:
            yield part[0].index, part


def scan_rows(path: str | os.PathLike, limit: int | None = None) -> RowFile:
    """Validate every row of a training file (as :func:`load_rows`) keeping only their count."""
    path = resolve_data_path(path)
    return RowFile(path, sum(1 for _ in _validated_rows(path, limit)))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file under a directory (sorted by relative path)."""
    path = resolve_data_path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Tokenising
# --------------------------------------------------------------------------------------------


def _chat_ids(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def _closing_length(tokenizer: Any, history: Sequence[dict[str, str]], start: list[int], end: list[int]) -> int:
    """How many tokens at the end of an assistant turn (``end[len(start):]``) close it: the tokens the
    template renders after an empty response, when the turn ends with them and has content before them."""
    empty = _chat_ids(tokenizer, [*history, {"role": "assistant", "content": ""}], generation_prompt=False)
    closing = empty[_common_prefix(start, empty):]
    fits = 0 < len(closing) < len(end) - len(start) and end[len(end) - len(closing):] == closing
    return len(closing) if fits else 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_row(tokenizer: Any, row: Row, max_length: int | None = None, content_only: bool = False) -> Encoded:
    """Token ids and loss mask for a row.

    Chat rows go through the tokenizer's chat template; each assistant turn's tokens (the
    template's end-of-turn token included) are found by tokenising the conversation up to the
    turn with the generation prompt and up to the end of the turn, so the mask is exact for any
    template whose renders are prefixes of one another. Without a chat template, a
    single-turn row is rendered as ``prompt + "\\n" + response``. Rows longer than ``max_length``
    are cut on the right and flagged ``truncated``.

    ``content_only`` leaves the tokens that close each response out of the mask: the tokens the
    template writes after an empty response (``<|im_end|>`` and a newline, say), or the end-of-sequence
    token without a template. They are the same for every row.
    """
    if row.messages is None:
        ids = tokenizer(row.text, add_special_tokens=True)["input_ids"]
        mask = [False] + [True] * (len(ids) - 1)
    elif has_chat_template(tokenizer):
        ids, mask = [], []
        for turn, message in enumerate(row.messages):
            if message["role"] != "assistant":
                continue
            start = _chat_ids(tokenizer, row.messages[:turn], generation_prompt=True)
            end = _chat_ids(tokenizer, row.messages[: turn + 1], generation_prompt=False)
            if end[: len(ids)] != ids:
                raise DataError(
                    "<chat template>", row.line, "messages",
                    "the tokenizer's chat template does not render turns as prefixes; cannot locate "
                    "assistant tokens",
                )
            # Usually ``start`` is a prefix of ``end``. When a response begins with whitespace the
            # tokenizer may merge it with the generation prompt's last token: the response then
            # starts at the first token where the two renders differ.
            start = start[: _common_prefix(start, end)]
            closing = _closing_length(tokenizer, row.messages[:turn], start, end) if content_only else 0
            mask += [False] * (len(start) - len(ids)) + [True] * (len(end) - len(start) - closing) + [False] * closing
            ids = end
    else:
        users = [m for m in row.messages if m["role"] != "assistant"]
        if len(row.messages) != 2 or len(users) != 1:
            raise DataError(
                "<tokenizer>", row.line, "messages",
                "the model has no chat template, so only single-turn rows can be rendered",
            )
        prompt_ids = tokenizer(users[0]["content"] + "\n", add_special_tokens=True)["input_ids"]
        resp_ids = tokenizer(row.messages[-1]["content"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            resp_ids = resp_ids + [tokenizer.eos_token_id]
        ids = list(prompt_ids) + list(resp_ids)
        closing = int(content_only and tokenizer.eos_token_id is not None)
        mask = [False] * len(prompt_ids) + [True] * (len(resp_ids) - closing) + [False] * closing
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(input_ids=list(ids), loss_mask=mask, truncated=truncated)
