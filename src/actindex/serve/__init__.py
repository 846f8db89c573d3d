"""``actindex serve``: one process keeps the model, the index and its behaviour cache loaded and answers over HTTP.

    config.py     ServeConfig, the settings of ``actindex serve`` (light: the CLI reads it)
    requests.py   the request bodies, the query's made from QueryConfig (its defaults and choices, not repeated)
    app.py        create_app(index) -> FastAPI: /health, /info, /behaviors, /query, /search, /rows/{id}, the page
    static/       the browser page (plain HTML, JS and CSS, shipped with the package; no network)

    from actindex.serve import create_app
    app = create_app(actindex.Index.open("idx"))      # uvicorn.run(app) or any ASGI server

FastAPI and uvicorn come with the ``serve`` extra (``pip install 'actindex[serve]'``).
"""

from __future__ import annotations

from actindex.lazy import lazy_exports

_EXPORTS = {"create_app": "actindex.serve.app", "ServeConfig": "actindex.serve.config"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
