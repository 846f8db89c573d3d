"""The HTTP API over one open index: ``create_app(index) -> FastAPI``, and how ``actindex serve`` runs it.

    GET  /health          {"status": "ok", ...}; answered on the event loop, never behind a model pass
    GET  /info            the manifest (``index.manifest.to_dict()``, paths relative to the data's folder)
    GET  /behaviors       the built-in behaviours, and whether each is in the index's behaviour cache
    GET  /cache           the behaviour cache's entries, as ``actindex cache list`` lists them
    POST /query           a QueryRequest -> what ``actindex query --format json`` prints per behaviour
    POST /search          a raw vector and a family -> scores, rows, ids (cosine)
    GET  /rows/{id}       the row: its original record, loss, token counts, data file and line
    POST /rows, GET /rows?ids=a&ids=b   several rows at once
    GET  /                the browser page (static/); GET /docs and /redoc the API docs, from assets shipped
                          in the package (static/docs/: they render without a network)

Filters and pages: ``where`` (``{"label": "clean"}``) ranks only the rows whose records match, inside the search
(:mod:`actindex.query.where`); ``offset`` with ``k`` reads a ranking a page at a time. A request returns at most
``max_page`` rows (``k = 0``, every row, is refused: a million records in one answer would hold the server).

Access: with a token (``ServeConfig.token``) every endpoint that reads the index wants ``Authorization: Bearer
<token>`` (401 otherwise); ``/health``, the page's static files and the API docs carry no data and stay open, so
a browser can load the page and then send the token. Without a token the server listens on loopback only
(:class:`~actindex.serve.config.ServeConfig` refuses other addresses). ``cors_origins`` lets pages of other
origins call the API (CORS, preflights included); ``root_path`` is the prefix a reverse proxy serves it under
(the proxy strips it; the ASGI server is told it, :func:`run` or ``uvicorn --root-path``, and the docs' links
carry it; the page's links are relative).
Answers name data files relative to the data's own folder (``host_paths`` shows the server's paths), and error
messages name the index by its folder's name.

Concurrency: requests run in a pool of ``workers`` threads. A query first runs without the model
(``QuerySession.without_model``): a behaviour in the behaviour cache is answered so, in parallel
with any other. A query that needs a model pass runs again on the one model thread, holding the model lock, so
model passes never overlap and a query waiting for one holds no worker thread; searches, cached queries and
``/health`` go on meanwhile. An identical request answered from the behaviour cache is
answered again from memory while that cache entry is unchanged (:mod:`actindex.serve.memo`).

The answers of ``/info``, ``/query``, ``/search`` and ``/rows`` are sent as the JSON they are built as (their response
models document them; validating an answer the server itself built would cost more than the search).

Nothing is written through the API except the behaviour cache inside the index (what a query formed with the
model). Errors are ``{"detail": "one line"}``: 400 for an :class:`~actindex.errors.ActindexError` (its text),
401 without the token, 404 for an unknown row, 422 for a malformed body or a page too large.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from actindex.api import Index, ModelNeeded
from actindex.core.jsontext import MAX_DEPTH, JSONTextError, loads
from actindex.errors import ActindexError
from actindex.query.behaviors import builtin_behaviors, load_behavior
from actindex.serve.config import ServeConfig
from actindex.serve.memo import AnswerMemo
from actindex.serve.requests import QueryRequest, RowsRequest, SearchRequest, asked, versus_of
from actindex.serve.responses import (
    ERRORS,
    BehaviorOut,
    CacheEntryOut,
    ErrorOut,
    HealthOut,
    InfoOut,
    QueryOut,
    RowOut,
    RowsOut,
    SearchOut,
)

STATIC = resources.files("actindex.serve") / "static"


class Served:
    """One index as the server holds it: the index (with its model and query context), the model lock, the
    memory of its answers (:mod:`actindex.serve.memo`), the row-id lookup, and how answers show paths."""

    def __init__(self, index: Index, config: ServeConfig):
        self.index, self.config = index, config
        self.model_lock = threading.Lock()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="actindex-model")
        self.memo = AnswerMemo(index.session.behavior_cache, config.answers)
        self.started = time.time()

    @cached_property
    def rows_by_id(self) -> dict[str, int]:
        return {row_id: row for row, row_id in enumerate(self.index.reader.ids())}

    def warm(self, model: bool) -> None:
        """Hold ``vectors.h5`` open and read what every query reads (the row table, each family's FAISS index, the
        query context), and the model when ``model``, before the first request. The numpy work around a search
        runs on one thread: requests run in parallel, and a BLAS thread waiting for a core of a busy machine
        would hold up a whole request."""
        idx = self.index
        one_thread_per_search()
        idx.reader.hold_open()
        for family, info in idx.families.items():
            if info.faiss:  # a family searched from its stored vectors has no FAISS file
                idx.reader.faiss_index(family)
        idx.session.query_context()
        _ = self.rows_by_id
        if model:
            idx.model()

    # ---- limits ----------------------------------------------------------------------------------------
    def check_page(self, **counts: int) -> None:
        """Refuse (422) a request for more rows than ``max_page`` (``k = 0`` asks for every row)."""
        most = self.config.max_page
        for name, count in counts.items():
            if count == 0 and name == "k":
                raise HTTPException(422, f"k: 0 (every row) is not served over HTTP; read the ranking a page at a "
                                         f"time with k at most {most} and offset")
            if count > most:
                raise HTTPException(422, f"{name}: at most {most} rows a request, got {count}; read more a page "
                                         "at a time with offset")

    # ---- what the API answers ---------------------------------------------------------------------------
    def answer(self, request: QueryRequest, key: str) -> dict[str, Any] | None:
        """The JSON answer to a query request (``key``: :meth:`AnswerMemo.key` of it) when it needs no model pass
        (a behaviour in the behaviour cache), remembered; ``None`` when it does (:meth:`answer_with_model`)."""
        behavior, config = asked(request)
        versus = versus_of(request)
        path, stamp = self.memo.entry(behavior)
        try:
            with self.index.session.without_model():
                answer = self.index.session.query(behavior, config, versus=versus).to_dict()
        except ModelNeeded:
            return None
        self.memo.keep(key, path, stamp, answer)
        return answer

    def answer_with_model(self, request: QueryRequest) -> dict[str, Any]:
        """The JSON answer to a query request that needs a model pass, run on the one model thread under the
        model lock (``/health`` says ``model_busy`` meanwhile)."""
        behavior, config = asked(request)
        with self.model_lock:
            return self.index.session.query(behavior, config, versus=versus_of(request)).to_dict()

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """Rows by cosine with the request's vector (:meth:`actindex.Index.search`, which scales it so that its
        norm cannot overflow float32)."""
        self.check_page(k=request.k)
        family = request.family or next(iter(self.index.families))
        vector = np.asarray(request.vector, dtype=np.float64)
        scores, rows = self.index.search(vector, request.k, family, request.bottom,
                                         where=request.where, offset=request.offset)
        ids = self.index.reader.ids()
        return {"family": family, "scores": [float(s) for s in scores], "rows": [int(r) for r in rows],
                "ids": [ids[r] for r in rows]}

    def row(self, row_id: str) -> dict[str, Any]:
        found = self.rows([row_id])
        if found["missing"]:
            raise HTTPException(404, f"no row with id {row_id!r} in the index")
        return found["rows"][0]

    def rows(self, ids: list[str]) -> dict[str, Any]:
        """The rows of ``ids`` (in that order) and the ids no row has."""
        self.check_page(ids=len(ids))
        rows = [self.rows_by_id[i] for i in ids if i in self.rows_by_id]
        reader = self.index.reader
        table, sources, row_ids = reader.table, reader.row_sources(rows), reader.ids()
        out = [{"id": row_ids[row], "row": row, "record": record, "loss": finite(table.loss[row]),
                "n_tokens": int(table.n_tokens[row]), "n_response": int(table.n_response[row]),
                "valid": bool(table.valid[row]), "source_row": int(table.source_row[row]),
                "line": sources[row][1], "file": self.shown(sources[row][0])}
               for row, record in zip(rows, reader.records(rows))]
        return {"rows": out, "missing": [i for i in ids if i not in self.rows_by_id]}

    def info(self) -> dict[str, Any]:
        """The manifest, its paths as :meth:`shown` shows them."""
        return self.without_paths(self.index.manifest.to_dict())

    def behaviors(self) -> list[dict[str, Any]]:
        """The built-in behaviours, each with whether a query of it is answered from the behaviour cache (an entry
        that checks out, :meth:`BehaviorCache.status`; a damaged entry is not, and says why)."""
        cache = self.index.session.behavior_cache
        out = []
        for name, description in builtin_behaviors().items():
            cached, problem = cache.status(load_behavior(name))
            out.append({"name": name, "description": description, "cached": cached,
                        "damaged": self.public(problem) if problem is not None else None})
        return out

    def cache_entries(self) -> list[dict[str, Any]]:
        """The behaviour cache's entries as ``actindex cache list`` lists them (the model's answers of a
        ``generate`` query with each), paths as :meth:`shown` shows them."""
        return [{**asdict(entry), "source": self.shown(entry.source),
                 "problem": entry.problem and self.public(entry.problem)}
                for entry in self.index.session.behavior_cache.entries()]

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "rows": self.index.manifest.rows, "model_loaded": self.index.session.model_loaded,
                "model_busy": self.model_lock.locked(), "uptime_s": round(time.time() - self.started, 1)}

    # ---- paths ----------------------------------------------------------------------------------------------
    @cached_property
    def data_roots(self) -> list[Path]:
        """The data's own folders: a data file's folder, or the directory of a directory of shards."""
        return [Path(f.path) if f.sources else Path(f.path).parent for f in self.index.manifest.data]

    def shown(self, path: str) -> str:
        """A path as answers show it: relative to the data's own folder (another absolute path: its last part),
        or as it is with ``host_paths``."""
        if self.config.host_paths or not Path(path).is_absolute():
            return path
        for root in self.data_roots:
            if Path(path).is_relative_to(root):
                return str(Path(path).relative_to(root))
        return Path(path).name

    def without_paths(self, value: Any) -> Any:
        """``value`` (JSON) with every absolute path in it shown by :meth:`shown`."""
        if isinstance(value, dict):
            return {k: self.without_paths(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.without_paths(v) for v in value]
        if isinstance(value, str) and value.startswith("/"):
            return self.shown(value)
        return value

    def public(self, message: str) -> str:
        """An error message as a client sees it: the index's folder named by its name, not its path."""
        if self.config.host_paths:
            return message
        return message.replace(str(self.index.root.resolve()), self.index.root.name).replace(
            str(self.index.root), self.index.root.name)


def create_app(index: Index, config: ServeConfig | None = None) -> FastAPI:
    """The API over ``index`` (an open :class:`~actindex.api.Index`; see the module docstring). ``config``
    (:class:`~actindex.serve.config.ServeConfig`): the worker threads, the answers remembered, whether the model
    is loaded at start (``preload``), the token, CORS origins, root path, page size and paths shown."""
    from actindex import __version__

    config = config or ServeConfig(preload=False)
    served = Served(index, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = config.threads
        await anyio.to_thread.run_sync(served.warm, config.preload)
        yield
        served.model_thread.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="actindex", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Training-data attribution: which training rows push a model towards a behaviour, "
                              "or explain one of its outputs. GET /info describes the index served.")
    app.state.served = served
    _errors(app, served)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    data = APIRouter(dependencies=[Depends(bearer_check(config.token))] if config.token else [],
                     responses=ERRORS if config.token else {k: v for k, v in ERRORS.items() if k != 401})

    @app.get("/health", summary="The server is up (never waits for a model pass; needs no token)",
             response_model=HealthOut, responses={500: ERRORS[500]})
    async def health() -> dict[str, Any]:
        return served.health()

    @data.get("/info", summary="The index's manifest: rows, model, layers, vector families",
              response_model=InfoOut)
    def info() -> JSONResponse:
        return JSONResponse(served.info())

    @data.get("/behaviors", summary="Built-in behaviours, and whether each is in the behaviour cache",
              response_model=list[BehaviorOut])
    def behaviors() -> list[dict[str, Any]]:
        return served.behaviors()

    @data.get("/cache", summary="The behaviour cache's entries (what `actindex cache list` lists), damaged ones "
                                "with why", response_model=list[CacheEntryOut])
    def cache() -> list[dict[str, Any]]:
        return served.cache_entries()

    @data.post("/query", summary="Rank the training rows for a behaviour, an example output or the model's answer",
               response_model=QueryOut)
    async def query(request: QueryRequest) -> JSONResponse:
        served.check_page(k=request.k, bottom_k=request.bottom_k)
        started = time.perf_counter()
        key = served.memo.key(request.model_dump())
        found = served.memo.recall(key, started)  # one stat: answered on the event loop
        if found is None:
            found = await run_in_threadpool(served.answer, request, key)
        if found is None:  # waits for the model thread without holding a worker thread
            found = await asyncio.get_running_loop().run_in_executor(served.model_thread, served.answer_with_model,
                                                                     request)
        return JSONResponse(found)

    @data.post("/search", summary="Rows nearest a raw vector in one family (cosine)", response_model=SearchOut)
    def search(request: SearchRequest) -> JSONResponse:
        return JSONResponse(served.search(request))

    not_found = {404: {"model": ErrorOut, "description": "No row has this id."}}

    @data.get("/rows/{row_id:path}", summary="One training row: its record, loss, token counts, file and line "
                                             "(an id may hold '/')", response_model=RowOut, responses=not_found)
    def row(row_id: str) -> JSONResponse:
        return JSONResponse(served.row(row_id))

    @data.get("/rows", summary="Several training rows by id (ids=a&ids=b)", response_model=RowsOut)
    def rows_by_query(ids: list[str] = Query(description="The ids of the rows; repeat the parameter.")
                      ) -> JSONResponse:
        return JSONResponse(served.rows(ids))

    @data.post("/rows", summary="Several training rows by id", response_model=RowsOut)
    def rows(request: RowsRequest) -> JSONResponse:
        return JSONResponse(served.rows(request.ids))

    app.include_router(data)
    _pages(app)
    return app


def bearer_check(token: str | None):
    """The dependency that lets a request through only with ``Authorization: Bearer <token>`` (401 otherwise)."""
    scheme = HTTPBearer(auto_error=False, description="The token the server was started with.")

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), (token or "").encode()):
            raise HTTPException(401, "this server needs a token: send Authorization: Bearer <token>" if not given
                                else "the token is not the server's", headers={"WWW-Authenticate": "Bearer"})

    return check


def _pages(app: FastAPI) -> None:
    """The browser page, its static files, and the API docs (Swagger UI, ReDoc) from the package's assets."""

    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        at = base(request)
        return get_swagger_ui_html(openapi_url=f"{at}{app.openapi_url}", title="actindex API",
                                   swagger_js_url=f"{at}/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{at}/static/docs/swagger-ui.css",
                                   swagger_favicon_url=f"{at}/static/docs/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        at = base(request)
        return get_redoc_html(openapi_url=f"{at}{app.openapi_url}", title="actindex API",
                              redoc_js_url=f"{at}/static/docs/redoc.standalone.js",
                              redoc_favicon_url=f"{at}/static/docs/favicon-32x32.png", with_google_fonts=False)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def one_thread_per_search() -> None:
    """numpy's BLAS on one thread in this process (a search's matrix-vector products are small; FAISS searches one
    vector on one thread anyway, and the model's passes keep torch's threads)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # numpy then keeps its threads
        return
    numpy_blas = {lib["prefix"]: 1 for lib in threadpool_info() if "numpy" in lib["filepath"]}
    threadpool_limits(numpy_blas)


def _errors(app: FastAPI, served: Served) -> None:
    """Every error as ``{"detail": "one line"}``; a body that is not UTF-8, nested deeper than
    :data:`~actindex.core.jsontext.MAX_DEPTH` or holding a string that is not Unicode is refused (422) before
    FastAPI parses it (:class:`CheckedBody`)."""
    app.add_middleware(CheckedBody)

    @app.exception_handler(ActindexError)
    async def user_error(_request: Request, err: ActindexError) -> JSONResponse:
        return JSONResponse({"detail": served.public(one_line(str(err)))}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": one_line(str(err.detail))}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "malformed request"}
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        return JSONResponse({"detail": one_line(f"{where}: {first['msg']}{more}" if where else first["msg"])},
                            status_code=422)

    @app.exception_handler(Exception)
    async def failure(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": served.public(one_line(f"{type(err).__name__}: {err}"))}, status_code=500)


class CheckedBody:
    """ASGI middleware that refuses (422) a request body that is not UTF-8, nested deeper than
    :data:`~actindex.core.jsontext.MAX_DEPTH` or holding a string that is not Unicode
    (:func:`actindex.core.jsontext.loads`), before FastAPI parses it; malformed JSON goes on to FastAPI, whose 422
    names where. A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) would run the
    rest of the app in a task of its own with memory streams between them, for every request. A body that cannot
    be nested too deeply nor hold a lone surrogate (:func:`plainly_safe`) is not parsed twice."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not plainly_safe(body):
            try:
                loads(body)
            except JSONTextError as err:
                if not err.malformed:
                    await JSONResponse({"detail": one_line(f"body: {err.problem}")}, status_code=422)(
                        scope, receive, send)
                    return
        given = False

        async def replay() -> dict[str, Any]:
            nonlocal given
            if given:
                return await receive()
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def plainly_safe(body: bytes) -> bool:
    """Whether :func:`~actindex.core.jsontext.loads` can find nothing wrong with ``body`` but malformed JSON: it
    holds at most :data:`~actindex.core.jsontext.MAX_DEPTH` ``[`` and ``{`` in all (so no value nests deeper), no
    ``\\u`` escape (in UTF-8 text a lone surrogate can only come from one) and is UTF-8. A vector of floats or a
    query's fields are; only other bodies are parsed to be checked."""
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH or b"\\u" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def finite(value: float) -> float | None:
    """``value`` as JSON carries it: ``None`` (null) for NaN or infinity, which JSON has not."""
    value = float(value)
    return value if np.isfinite(value) else None


def one_line(text: str) -> str:
    return " ".join(text.split()) or "error"


def listen(config: ServeConfig) -> socket.socket:
    """A socket bound to ``config.host:config.port`` (port 0: a free one), or a one-line error."""
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ActindexError(f"--host {config.host!r}: cannot resolve it ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ActindexError(f"cannot listen on {config.host}:{config.port} ({err.strerror})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(app: FastAPI, sock: socket.socket, root_path: str = "") -> None:
    """Serve ``app`` on the bound ``sock`` with uvicorn until interrupted (warnings only, no access log), under the
    reverse proxy's ``root_path`` (the prefix every link of the page and the docs carries)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, root_path=root_path)).run(
        sockets=[sock])
