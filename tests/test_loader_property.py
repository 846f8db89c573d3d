"""Property: on any one-line input the loader returns rows or raises DataError, nothing else; and
whatever it accepts can be stored (ids and records encode to UTF-8, ids hold no NUL)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actindex.core.readers import iter_records, jsonl_lines, load_rows
from actindex.core.rows import TEXT_FIELDS
from actindex.errors import DataError

# any character, lone surrogates included (json.dumps writes them as \ud800 escapes)
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.sampled_from(
    ["", "  ", "user", "assistant", "system", "bot", "hello", "\x00"]
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
KEYS = [*TEXT_FIELDS, "id", "role", "content"]
MESSAGE = st.dictionaries(st.sampled_from(["role", "content", "name"]), JSON, max_size=3) | st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "bot"]), "content": TEXT | JSON}
)
RECORD = st.dictionaries(st.sampled_from(KEYS) | TEXT, JSON | st.lists(MESSAGE, max_size=3), max_size=5)
ID = {"id": st.integers() | TEXT | JSON}
TURN = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT})
CHAT = st.builds(lambda head, last: head + [{"role": "assistant", "content": last}], st.lists(TURN, max_size=3), TEXT)
SHAPED = (  # close to valid rows, so that many are accepted
    st.fixed_dictionaries({"messages": CHAT}, optional=ID)
    | st.fixed_dictionaries({"prompt": TEXT, "response": TEXT}, optional=ID)
    | st.fixed_dictionaries({"instruction": TEXT, "output": TEXT}, optional={"input": TEXT | JSON, **ID})
    | st.fixed_dictionaries({"text": TEXT}, optional=ID)
)
VALUE = JSON | RECORD | SHAPED | st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3)}, optional=ID)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(line: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_bytes(line + b"\n")
        try:
            rows = load_rows(path)
        except DataError as err:
            assert str(err).startswith(str(path))
            return
    for row in rows:
        assert isinstance(row.id, str) and "\0" not in row.id
        row.id.encode("utf-8")
        json.dumps(row.record, ensure_ascii=False).encode("utf-8")
        assert (row.messages is None) != (row.text is None)
        assert row.id.strip()
        if row.messages is not None:
            assert row.messages[-1]["role"] == "assistant" and row.messages[-1]["content"].strip()
            turns = [m["role"] for m in row.messages]
            chat = turns[turns.count("system"):]
            assert "system" not in chat and chat == ["user", "assistant"] * (len(chat) // 2)


@SETTINGS
@given(VALUE)
def test_any_json_line_loads_or_raises_data_error(value: object) -> None:
    _check(json.dumps(value).encode("utf-8"))


@SETTINGS
@given(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")))
def test_any_bytes_line_loads_or_raises_data_error(line: bytes) -> None:
    _check(line)


# characters around which "blank line" rules differ (bytes.strip, str.strip, JSON whitespace)
EDGE = st.sampled_from([" ", "\t", "\r", "\u00a0", "\x1f", "\x1c", "\x0b", "\x0c", "\u2028", "\u3000", "\u0085",
                        "\u200b", "\ufeff", "x"])


@SETTINGS
@given(st.lists(st.text(EDGE, max_size=3), max_size=5), st.integers(0, 5))
def test_loader_and_line_iterator_agree_on_what_a_row_is(edges: list[str], at: int) -> None:
    """The loader reads exactly the lines :func:`jsonl_lines` marks as rows, or fails on the first
    of them that is not a JSON object."""
    lines = [*edges]
    lines.insert(min(at, len(lines)), json.dumps({"text": "hello"}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
        row_lines = [n for n, _, is_row in jsonl_lines(path) if is_row]
        try:
            assert [n for n, _ in iter_records(path)] == row_lines
        except DataError as err:
            bad = [n for n in row_lines if lines[n - 1] != json.dumps({"text": "hello"})]
            assert bad and err.line == bad[0]
