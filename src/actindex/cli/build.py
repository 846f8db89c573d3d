"""``actindex build`` and ``actindex merge``: the one-pass build, and joining its shards."""

from __future__ import annotations

import os
from typing import Any

import click

from actindex.cli.main import friendly, main, quiet_option
from actindex.cli.options import config_options
from actindex.index.config import BuildConfig


@main.command()
@config_options(BuildConfig, names={"shard": "--shard"}, required=("data", "out"))
@quiet_option
@friendly
def build(quiet: bool, **options: Any) -> None:
    """One pass over the training set: cache vectors in HDF5 with FAISS indexes.

    A killed build resumes where it stopped when the same command is run again.
    """
    from actindex.index.build import build as run_build

    config = BuildConfig(**options)
    manifest = run_build(config, progress=not quiet)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    s = manifest.summary
    click.echo(
        f"built {config.out}: {s['rows']} rows ({s['excluded']} excluded), {s['tokens']} tokens, "
        f"{s['truncated']} truncated, {s['seconds']:.1f} s, {s['vector_bytes_per_row']} vector bytes/row, "
        f"families: {', '.join(manifest.families)}"
    )


@main.command()
@click.argument("shard_dirs", nargs=-1, required=True)
@click.option("--out", required=True, help="Directory of the merged index.")
@click.option("--faiss-factory", help="FAISS factory of the merged index (default: the one the shards were built for).")
@click.option("--overwrite", is_flag=True, help="Replace a complete index in --out.")
@friendly
def merge(shard_dirs: tuple[str, ...], out: str, faiss_factory: str | None, overwrite: bool) -> None:
    """Join the shards of `build --shard I/N` (I = 0..N-1, any order) into one index, rows in file order.

    Refuses shards built with another model, layers, projection, settings or data file.
    """
    from actindex.index.shards import merge as run_merge

    manifest = run_merge(list(shard_dirs), out, overwrite=overwrite, faiss_factory=faiss_factory)
    s = manifest.summary
    click.echo(f"merged {len(shard_dirs)} shards into {out}: {s['rows']} rows ({s['excluded']} excluded), "
               f"families: {', '.join(manifest.families)}")
