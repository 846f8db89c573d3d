"""Query by example (docs/design.md#by-example): one model output attributed by its own vectors.

An example is a prompt and a response, with no control. It becomes a :class:`~actindex.query.behaviors.Behavior`
with :attr:`~actindex.query.behaviors.Behavior.example` set, whose pairs hold the prompt (and the turns before
it) and the response as ``treatment``; every query method then forms its vector from the examples' own rows
instead of treatment minus control (:func:`~actindex.query.context.per_pair`):

    psi = norm(mean_j t_l(x_j))           residual change (and its pooled variant, so the ensemble too)
    psi = norm(mean_j a_l(x_j))           mean-activation methods
    psi = norm(mean_j grad L(x_j))        gradient methods (projected, or full and preconditioned)

the single-example analogue of the pair queries: a training row that is the example itself scores cosine 1.

:func:`example_behavior` reads examples: a JSONL (or parquet) file of rows in any training-row shape
(:func:`~actindex.core.rows.normalise_record`: ``messages``, ``prompt``/``response``...), a JSON object (or
list of them), or ``"prompt => response"``. :func:`generate_behavior` reads prompts the model answers first
(greedy, when the behaviour is completed with the model): a JSONL file of ``{"prompt"}`` or ``{"messages"}``
rows ending with a user turn, or the prompt's text. Several rows make one query (their vectors averaged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actindex.core.jsontext import NOT_UNICODE, JSONTextError, loads, lone_surrogate
from actindex.errors import ActindexError, DataError
from actindex.query.behaviors import Behavior, Pair

#: what separates the prompt from the response in an example given as text
ARROW = "=>"
#: an assistant turn appended to a prompt row so that :func:`normalise_record` checks its turns
_PLACEHOLDER = {"role": "assistant", "content": "-"}


def example_behavior(spec: str | dict[str, Any] | list[Any], name: str | None = None, files: bool = True) -> Behavior:
    """The query-by-example behaviour of ``spec``: a file of training rows, a row (a dict, or its JSON text), a
    list of rows, or ``"prompt => response"``; ``files=False`` never reads a file (a server's requests)."""
    source, records = _records(spec, "example", files)
    if records is None:
        _check_text(spec, "example")
        prompt, arrow, response = str(spec).partition(ARROW)
        if not arrow or not prompt.strip() or not response.strip():
            raise ActindexError(f"an example is a file of training rows, a JSON object or 'prompt {ARROW} response'; "
                                f"got {str(spec)[:80]!r}")
        records = [(1, {"prompt": prompt.strip(), "response": response.strip()})]
    _check_unicode(source, records)
    pairs = [_example_pair(source, line, i, record) for i, (line, record) in enumerate(records)]
    return _behavior(name or _name(source, "example"), pairs, source)


def generate_behavior(spec: str | list[str], name: str | None = None, files: bool = True) -> Behavior:
    """The query-by-example behaviour whose examples the model writes: it answers each prompt of ``spec`` (a
    file of prompt rows, a list of prompts, or one prompt's text) when the behaviour is completed;
    ``files=False`` never reads a file."""
    if isinstance(spec, list):
        records: list[tuple[int, Any]] | None = [(i + 1, {"prompt": p}) for i, p in enumerate(spec)]
        source = "<request>"
    else:
        source, records = _records(spec, "generate", files)
        if records is None:
            _check_text(spec, "generate")
            if not spec.strip():
                raise ActindexError("--generate needs a prompt or a file of prompts")
            records = [(1, {"prompt": spec})]
    _check_unicode(source, records)
    pairs = [_prompt_pair(source, line, i, record) for i, (line, record) in enumerate(records)]
    return _behavior(name or _name(source, "generate"), pairs, source)


def asked_behavior(behavior: str | Behavior | None = None, example: Any = None,
                   generate: str | list[str] | None = None) -> str | Behavior | None:
    """The one behaviour a query asks for: ``behavior`` as given, or the behaviour of an ``example`` or of the
    model's answers to ``generate``'s prompts (giving more than one of them is refused)."""
    given = [name for name, value in (("behavior", behavior), ("example", example), ("generate", generate))
             if value is not None]
    if len(given) > 1:
        raise ActindexError(f"a query asks one thing: give one of {', '.join(given)}")
    if example is not None:
        return example_behavior(example)
    if generate is not None:
        return generate_behavior(generate)
    return behavior


def _behavior(name: str, pairs: list[Pair], source: str) -> Behavior:
    if not pairs:
        raise DataError(source, None, None, "holds no rows to attribute")
    return Behavior(name=name, pairs=pairs, source=source, example=True,
                    description="query by example: the rows attributed by their own vectors")


def _name(source: str, default: str) -> str:
    """A behaviour's name: its file's stem, or ``default`` for rows given inline."""
    return default if source.startswith("<") else Path(source).stem


def _records(spec: Any, what: str, files: bool = True) -> tuple[str, list[tuple[int, Any]] | None]:
    """``(source, [(line, record)])`` of a file (when ``files``), a dict, a list or JSON text; ``None`` records for
    other text."""
    from actindex.core.readers import iter_records
    from actindex.core.sources import read_once

    if isinstance(spec, dict):
        return "<request>", [(1, spec)]
    if isinstance(spec, list):
        return "<request>", list(enumerate(spec, 1))
    if not isinstance(spec, str):
        raise ActindexError(f"--{what}: expected a file, a JSON object or text, got {type(spec).__name__}")
    text = spec.strip()
    if text.startswith("{") or (text.startswith("[") and text.endswith("]")):
        try:
            value = loads(text)
        except JSONTextError as err:
            raise ActindexError(f"--{what}: {err.problem}") from None
        return _records(value, what, files)
    if files and not any(c in spec for c in "\n\0") and len(spec) < 4096 and Path(spec).exists():
        path = Path(spec)
        if path.is_file() or path.is_dir():
            return spec, list(iter_records(spec))
        with read_once(path) as copy:  # a pipe: --example <(cat rows.jsonl)
            return spec, list(iter_records(copy))
    return "<text>", None


def _check_text(spec: Any, what: str) -> None:
    """Refuse text that is not Unicode (an argument with bytes that are not UTF-8, or a lone surrogate)."""
    if isinstance(spec, str) and lone_surrogate(spec) is not None:
        raise ActindexError(f"--{what}: {NOT_UNICODE}")


def _check_unicode(source: str, records: list[tuple[int, Any]]) -> None:
    """Refuse the first row with a string that is not Unicode, naming its line and field."""
    for line, record in records:
        where = lone_surrogate(record)
        if where is not None:
            raise DataError(source, line, where or None, NOT_UNICODE)


def _example_pair(source: str, line: int, index: int, record: Any) -> Pair:
    """One example from a training row of any shape: the last assistant turn is attributed, in its context."""
    from actindex.core.rows import json_type, normalise_record

    if not isinstance(record, dict):
        raise DataError(source, line, None, f"expected a training row (an object), got {json_type(record)}")
    row = normalise_record(Path(source), line, index, record)
    if row.messages is None:
        raise DataError(source, line, "text", "a plain text row has no prompt and response to attribute; give "
                        "'messages', 'prompt'+'response' or 'instruction'+'output'")
    *history, user, answer = row.messages
    return Pair(user["content"], answer["content"], None, line, history=history)


def _prompt_pair(source: str, line: int, index: int, record: Any) -> Pair:
    """One prompt for the model to answer: ``{"prompt"}``, or ``{"messages"}`` ending with a user turn."""
    from actindex.core.rows import json_type, normalise_record

    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        messages = record["messages"]
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            raise DataError(source, line, "messages", "the last message must be the user's prompt for the model "
                            "to answer")
        row = normalise_record(Path(source), line, index, {"messages": [*messages, _PLACEHOLDER]})
        *history, user, _ = row.messages
        return Pair(user["content"], None, None, line, history=history)
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        got = json_type(record) if not isinstance(record, dict) else f"'prompt' {json_type(prompt)}"
        raise DataError(source, line, "prompt", f"expected a non-empty prompt string (or 'messages'), got {got}")
    return Pair(prompt, None, None, line)
