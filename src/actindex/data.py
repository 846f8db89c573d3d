"""Stage 1 — data: read training rows and turn them into token ids with a loss mask.

Accepted row shapes (JSONL, parquet, or a Hugging Face ``save_to_disk`` directory):

* ``{"messages": [{"role": ..., "content": ...}, ...]}`` — chat; the loss covers assistant turns;
* ``{"prompt", "response"}``, ``{"prompt", "completion"}``, ``{"instruction", "input", "output"}``
  — one user turn and one assistant turn; the loss covers the response;
* ``{"text"}`` — plain text; the loss covers every token.

A row holds exactly one of these shapes (two, such as ``messages`` and ``prompt``+``response``, are
refused), and a chat starts with optional system turns, then alternates user and assistant turns
starting with the user's and ending with the assistant's. Every other field is metadata: it is kept
with the row and never used for ranking. Ids (``id``) are unique, non-empty strings or integers; a row
without one gets ``row-<index>``.

A ``save_to_disk`` directory holding a ``DatasetDict`` is read from one split: the one asked for
(``--split``), else ``train``, else its only split. Compressed files (gzip, bz2, xz, zstd, zip) and
CSV/TSV files are refused with a message saying so. A JSONL line that is empty or holds only
whitespace (as :meth:`str.isspace` defines it, so a no-break space or a control character such as
U+001F too) is blank: not a row. :func:`jsonl_lines` is the one place that rule lives, for every
reader and writer of a data file.

Very long rows cost bounded work: :func:`encode_row` tokenises at most ``CHARS_PER_TOKEN`` characters
per token of ``max_length`` of each text (8 times longer prefixes, up to the whole text, when that
prefix gives too few tokens), and
the record stored in an index (:func:`capped_record`) has every string field longer than
``RECORD_STRING_CAP`` characters (64 Ki, or ``CHARS_PER_TOKEN`` x ``max_length`` if more) cut, with a
visible ``[actindex: cut ...]`` marker at the end, so the stored record stays a valid row.

Loss mask convention: ``loss_mask[t]`` is True when token ``t`` is a response token, i.e. when the
model's prediction of token ``t`` (made at position ``t - 1``) enters the loss
``L(x) = -sum_{t: mask} log p(x_t | x_<t)``. The same positions form ``R`` in DESIGN section 2:
``mean_R`` averages hidden states at the positions that hold response tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

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


#: leading bytes of the compressed formats the loaders refuse, and their names
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
          (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"))
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd",
                        ".zip": "zip"}
_TABLE_SUFFIXES = {".csv": "CSV", ".tsv": "TSV"}


def check_file_kind(path: Path) -> None:
    """Refuse a file the loaders cannot read, with a message that says why.

    Compressed files are recognised by their magic bytes or their extension, CSV/TSV by extension.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    kind = kind or _COMPRESSED_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        problem = f"is {kind}-compressed; compressed files are not supported: decompress it first"
        raise DataError(path, None, None, problem)
    table = _TABLE_SUFFIXES.get(path.suffix.lower())
    if table is not None:
        raise DataError(path, None, None, f"{table} is not supported: convert it to JSONL or parquet")
    if head.startswith(b"PAR1") and path.suffix.lower() != ".parquet":
        raise DataError(path, None, None, "is a parquet file: name it with the .parquet extension")


def iter_records(path: str | os.PathLike, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a JSONL file, parquet file or HF dataset directory.

    ``split`` names the split of a ``DatasetDict`` directory (:func:`resolve_split`); it is refused
    for a file.
    """
    path = resolve_data_path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        yield from _iter_hf_dataset(path, split)
        return
    if split is not None:
        raise DataError(path, None, None, f"--split {split!r} names a split of a save_to_disk DatasetDict; "
                        "this is a file: drop --split")
    check_file_kind(path)
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        yield from _iter_jsonl(path)


def is_blank_line(raw: bytes) -> bool:
    """Whether a raw JSONL line holds no row: empty or only whitespace by :meth:`str.isspace`.

    A no-break space (U+00A0) or a control character such as U+001F alone makes a blank line; bytes
    that are not UTF-8 do not (the loader reports them).
    """
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def jsonl_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Every raw line of a JSONL file as ``(line_number, bytes as read, holds_a_row)``.

    The one rule for "is this line a row" (:func:`is_blank_line`), shared by the loader and by the
    filter's line copier, so row ``i`` of an index is the ``i``-th line where ``holds_a_row`` is true.
    """
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            yield line_no, raw, not is_blank_line(raw)


def parse_jsonl_line(path: Path, line_no: int, raw: bytes) -> dict[str, Any]:
    """The JSON object on one raw JSONL line that holds a row, or a :class:`DataError` naming the line."""
    try:
        line = raw.decode("utf-8").rstrip()
    except UnicodeDecodeError as err:
        problem = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save it as UTF-8"
        raise DataError(path, line_no, None, problem) from None
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
    return record


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    seen_any = False
    for line_no, raw, is_row in jsonl_lines(path):
        if is_row:
            seen_any = True
            yield line_no, parse_jsonl_line(path, line_no, raw)
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


def load_hf_dataset(path: Path) -> Any:
    """``datasets.load_from_disk(path)`` (a ``Dataset`` or a ``DatasetDict``), or a one-line :class:`DataError`."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(path, None, None, "reading a save_to_disk directory needs the 'datasets' package") from None
    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - surface as one line
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(path, None, None, f"not a Hugging Face save_to_disk directory ({reason})") from None


def choose_split(path: Path, names: Sequence[str], split: str | None) -> str:
    """The split of a ``DatasetDict`` to read: ``split`` if given, else ``train``, else the only split.

    Anything else (an unknown split, several splits and none named ``train``) is a :class:`DataError`
    listing the splits.
    """
    listed = ", ".join(names) if names else "none"
    if split is not None:
        if split not in names:
            raise DataError(path, None, None, f"has no split {split!r} (splits: {listed})")
        return split
    if "train" in names:
        return "train"
    if len(names) == 1:
        return names[0]
    if not names:
        raise DataError(path, None, None, "the DatasetDict has no splits")
    raise DataError(path, None, None, f"has splits {listed} and none is 'train': choose one with --split")


def open_hf_split(path: Path, split: str | None = None) -> tuple[Any, str | None]:
    """``(dataset, split)``: the rows of a ``save_to_disk`` directory and the split they are (:func:`choose_split`).

    ``split`` is ``None`` for a directory holding a single ``Dataset``; naming one there is refused.
    """
    import datasets

    ds = load_hf_dataset(path)
    if isinstance(ds, datasets.DatasetDict):
        chosen = choose_split(path, list(ds), split)
        return ds[chosen], chosen
    if split is not None:
        raise DataError(path, None, None, f"is a single dataset, not a DatasetDict, so it has no split {split!r}: "
                        "drop --split")
    return ds, None


def resolve_split(path: str | os.PathLike, split: str | None = None) -> str | None:
    """The split rows are read from (:func:`choose_split`): ``None`` for a file or a single ``Dataset``."""
    path = resolve_data_path(path)
    return open_hf_split(path, split)[1] if path.is_dir() else None


def _iter_hf_dataset(path: Path, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    ds, _ = open_hf_split(path, split)
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
    """Turn one raw record into a :class:`Row`, or raise a :class:`DataError` naming the field.

    Checks everything the build needs before a model is loaded: one training shape, its fields'
    types, the turn order of a chat (:func:`_check_turn_order`) and the id.
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


def _validated_rows(path: Path, limit: int | None, split: str | None = None) -> Iterator[Row]:
    """Every row of ``path`` (the first ``limit``), normalised, with unique ids checked."""
    seen: dict[str, tuple[int, bool]] = {}  # id -> (line, whether the id was generated)
    for line, record in iter_records(path, split):
        if limit is not None and len(seen) >= limit:
            return
        row = normalise_record(path, line, len(seen), record)
        generated = "id" not in record
        if row.id in seen:
            raise DataError(path, line, "id", _duplicate_problem(row.id, seen[row.id], generated))
        seen[row.id] = (line, generated)
        yield row


def _duplicate_problem(row_id: str, first: tuple[int, bool], generated: bool) -> str:
    """The message for an id seen before, saying which of the two lines got a generated ``row-<index>`` id."""
    first_line, first_generated = first
    if not (generated or first_generated):
        return f"duplicate id {row_id!r} (first on line {first_line})"
    if generated:
        return (f"duplicate id {row_id!r}: this row has no 'id' and was given the generated id {row_id!r} "
                f"(row-<index>), which line {first_line} gives explicitly; give every row an explicit id")
    return (f"duplicate id {row_id!r}: line {first_line} has no 'id' and was given the generated id {row_id!r} "
            f"(row-<index>), which this row gives explicitly; give every row an explicit id")


def load_rows(path: str | os.PathLike, limit: int | None = None, split: str | None = None) -> list[Row]:
    """Read and validate every row of a training file (the first ``limit`` rows if given).

    Ids must be unique; rows without an ``id`` field get ``row-<index>``. ``split`` names the split
    of a ``DatasetDict`` directory (:func:`choose_split`).
    """
    return list(_validated_rows(resolve_data_path(path), limit, split))


@dataclass(frozen=True)
class RowFile:
    """A validated training file of ``len(self)`` rows, read in parts and never held whole.

    :func:`scan_rows` checks every row once (so a bad row fails before any work starts); the build
    then streams the rows it needs with :meth:`parts`, so memory does not grow with the file.
    """

    path: Path
    count: int
    split: str | None = None  # the split of a DatasetDict directory the rows are read from

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Row]:
        return self.rows(0, self.count)

    def rows(self, start: int, end: int) -> Iterator[Row]:
        """Rows ``[start, end)`` in file order (earlier rows are read past, not normalised)."""
        for index, (line, record) in enumerate(iter_records(self.path, self.split)):
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


def scan_rows(path: str | os.PathLike, limit: int | None = None, split: str | None = None) -> RowFile:
    """Validate every row of a training file (as :func:`load_rows`) keeping only their count.

    The returned :class:`RowFile` records the split actually read (``split``, or the one
    :func:`choose_split` picks), ``None`` for a file.
    """
    path = resolve_data_path(path)
    chosen = resolve_split(path, split) if path.is_dir() else split
    return RowFile(path, sum(1 for _ in _validated_rows(path, limit, chosen)), chosen)


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


Render = Callable[[Sequence[dict[str, str]], bool], list[int]]


def _closing_length(render: Render, history: Sequence[dict[str, str]], start: list[int], end: list[int]) -> int:
    """How many tokens at the end of an assistant turn (``end[len(start):]``) close it: the tokens the
    template renders after an empty response, when the turn ends with them and has content before them."""
    empty = render([*history, {"role": "assistant", "content": ""}], False)
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
    """Whether the tokenizer has a chat template (else single-turn rows are rendered as plain text)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _guarded(row: Row, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; anything the tokenizer or its chat template raises becomes a
    :class:`DataError` naming the row's file, line and field."""
    try:
        return call(*args, **kwargs)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - tokenizers and jinja templates raise anything; one line for users
        reason = (str(err).splitlines() or [""])[0].strip() or "no message"
        field = "messages" if row.messages is not None else "text"
        raise DataError(row.path, row.line, field,
                        f"the tokenizer failed on this row ({type(err).__name__}: {reason})") from None


def _capped(tokenize: Callable[[str], list[int]], text: str, max_length: int | None) -> str:
    """``text``, or the shortest of its prefixes of ``CHARS_PER_TOKEN * max_length * 8**k`` characters
    that tokenises to more than ``max_length + CUT_MARGIN`` tokens (the whole text when none does).

    The tokens a cut can change lie past the first ``max_length``, which truncation drops anyway,
    so a cut row encodes to the same ids and mask as the whole row, with bounded work.
    """
    if max_length is None:
        return text
    budget = CHARS_PER_TOKEN * max_length
    while len(text) > budget:
        prefix = text[:budget]
        if len(tokenize(prefix)) > max_length + CUT_MARGIN:
            return prefix
        budget *= 8
    return text


def encode_row(tokenizer: Any, row: Row, max_length: int | None = None, content_only: bool = False) -> Encoded:
    """Token ids and loss mask for a row.

    Chat rows go through the tokenizer's chat template; each assistant turn's tokens (the
    template's end-of-turn token included) are found by tokenising the conversation up to the
    turn with the generation prompt and up to the end of the turn, so the mask is exact for any
    template whose renders are prefixes of one another. Without a chat template, a
    single-turn row is rendered as ``prompt + "\\n" + response``. Rows longer than ``max_length``
    are cut on the right and flagged ``truncated``.

    Work is bounded by ``max_length``, not by the row: each text (or message content) longer than
    ``CHARS_PER_TOKEN * max_length`` characters is tokenised from a prefix that holds enough tokens
    (:func:`_capped`), and turns after the first ``max_length`` tokens are not rendered. The result
    is the same as for the whole row.

    ``content_only`` leaves the tokens that close each response out of the mask: the tokens the
    template writes after an empty response (``<|im_end|>`` and a newline, say), or the end-of-sequence
    token without a template. They are the same for every row.

    Anything the tokenizer or the chat template raises becomes a :class:`DataError` naming the
    row's file (``row.path``), line and field.
    """

    def tokenize(text: str, special: bool = False) -> list[int]:
        return list(_guarded(row, tokenizer, text, add_special_tokens=special)["input_ids"])

    def render(messages: Sequence[dict[str, str]], generation_prompt: bool) -> list[int]:
        return _guarded(row, _chat_ids, tokenizer, messages, generation_prompt)

    def cap(text: str) -> str:
        return _capped(tokenize, text, max_length)

    if row.messages is None:
        ids = tokenize(cap(row.text or ""), special=True)
        mask = [False] + [True] * (len(ids) - 1)
    elif has_chat_template(tokenizer):
        messages = [dict(m, content=cap(m["content"])) for m in row.messages]
        ids, mask = [], []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = render(messages[:turn], True)
            end = render(messages[: turn + 1], False)
            if end[: len(ids)] != ids:
                raise DataError(
                    row.path, row.line, "messages",
                    "the tokenizer's chat template does not render turns as prefixes; cannot locate "
                    "assistant tokens",
                )
            # Usually ``start`` is a prefix of ``end``. When a response begins with whitespace the
            # tokenizer may merge it with the generation prompt's last token: the response then
            # starts at the first token where the two renders differ.
            start = start[: _common_prefix(start, end)]
            closing = _closing_length(render, messages[:turn], start, end) if content_only else 0
            mask += [False] * (len(start) - len(ids)) + [True] * (len(end) - len(start) - closing) + [False] * closing
            ids = end
            if max_length is not None and len(ids) > max_length:
                break  # later turns only add tokens that truncation drops
    else:
        users = [m for m in row.messages if m["role"] != "assistant"]
        if len(row.messages) != 2 or len(users) != 1:
            raise DataError(
                row.path, row.line, "messages",
                "the model has no chat template, so only single-turn rows can be rendered",
            )
        prompt_ids = tokenize(cap(users[0]["content"]) + "\n", special=True)
        resp_ids = tokenize(cap(row.messages[-1]["content"]))
        if tokenizer.eos_token_id is not None:
            resp_ids = resp_ids + [tokenizer.eos_token_id]
        ids = list(prompt_ids) + list(resp_ids)
        closing = int(content_only and tokenizer.eos_token_id is not None)
        mask = [False] * len(prompt_ids) + [True] * (len(resp_ids) - closing) + [False] * closing
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(input_ids=list(ids), loss_mask=mask, truncated=truncated)


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
