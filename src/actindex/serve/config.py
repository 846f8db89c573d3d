"""Settings of ``actindex serve`` (:class:`ServeConfig`), kept apart from the app so that the CLI reads them
without importing FastAPI or a tensor library."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from actindex.configs import check_choices, option
from actindex.errors import ActindexError


@dataclass
class ServeConfig:
    """Settings of ``actindex serve``: where it listens and how many requests it works on at once."""

    host: str = option("Address to listen on. The default answers this machine only; 0.0.0.0 answers anyone who "
                       "can reach it (the API reads the index and writes nothing but its behaviour cache).",
                       "127.0.0.1")
    port: int = option("Port to listen on (0: a free one, printed at start).", 8000, minimum=0)
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
