"""Strategies registered by subclassing (the pattern of kronfluence's ``factor/config.py``).

A family of strategies is a base class that derives from :class:`Registered` with a ``noun`` (for
error messages); every subclass that names itself (``name = "..."``) joins the family's registry,
and ``Base.get(name)`` returns an instance or a one-line error listing the known names.
"""

from __future__ import annotations

from typing import Any, ClassVar

from actindex.errors import ActindexError


class Registered:
    """Base of a registered family: ``class Method(Registered, noun="method")``."""

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Any]]]
    noun: ClassVar[str]
    also: ClassVar[str] = ""  # what else ``get``'s caller accepts, for the error message

    def __init_subclass__(cls, noun: str | None = None, also: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if noun is not None:  # the family's base: a fresh registry
            cls.registry, cls.noun, cls.also = {}, noun, also
        elif "name" in cls.__dict__:
            cls.registry[cls.name] = cls

    @classmethod
    def get(cls, name: str) -> Any:
        if name not in cls.registry:
            known = ", ".join(cls.registry) + (f" or {cls.also}" if cls.also else "")
            raise ActindexError(f"unknown {cls.noun} {name!r}: expected one of {known}")
        return cls.registry[name]()
