"""Progress bars (tqdm) for every step longer than a few seconds: rows/s and an ETA on a terminal,
nothing when asked to be quiet or when the output is not a terminal (a log file, a test runner)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (``dynamic_ncols``), shown when ``show`` and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if show else True, dynamic_ncols=True, **kwargs)
