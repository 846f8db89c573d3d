"""Settings of ``actindex serve`` (:class:`ServeConfig`), kept apart from the app so that the CLI reads them
without importing FastAPI or a tensor library."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from actindex.configs import check_choices, option
from actindex.errors import ActindexError

#: the environment variable that gives the token when ``--token`` is not given
TOKEN_ENV = "ACTINDEX_TOKEN"
#: rows one HTTP request returns at most by default (``--max-page``)
MAX_PAGE = 1000


@dataclass
class ServeConfig:
    """Settings of ``actindex serve``: where it listens, who it answers, and how many requests it works on at
    once."""

    host: str = option("Address to listen on. The default answers this machine only; 0.0.0.0 answers anyone who "
                       "can reach it, and then needs --token (the API reads the index and writes nothing but its "
                       "behaviour cache).", "127.0.0.1")
    port: int = option("Port to listen on (0: a free one, printed at start).", 8000, minimum=0)
    token: str | None = option(f"Answer only requests that carry `Authorization: Bearer TOKEN` (every endpoint "
                               f"but /health and the static page; default: the environment variable {TOKEN_ENV}).",
                               None, metavar="TOKEN")
    cors_origins: list[str] | None = option(
        "Web origins whose pages may call the API from a browser (https://app.example.org; * for any): CORS "
        "headers and preflights for them. Default: none (same-origin only).", None, flag="--cors-origin",
        metavar="ORIGINS")
    root_path: str = option("The path prefix a reverse proxy serves the API under (/actindex): links in the page "
                            "and the docs carry it.", "")
    max_page: int = option("Rows one request returns at most (k, bottom_k, ids asked at once); larger rankings "
                           "are read page by page with offset.", MAX_PAGE, minimum=1)
    host_paths: bool = option("Answer with the data files' paths on this machine (default: relative to the "
                              "data's own folder, so a client learns nothing of the server's file system).", False)
    workers: int | None = option("Threads answering requests at once (default: one per CPU core): searches and "
                                 "cached behaviours run in parallel; model passes run one at a time on a thread of "
                                 "their own (one process holds one model).", None, minimum=1)
    answers: int = option("Answers to remember: an identical query of a behaviour answered from the behaviour cache "
                          "is answered again from memory while that cache entry is unchanged (0: compute every one).",
                          256, minimum=0)
    preload: bool = option("Load the model at start (--no-preload: on the first query that needs a model pass).",
                           True)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.port > 65535:
            raise ActindexError(f"--port must be at most 65535, got {self.port}")
        if not self.host.strip():
            raise ActindexError("--host needs an address (127.0.0.1, ::1, 0.0.0.0 or a host name)")
        self.token = self.token or os.environ.get(TOKEN_ENV) or None
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise ActindexError("--token must be a non-empty string without spaces")
        if not self.local_only and self.token is None:
            raise ActindexError(f"--host {self.host} answers other machines: give --token (or set {TOKEN_ENV}) so "
                                "that only holders of the token are answered")
        for origin in self.cors_origins or []:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ActindexError(f"--cors-origin: expected * or scheme://host[:port] (no path), got {origin!r}")
        self.root_path = self.root_path.rstrip("/")
        if self.root_path and not re.fullmatch(r"(/[\w.~-]+)+", self.root_path):
            raise ActindexError(f"--root-path: expected a path such as /actindex, got {self.root_path!r}")

    @property
    def threads(self) -> int:
        """The worker threads: ``workers``, or one per CPU core."""
        return self.workers or os.cpu_count() or 1

    @property
    def local_only(self) -> bool:
        """Whether the address is a loopback one (``localhost`` counts)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
