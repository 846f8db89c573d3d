"""The HTTP API over one open index: ``create_app(index) -> FastAPI``, and how ``actindex serve`` runs it.

    GET  /health          {"status": "ok", ...}; answered on the event loop, never behind a model pass
    GET  /info            the manifest (``index.manifest.to_dict()``)
    GET  /behaviors       the built-in behaviours, and whether each is in the index's behaviour cache
    POST /query           a QueryRequest -> what ``actindex query --format json`` prints per behaviour
    POST /search          a raw vector and a family -> scores, rows, ids (cosine)
    GET  /rows/{id}       the row: its original record, loss, token counts, data file and line
    GET  /                the browser page (static/), GET /docs the OpenAPI docs

Concurrency: requests run in a pool of ``workers`` threads. A query first runs without the model
(``QuerySession.without_model``): a behaviour in the behaviour cache is answered so, in parallel
with any other. A query that needs a model pass runs again on the one model thread, holding the model lock, so
model passes never overlap and a query waiting for one holds no worker thread; searches, cached queries and
``/health`` go on meanwhile. An identical request answered from the behaviour cache is
answered again from memory while that cache entry is unchanged (:mod:`actindex.serve.memo`).

Nothing is written through the API except the behaviour cache inside the index (what a query formed with the
model). Errors are ``{"detail": "one line"}``: 400 for an :class:`~actindex.errors.ActindexError` (its text),
404 for an unknown row, 422 for a malformed body.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import cached_property
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from actindex.api import Index, ModelNeeded
from actindex.core.jsontext import JSONTextError, loads
from actindex.errors import ActindexError
from actindex.query.behaviors import builtin_behaviors, load_behavior
from actindex.serve.config import ServeConfig
from actindex.serve.memo import ANSWERS_KEPT, AnswerMemo
from actindex.serve.requests import QueryRequest, SearchRequest, asked

STATIC = resources.files("actindex.serve") / "static"


class Served:
    """One index as the server holds it: the index (with its model and query context), the model lock, the
    memory of its answers (:mod:`actindex.serve.memo`) and the row-id lookup."""

    def __init__(self, index: Index, answers: int = ANSWERS_KEPT):
        self.index = index
        self.model_lock = threading.Lock()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="actindex-model")
        self.memo = AnswerMemo(index.session.behavior_cache, answers)
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
        for family in idx.families:
            idx.reader.faiss_index(family)
        idx.session.query_context()
        _ = self.rows_by_id
        if model:
            idx.model()

    def answer(self, request: QueryRequest, key: str) -> dict[str, Any] | None:
        """The JSON answer to a query request (``key``: :meth:`AnswerMemo.key` of it) when it needs no model pass
        (a behaviour in the behaviour cache), remembered; ``None`` when it does (:meth:`answer_with_model`)."""
        behavior, config = asked(request)
        path, stamp = self.memo.entry(behavior)
        try:
            with self.index.session.without_model():
                answer = self.index.session.query(behavior, config).to_dict()
        except ModelNeeded:
            return None
        self.memo.keep(key, path, stamp, answer)
        return answer

    def answer_with_model(self, request: QueryRequest) -> dict[str, Any]:
        """The JSON answer to a query request that needs a model pass, run on the one model thread under the
        model lock (``/health`` says ``model_busy`` meanwhile)."""
        behavior, config = asked(request)
        with self.model_lock:
            return self.index.session.query(behavior, config).to_dict()

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """Rows by cosine with the request's vector ``v``, searched as ``v / max|v_i|`` (the same cosines; every
        value of the float32 search then in [-1, 1], so its norm cannot overflow)."""
        vector = np.asarray(request.vector, dtype=np.float64)
        if not len(vector) or not np.isfinite(vector).all() or not np.abs(vector).max() > 0:
            raise ActindexError("vector must be a non-empty list of finite numbers, not all zero")
        family = request.family or next(iter(self.index.families))
        scores, rows = self.index.search(vector / np.abs(vector).max(), request.k, family, bottom=request.bottom)
        ids = self.index.reader.ids()
        return {"family": family, "scores": [float(s) for s in scores], "rows": [int(r) for r in rows],
                "ids": [ids[r] for r in rows]}

    def row(self, row_id: str) -> dict[str, Any]:
        row = self.rows_by_id.get(row_id)
        if row is None:
            raise HTTPException(404, f"no row with id {row_id!r} in the index")
        table = self.index.reader.table
        path, line = self.index.reader.row_sources([row])[row]
        return {"id": row_id, "row": row, "record": self.index.reader.records([row])[0], "loss": float(table.loss[row]),
                "n_tokens": int(table.n_tokens[row]), "n_response": int(table.n_response[row]),
                "valid": bool(table.valid[row]), "source_row": int(table.source_row[row]), "line": line,
                "file": path}

    def behaviors(self) -> list[dict[str, Any]]:
        cache = self.index.session.behavior_cache
        return [{"name": name, "description": description,
                 "cached": cache.path(cache.key(load_behavior(name))).is_file()}
                for name, description in builtin_behaviors().items()]

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "rows": self.index.manifest.rows, "model_loaded": self.index.session.model_loaded,
                "model_busy": self.model_lock.locked(), "uptime_s": round(time.time() - self.started, 1)}


def create_app(index: Index, config: ServeConfig | None = None) -> FastAPI:
    """The API over ``index`` (an open :class:`~actindex.api.Index`; see the module docstring). ``config``
    (:class:`~actindex.serve.config.ServeConfig`): the worker threads, the answers remembered, and whether the
    model is loaded at start (``preload``)."""
    from actindex import __version__

    config = config or ServeConfig(preload=False)
    served = Served(index, config.answers)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = config.threads
        await anyio.to_thread.run_sync(served.warm, config.preload)
        yield
        served.model_thread.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="actindex", version=__version__, lifespan=lifespan,
                  description=f"Training-data attribution over the index `{index.root}` "
                              f"({index.manifest.rows} rows, model {index.manifest.model.name}).")
    app.state.served = served
    _errors(app)

    @app.get("/health", summary="The server is up (never waits for a model pass)")
    async def health() -> dict[str, Any]:
        return served.health()

    @app.get("/info", summary="The index's manifest")
    def info() -> dict[str, Any]:
        return index.manifest.to_dict()

    @app.get("/behaviors", summary="Built-in behaviours, and whether each is in the behaviour cache")
    def behaviors() -> list[dict[str, Any]]:
        return served.behaviors()

    @app.post("/query", summary="Rank the training rows for a behaviour (as `actindex query --format json`)")
    async def query(request: QueryRequest) -> JSONResponse:
        started = time.perf_counter()
        key = served.memo.key(request.model_dump())
        found = served.memo.recall(key, started)  # one stat: answered on the event loop
        if found is None:
            found = await run_in_threadpool(served.answer, request, key)
        if found is None:  # waits for the model thread without holding a worker thread
            found = await asyncio.get_running_loop().run_in_executor(served.model_thread, served.answer_with_model,
                                                                     request)
        return JSONResponse(found)

    @app.post("/search", summary="Rows nearest a raw vector in one family (cosine)")
    def search(request: SearchRequest) -> dict[str, Any]:
        return served.search(request)

    @app.get("/rows/{row_id:path}", summary="One training row: its record, loss, token counts, file and line "
                                            "(an id may hold '/')")
    def row(row_id: str) -> dict[str, Any]:
        return served.row(row_id)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def one_thread_per_search() -> None:
    """numpy's BLAS on one thread in this process (a search's matrix-vector products are small; FAISS searches one
    vector on one thread anyway, and the model's passes keep torch's threads)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # numpy then keeps its threads
        return
    numpy_blas = {lib["prefix"]: 1 for lib in threadpool_info() if "numpy" in lib["filepath"]}
    threadpool_limits(numpy_blas)


def _errors(app: FastAPI) -> None:
    """Every error as ``{"detail": "one line"}``; a body that is not UTF-8, nested deeper than
    :data:`~actindex.core.jsontext.MAX_DEPTH` or holding a string that is not Unicode is refused (422) before
    FastAPI parses it (:func:`actindex.core.jsontext.loads`)."""

    @app.middleware("http")
    async def checked_body(request: Request, call_next: Any) -> Any:
        if request.method in ("POST", "PUT", "PATCH"):
            try:
                loads(await request.body())
            except JSONTextError as err:
                if not err.malformed:  # malformed JSON: FastAPI's own 422 names where
                    return JSONResponse({"detail": one_line(f"body: {err.problem}")}, status_code=422)
        return await call_next(request)

    @app.exception_handler(ActindexError)
    async def user_error(_request: Request, err: ActindexError) -> JSONResponse:
        return JSONResponse({"detail": one_line(str(err))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "malformed request"}
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        return JSONResponse({"detail": one_line(f"{where}: {first['msg']}{more}" if where else first["msg"])},
                            status_code=422)

    @app.exception_handler(Exception)
    async def failure(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": one_line(f"{type(err).__name__}: {err}")}, status_code=500)


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


def run(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on the bound ``sock`` with uvicorn until interrupted (warnings only, no access log)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
