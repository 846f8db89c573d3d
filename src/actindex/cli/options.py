"""Command-line options made from the config dataclasses (the pattern of bergson's CLI).

:func:`config_options` turns every field of a stage's config into a ``click`` option: the flag is the
field's name (``max_length`` -> ``--max-length``), its type, default and help text come from the field
(:func:`actindex.configs.option`), a boolean that defaults to on gets ``--x/--no-x``, lists are
comma-separated, and a field with choices gets them from its registry, read only when a command parses
or shows its help (so ``actindex --help`` loads no registry). The command then builds the config from
its keyword arguments (:func:`config_from`): the CLI never repeats a choice list or a default.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

import click

from actindex.configs import choices_of, flag

F = Callable[..., Any]


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices are read from a registry when first needed."""

    def __init__(self, source: Callable[[], Sequence[str]]):
        self._source = source
        self.case_sensitive = True

    @property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        return tuple(self._source())


def _comma_list(item: type) -> Callable[[Any, Any, str | None], list[Any] | None]:
    def parse(_ctx: Any, _param: Any, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            return [item(x.strip()) for x in value.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {item.__name__} values, got {value!r}") from None

    return parse


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of an annotation: ``int | None`` -> ``(int, True)``; ``int | str`` -> ``(str, False)``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        concrete = [a for a in args if a is not type(None)]
        optional = len(concrete) < len(args)
        if len(concrete) == 1:
            return concrete[0], optional
        return str, optional
    return annotation, False


def field_option(f: Field, annotation: Any, name: str | None = None, required: bool = False) -> Callable[[F], F]:
    """The ``click.option`` of one config field (``required``: no default, click asks for it)."""
    kind, _ = _base_type(annotation)
    default = f.default if f.default is not MISSING and not required else None
    flag_name = name or f.metadata.get("flag") or flag(f.name)
    help_text = f.metadata.get("help", "")
    kwargs: dict[str, Any] = {"help": help_text}
    if kind is bool:
        if default:
            return click.option(f"{flag_name}/--no-{flag_name[2:]}", f.name, default=True, show_default=True,
                                help=help_text)
        return click.option(flag_name, f.name, is_flag=True, default=False, help=help_text)
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind) or (str,)
        kwargs["callback"] = _comma_list(item)
        kwargs["help"] = help_text + " Comma-separated."
        kwargs["metavar"] = f.metadata.get("metavar") or "LIST"
    elif f.metadata.get("choices") is not None:
        source = f.metadata["choices"]
        kwargs["type"] = LazyChoice(source if callable(source) else (lambda s=source: s))
    elif kind is int and f.metadata.get("minimum") is not None:
        kwargs["type"] = click.IntRange(min=int(f.metadata["minimum"]))
    elif kind is float and f.metadata.get("minimum") is not None:
        kwargs["type"] = click.FloatRange(min=float(f.metadata["minimum"]))
    elif kind in (int, float):
        kwargs["type"] = kind
    if f.metadata.get("metavar") and "metavar" not in kwargs:
        kwargs["metavar"] = f.metadata["metavar"]
    if default is not None:
        kwargs.update(default=default, show_default=True)
    return click.option(flag_name, f.name, required=required, **kwargs)


def config_options(cls: type, exclude: Sequence[str] = (), names: dict[str, str] | None = None,
                   required: Sequence[str] = ()) -> Callable[[F], F]:
    """Decorate a command with an option per CLI field of the config dataclass ``cls`` (in field order).

    ``exclude`` leaves fields out (the command handles them), ``names`` renames flags (``{"k": "--top-k"}``),
    ``required`` marks options that must be given.
    """
    hints = typing.get_type_hints(cls)
    chosen = [f for f in fields(cls) if f.metadata.get("cli", True) and f.name not in exclude]

    def decorate(func: F) -> F:
        for f in reversed(chosen):
            func = field_option(f, hints[f.name], (names or {}).get(f.name), f.name in required)(func)
        return func

    return decorate


def config_from(cls: type, options: dict[str, Any]) -> Any:
    """The config built from a command's keyword arguments (the fields it has; the rest stay for the command)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names})


def pop_config(cls: type, options: dict[str, Any]) -> Any:
    """:func:`config_from`, removing the config's fields from ``options``."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: options.pop(k) for k in list(options) if k in names})


__all__ = ["LazyChoice", "choices_of", "config_from", "config_options", "field_option", "pop_config"]
