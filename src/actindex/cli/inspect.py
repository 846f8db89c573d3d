"""``actindex info``, ``actindex verify`` and ``actindex behaviors``: what an index and the package hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from actindex.cli.main import answer_line, friendly, main


@main.command()
@click.argument("index_dir")
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
@click.option("--recall-k", default=10, show_default=True, help="k of the measured recall@k of each FAISS index.")
@click.option("--recall-queries", default=200, show_default=True,
              help="Stored rows used as queries to measure recall against exact search (0 = skip).")
@friendly
def info(index_dir: str, as_json: bool, recall_k: int, recall_queries: int) -> None:
    """Show what an index holds (its manifest) as a table, with each FAISS index's type and
    its recall@k against exact search measured on a sample of stored rows."""
    from actindex.index.manifest import STORE
    from actindex.index.reader import IndexReader

    idx = IndexReader.open(index_dir)
    m = idx.manifest
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    model = m.model
    lines = [
        ("index", index_dir),
        ("format", str(m.format_version)),
        ("model", f"{model.name} ({model.architecture}, {model.num_layers} layers, d={model.hidden_size})"),
        ("weights", model.fingerprint),
        ("tokenizer", model.tokenizer),
        ("data", f"{m.data_path} (sha256 {m.data[0].sha256[:16]}…)"),
        ("rows", f"{m.rows} ({m.valid_rows} searchable){coverage(m)}"),
        ("layers", ",".join(map(str, m.layers))),
        ("projection", f"seed {m.projection.seed}, k {m.projection.k}, {len(m.projection.modules)} modules"),
        ("storage", "full width (as computed)" if m.reduction is None else
         f"per-layer families at width {m.reduction.width} ({m.reduction.kind} projection of d={m.reduction.hidden}, "
         f"seed {m.reduction.seed})"),
        ("built", f"{m.created_at} -> {m.finished_at}"),
    ]
    if m.checkpoint is not None:
        lines.append(("checkpoint", f"training step {m.checkpoint.step}, epoch {m.checkpoint.epoch}"))
    lines.append(("memorisation", memorisation_line(idx)))
    for kind, c in m.curvature.items():
        sub = f", sublayer {c.sublayer}" if c.sublayer else ""
        lines.append((f"curvature {kind}", f"{len(c.modules)} modules{sub}, {c.samples} rows, {c.labels} labels, "
                                           f"fitted {c.fitted_at}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo("")
    click.echo(f"{'family':<32} {'dim':>7} {'dtype':>8}  faiss")
    for name, fam in m.families.items():
        click.echo(f"{name:<32} {fam.dim:>7} {fam.dtype:>8}  {fam.faiss or 'none: the stored vectors'} "
                   f"({fam.faiss_factory})")
    approximate = [name for name, fam in m.families.items() if fam.faiss_factory not in ("Flat", STORE)]
    if recall_queries and approximate:
        click.echo("")
        click.echo(f"{'family':<32} {'index type':<28} recall@{recall_k} vs exact ({recall_queries} sampled rows)")
        for name in approximate:
            kind, recall = idx.measured_recall(name, recall_k, recall_queries)
            click.echo(f"{name:<32} {kind:<28} {recall:.3f}")
    elif not approximate:
        click.echo("\nsearch: exact (Flat, or the stored vectors) for every family; recall is 1 by construction")


def memorisation_line(idx: Any) -> str:
    """The memorisation check's figures (:mod:`actindex.index.memorisation`) in one line."""
    from actindex.index.memorisation import MEMORISED_RATIO, memorisation

    check = memorisation(idx.table, idx.manifest)
    if check is None:
        return "not measured (no held-out loss in the manifest)"
    verdict = "MEMORISED: index an earlier checkpoint" if check.memorised else "not memorised"
    return (f"median response loss {check.rows_loss:.3f} nats/token on the rows, {check.heldout.loss_per_token:.3f} "
            f"held out: ratio {check.ratio:.2f} ({verdict}; threshold {MEMORISED_RATIO})")


def coverage(m: Any) -> str:
    """`` of the file's 980 rows (the first 30)``: how much of its data an index covers, when not all."""
    parts = []
    for f in m.data:
        if f.file_rows is not None and f.file_rows != f.rows:
            how = f"a seeded sample of {f.sample}" if f.sample else f"the first {f.rows}"
            parts.append(f"{f.rows} of {Path(f.path).name}'s {f.file_rows} rows ({how})")
    return f"; covers {', '.join(parts)}" if parts else ""


@main.command()
@click.argument("index_dir")
@friendly
def verify(index_dir: str) -> None:
    """Check an index against its manifest: files, checksums, row counts, FAISS indexes.

    Prints `ok: DIR ...` and the behaviour cache's state (healthy and damaged entries) and exits 0, or prints
    each problem and exits 2.
    """
    from actindex.index.manifest import read_manifest
    from actindex.index.verify import verify as run_verify

    problems = run_verify(index_dir)
    if problems:
        for problem in problems:
            click.echo(problem)
        click.echo(f"error: {index_dir} failed verification ({len(problems)} problem(s))", err=True)
        sys.exit(2)
    from actindex.query.cache import BehaviorCache

    m = read_manifest(index_dir)
    faiss = "checksums" if m.format_version >= 2 else "rows (decoded)"
    click.echo(f"ok: {index_dir} ({m.rows} rows, {len(m.families)} families): manifest, vectors.h5 "
               f"checksums and FAISS {faiss} match")
    cache = BehaviorCache(index_dir, m).state()
    if cache is not None:
        click.echo(cache)


@main.command()
@friendly
def behaviors() -> None:
    """List the built-in behaviours (use them with --behavior NAME)."""
    from actindex.query.behaviors import builtin_behaviors

    items = builtin_behaviors()
    width = max(len(n) for n in items)
    for name, description in items.items():
        click.echo(f"{name:<{width}}  {description}")


@main.group()
def cache() -> None:
    """The index's behaviour cache: each behaviour's model-made vectors, kept so that a later query of the
    same behaviour (same pairs file, model and layers) pays only the search."""


@cache.command(name="list")
@click.argument("index_dir")
@friendly
def cache_list(index_dir: str) -> None:
    """List the cached behaviours of an index (a query of the model's answers with each answer), and its damaged
    entries (each with why)."""
    from actindex.errors import IndexFileError
    from actindex.index.reader import IndexReader
    from actindex.query.cache import BehaviorCache

    idx = IndexReader.open(index_dir)
    cache = BehaviorCache(idx.root, idx.manifest)
    problem = cache.folder_problem()
    if problem is not None:
        raise IndexFileError(problem)
    entries = cache.entries()
    if not entries:
        click.echo(f"{index_dir}: no cached behaviour")
        return
    click.echo(f"{'behaviour':<24} {'rows':>5} {'families':>8} {'gradient':>8} {'KiB':>7}  created  (key)")
    for e in entries:
        if e.problem is not None:
            click.echo(f"{'(damaged)':<24} {'':>5} {'':>8} {'':>8} {e.bytes // 1024:>7}  {e.problem}  ({e.key[:12]})")
            continue
        click.echo(f"{e.behavior[:24]:<24} {e.conversations:>5} {len(e.families):>8} {'yes' if e.gradient else '-':>8} "
                   f"{e.bytes // 1024:>7}  {e.created_at}  ({e.key[:12]})")
        for answer in e.answers:
            click.echo(f"  {answer_line(answer)}")


@cache.command(name="clear")
@click.argument("index_dir")
@click.option("--behavior", help="Only this behaviour (its name, or a key prefix) and the damaged entries; default: "
                                 "every entry.")
@friendly
def cache_clear(index_dir: str, behavior: str | None) -> None:
    """Remove cached behaviours (they are formed again, with the model, by the next query)."""
    from actindex.errors import ActindexError
    from actindex.index.reader import IndexReader
    from actindex.query.cache import BehaviorCache

    if behavior is not None and not behavior.strip():
        raise ActindexError("--behavior: expected a behaviour name or key prefix, got an empty one (leave --behavior "
                            "out to clear every entry)")
    idx = IndexReader.open(index_dir)
    removed, damaged = BehaviorCache(idx.root, idx.manifest).clear_counts(behavior)
    click.echo(f"removed {removed} cached behaviour(s)" + (f" and {damaged} damaged entries" if damaged else "")
               + f" from {index_dir}")
