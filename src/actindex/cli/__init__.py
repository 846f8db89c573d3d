"""Stage 13 — the command line: ``actindex build | info | verify | behaviors | query | report |
fit-curvature | filter | correct | detect | merge | serve | export``.

Every command's options are made from its stage's config dataclass (:mod:`actindex.cli.options`), so
choices, defaults and help text live in one place. Every user-fixable problem prints one line
``error: ...`` and exits with status 2; ``--debug`` shows the traceback instead. Commands import their
stage only when they run: ``actindex --help`` loads no model library.
"""

from __future__ import annotations

from actindex.cli.main import main

# the commands register themselves on ``main`` (the order is the order of ``actindex --help``)
# isort: off
from actindex.cli import build as _build  # noqa: F401
from actindex.cli import inspect as _inspect  # noqa: F401
from actindex.cli import query as _query  # noqa: F401
from actindex.cli import act as _act  # noqa: F401
from actindex.cli import serve as _serve  # noqa: F401
# isort: on

__all__ = ["main"]
