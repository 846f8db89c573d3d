"""Row filters: a query, a search, a report or a filter over the rows whose record fields have given values.

    where = {"label": "clean"}                 the rows whose record has label == "clean"
    where = {"label": ["a", "b"], "lang": "en"}  label in {a, b} and lang == "en"

A row matches when, for every field named, its stored record's value equals the value asked (or one of the
list). Values compare as JSON text, so ``1`` and ``"1"`` are equal (a command line gives every value as text);
a record without the field never matches. The filter becomes a boolean mask over the index's rows
(:func:`row_mask`) that the search itself applies (:meth:`~actindex.index.reader.IndexReader.search`): the ``k``
rows returned all match, and they are the best ``k`` of the matching rows. A field that no row has is refused in
one line (a typo would otherwise match nothing).

Each field's values are read once per open index and kept (:meth:`~actindex.index.reader.IndexReader.remembered`):
a server answers the next filter on the same field with one comparison per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from actindex.errors import ActindexError

if TYPE_CHECKING:
    from actindex.index.reader import IndexReader

#: the types a filter value may have (JSON scalars)
SCALARS = (str, int, float, bool, type(None))


def where_of(where: Mapping[str, Any] | None) -> dict[str, list[Any]] | None:
    """``where`` checked and normalised to ``{field: [values]}`` (``None`` or ``{}``: no filter); a malformed
    filter is one :class:`~actindex.errors.ActindexError` line."""
    if not where:
        return None
    if not isinstance(where, Mapping):
        raise ActindexError(f"where: expected an object of field -> value (or list of values), got {where!r}")
    out: dict[str, list[Any]] = {}
    for field, value in where.items():
        if not isinstance(field, str) or not field:
            raise ActindexError(f"where: a field name must be a non-empty string, got {field!r}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ActindexError(f"where: field {field!r} has an empty list of values (it would match no row)")
        bad = [v for v in values if not isinstance(v, SCALARS)]
        if bad:
            raise ActindexError(f"where: field {field!r}: values are strings, numbers, booleans or null, "
                                f"got {bad[0]!r}")
        out[field] = values
    return out


def where_from_text(items: Iterable[str]) -> dict[str, Any] | None:
    """The filter of ``FIELD=VALUE`` texts (a command line's ``--where``): a field given twice or more matches any
    of its values."""
    out: dict[str, list[str]] = {}
    for item in items:
        field, eq, value = item.partition("=")
        if not eq or not field.strip():
            raise ActindexError(f"--where: expected FIELD=VALUE, got {item!r}")
        out.setdefault(field.strip(), []).append(value)
    return {field: values[0] if len(values) == 1 else values for field, values in out.items()} or None


def as_text(value: Any) -> str:
    """How a value compares: a string as itself, anything else as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def field_values(reader: IndexReader, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(texts, present)`` of one record field over every row: its value as :func:`as_text` gives it, and whether
    the record has it; read once per open index."""

    def read() -> tuple[np.ndarray, np.ndarray]:
        values = reader.record_values(np.arange(len(reader)), field)
        present = np.array([v is not None for v in values], dtype=bool)
        return np.array([as_text(v) if v is not None else "" for v in values], dtype=str), present

    return reader.remembered(("where", field), read)


def row_mask(reader: IndexReader, where: Mapping[str, Any] | None) -> np.ndarray | None:
    """``mask[x]``: whether row ``x``'s record matches every field of ``where`` (``None`` without a filter)."""
    asked = where_of(where)
    if asked is None:
        return None
    mask = np.ones(len(reader), dtype=bool)
    for field, values in asked.items():
        texts, present = field_values(reader, field)
        if not present.any():
            raise ActindexError(f"where: no row of {reader.root.name} has a field {field!r}")
        mask &= present & np.isin(texts, [as_text(v) for v in values])
    return mask


def describe(where: Mapping[str, Any]) -> str:
    """``label = clean, lang in (en, fr)``: a filter as notes show it."""
    parts = []
    for field, values in (where_of(where) or {}).items():
        shown = [as_text(v) for v in values]
        parts.append(f"{field} = {shown[0]}" if len(shown) == 1 else f"{field} in ({', '.join(shown)})")
    return ", ".join(parts)
