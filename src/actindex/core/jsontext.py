"""JSON text from users (``--example``, ``--generate``, HTTP bodies), parsed safely.

:func:`loads` refuses, before parsing, a value nested deeper than :data:`MAX_DEPTH` arrays and objects (a
training row is a few levels deep; Python's parser, and every function that walks the value after it, would
otherwise end in a ``RecursionError``). The depth is counted on the text with its strings taken out:

    depth = max over prefixes of (#'[' + #'{') - (#']' + #'}')

:func:`lone_surrogate` finds the first string of a parsed value (or of a command-line argument, which Python
decodes with ``surrogateescape``) that is not valid Unicode: a lone surrogate, from a ``\\ud800`` escape or from
bytes that are not UTF-8. Tokenizers and HDF5 reject such strings deep inside; the field is named here instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

#: the deepest nesting of arrays and objects accepted in user JSON
MAX_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONTextError(ValueError):
    """JSON text that is malformed (``malformed``), nested too deeply or not Unicode: ``problem`` is one line."""

    def __init__(self, problem: str, malformed: bool = False):
        self.problem, self.malformed = problem, malformed
        super().__init__(problem)


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings excluded)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def loads(text: str | bytes) -> Any:
    """The value of JSON text, or a :class:`JSONTextError`: not UTF-8, malformed, nested deeper than
    :data:`MAX_DEPTH`, or holding a string that is not Unicode."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise JSONTextError(f"not valid UTF-8 (byte 0x{text[err.start]:02x} at offset {err.start})") from None
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise JSONTextError(f"JSON nested {depth} levels deep (at most {MAX_DEPTH})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise JSONTextError(f"malformed JSON ({err.msg}, line {err.lineno} column {err.colno})", True) from None
    except (RecursionError, ValueError):  # a number with more digits than Python converts
        raise JSONTextError("malformed JSON (a number has too many digits)", True) from None
    where = lone_surrogate(value)
    if where is not None:
        raise JSONTextError(f"{where or 'the value'}: {NOT_UNICODE}")
    return value


#: what :func:`lone_surrogate` finds, in a message
NOT_UNICODE = "not valid Unicode (a lone surrogate: a \\ud800-\\udfff escape, or bytes that are not UTF-8)"


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """The field path (``messages[1].content``; ``""`` for ``value`` itself) of the first string in ``value`` (a
    key or a value, at any depth up to :data:`MAX_DEPTH`) that holds a lone surrogate, or ``None``."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                return where or "a key"
            found = lone_surrogate(item, path)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None
