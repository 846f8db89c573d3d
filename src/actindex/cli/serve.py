"""``actindex serve`` and ``actindex export``: the index for other tools, over HTTP or as one table."""

from __future__ import annotations

from typing import Any

import click

from actindex.cli.main import device_option, friendly, index_option, main, model_option
from actindex.cli.options import config_options, pop_config
from actindex.index.export import ExportConfig
from actindex.query.cache import CacheConfig
from actindex.serve.config import ServeConfig


@main.command()
@index_option
@config_options(ServeConfig)
@config_options(CacheConfig)
@model_option
@device_option
@friendly
def serve(index_dir: str, model: str | None, device: str, **options: Any) -> None:
    """Answer queries over HTTP: one process keeps the model, the index and its behaviour cache loaded. JSON API
    (POST /query, /search, /rows; GET /rows/ID, /info, /behaviors, /health; docs at /docs and /redoc, offline) and
    a browser page at /. Listening beyond this machine needs --token (or ACTINDEX_TOKEN). Needs the serve extra:
    pip install 'actindex[serve]'."""
    config, cache_config = pop_config(ServeConfig, options), pop_config(CacheConfig, options)
    try:
        from actindex.serve.app import create_app, listen, run, url_of
    except ImportError as err:
        from actindex.errors import ActindexError

        raise ActindexError(f"actindex serve needs FastAPI and uvicorn ({err.name} is missing): "
                            "pip install 'actindex[serve]'") from None
    from actindex.api import Index
    from actindex.cli.main import load_requested_model

    idx = Index.open(index_dir, cache_config=cache_config)
    sock = listen(config)  # before the model loads: a busy port fails at once
    load_requested_model(idx, model, device)
    if config.preload:
        idx.model()
    app = create_app(idx, config)
    where = "this machine only" if config.local_only else "every interface: anyone who can reach this machine"
    token = "; requests need the token" if config.token else ""
    proxy = f"; served under {config.root_path} by the reverse proxy" if config.root_path else ""
    click.echo(f"actindex serve: {url_of(sock)} ({idx.manifest.rows} rows of {index_dir}; API docs at /docs; "
               f"listening on {where}{token}{proxy}; Ctrl+C stops)")
    run(app, sock, config.root_path)


@main.command()
@index_option
@config_options(ExportConfig)
@friendly
def export(index_dir: str, **options: Any) -> None:
    """Write the index as one Parquet or Arrow IPC table (ids, records, loss, token counts, one float32 list
    column per vector family), streamed block by block: pyarrow, pandas and DuckDB read it without actindex."""
    from actindex.index.export import export as write_export

    click.echo(write_export(index_dir, config=pop_config(ExportConfig, options)).summary())
