"""Strategies registered by name (the pattern of kronfluence's ``factor/config.py``).

A family of strategies is a base class that derives from :class:`Registered` with a ``noun`` (for
error messages), and ``Base.get(name)`` returns an instance or a one-line error listing the known names.
A family's members join its registry in one of two ways:

* listed (``listed=True``): the module that defines them states the registry as an explicit ordered tuple,
  ``Base.register(A, B, C)``; the order is the CLI's choices and help, and wherever the first of equals wins
  (the adaptive default's ties), so it is written down rather than left to the order of imports;
* by subclassing: every subclass that names itself (``name = "..."``) joins in the order it is defined.
"""

from __future__ import annotations

from typing import Any, ClassVar

from actindex.errors import ActindexError


class Registered:
    """Base of a registered family: ``class Method(Registered, noun="method", listed=True)``."""

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Any]]]
    noun: ClassVar[str]
    also: ClassVar[str] = ""  # what else ``get``'s caller accepts, for the error message
    listed: ClassVar[bool] = False  # members join by :meth:`register` alone

    def __init_subclass__(cls, noun: str | None = None, also: str = "", listed: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if noun is not None:  # the family's base: a fresh registry
            cls.registry, cls.noun, cls.also, cls.listed = {}, noun, also, listed
        elif "name" in cls.__dict__ and not cls.listed:
            cls.registry[cls.name] = cls

    @classmethod
    def register(cls, *members: type[Any]) -> None:
        """The family's registry: ``members``, in this order (a listed family's one statement of it)."""
        names = [m.name for m in members]
        if not cls.listed or not all(issubclass(m, cls) for m in members) or len(set(names)) != len(names):
            raise TypeError(f"{cls.__name__}.register takes distinct members of a listed family")
        cls.registry.clear()
        cls.registry.update(zip(names, members))

    @classmethod
    def get(cls, name: str) -> Any:
        if name not in cls.registry:
            known = ", ".join(cls.registry) + (f" or {cls.also}" if cls.also else "")
            raise ActindexError(f"unknown {cls.noun} {name!r}: expected one of {known}")
        return cls.registry[name]()
