"""``actindex query`` and ``actindex report``: rank the rows for a behaviour, in the terminal or a page."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import click
import numpy as np

from actindex.cli.main import device_option, friendly, load_requested_model, main, model_option, quiet_option
from actindex.cli.options import LazyChoice, config_options, pop_config
from actindex.errors import ActindexError
from actindex.query.pipeline import QueryConfig

FORMATS = ("table", "json", "jsonl", "csv")


@main.command()
@click.option("--index", "index_dir", help="Index directory.")
@click.option("--behavior", "behaviors_", multiple=True, help="Built-in name or pairs/persona file (repeatable).")
@config_options(QueryConfig)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="Output format.")
@model_option
@device_option
@click.option("--save-query", help="Save the query vector to this .npz file.")
@click.option("--query-vector", help="Use a saved query vector (.npz) instead of a behaviour.")
@click.option("--help-methods", is_flag=True, help="List the query methods and exit.")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF indexes: inverted lists visited per query.")
@click.option("--ef-search", type=click.IntRange(min=1), help="HNSW indexes: candidate list size per query.")
@click.option("--no-faiss-gpu", is_flag=True, help="Search on the CPU even when a GPU build of FAISS sees a GPU.")
@click.option("--explain", is_flag=True, help="Also show the members of a fused method (weights, calibration).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the index's behaviour cache.")
@quiet_option
@friendly
def query(index_dir: str | None, behaviors_: tuple[str, ...], fmt: str, model: str | None, device: str,
          save_query: str | None, query_vector: str | None, help_methods: bool, nprobe: int | None,
          ef_search: int | None, no_faiss_gpu: bool, explain: bool, no_cache: bool, quiet: bool,
          **options: Any) -> None:
    """Rank training rows by how much they push the model towards a behaviour."""
    if help_methods:
        from actindex.query.methods import QueryMethod

        for name, cls in QueryMethod.registry.items():
            click.echo(f"{name:<24} {cls.help}")
        return
    if not index_dir:
        raise ActindexError("query needs --index DIR")
    from actindex.api import Index, load_query_vector, save_query_vector

    config = pop_config(QueryConfig, options)
    idx = Index.open(index_dir, cache=not no_cache, progress=not quiet)
    idx.tune(nprobe=nprobe, ef_search=ef_search, gpu=not no_faiss_gpu)
    results = []
    if query_vector:
        vector, meta = load_query_vector(query_vector)
        from dataclasses import replace

        config = replace(config, method=meta.get("method", config.method))
        results.append(idx.query(meta.get("behavior", "vector"), config, vector=vector, family=meta.get("family")))
    else:
        if not behaviors_:
            raise ActindexError("query needs --behavior NAME|FILE (see `actindex behaviors`) or --query-vector FILE")
        if save_query and QueryConfig.resolved_method(config, needs_vector=True) == "ensemble":
            raise ActindexError("--method ensemble fuses several rankings and has no single vector to --save-query")
        if save_query and config.method is None:
            from dataclasses import replace

            config = replace(config, method=config.resolved_method(needs_vector=True))
        load_requested_model(idx, model, device)
        for behavior in behaviors_:
            res = idx.query(behavior, config)
            results.append(res)
            if save_query:
                path = save_query if len(behaviors_) == 1 else save_query.replace(".npz", f"-{res.behavior}.npz")
                save_query_vector(path, res.vector, {"behavior": res.behavior, "method": config.method,
                                                     "family": res.family, "model": idx.manifest.model.fingerprint})
    print_results(results, fmt, explain)


def print_results(results: list, fmt: str, explain: bool = False) -> None:
    """Query results as a table, JSON, JSON lines or CSV."""
    if fmt == "json":
        click.echo(json.dumps([r.to_json() for r in results], indent=2, ensure_ascii=False))
        return
    if fmt == "jsonl":
        for r in results:
            for d in r.to_dicts(with_record=True):
                click.echo(json.dumps({"behavior": r.behavior, "method": r.method, **d}, ensure_ascii=False))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["behavior", "method", "side", "rank", "row", "id", "score", "snippet"])
        for r in results:
            for d in r.to_dicts():
                writer.writerow([r.behavior, r.method, d["side"], d["rank"], d["row"], d["id"],
                                 f"{d['score']:.6f}", d["snippet"]])
        click.echo(buf.getvalue(), nl=False)
        return
    for r in results:
        print_table(r, explain)


def timing_line(r: Any) -> str:
    """Where the time went: ``1.2 s (model pass 0.9 s, search 12 ms, ...)``."""
    parts = [f"{name} {seconds * 1000:.0f} ms" if seconds < 1 else f"{name} {seconds:.1f} s"
             for name, seconds in r.timings.items() if seconds >= 0.0005]
    total = f"{r.seconds * 1000:.0f} ms" if r.seconds < 1 else f"{r.seconds:.1f} s"
    return total + (f" ({', '.join(parts)})" if parts else "") + (" · from the behaviour cache" if r.cached else "")


def print_table(r: Any, explain: bool = False) -> None:
    """One result as the terminal table (reranked hits show influence and their strongest tokens; a fused
    method's score is calibrated, its fused rank the order)."""
    click.echo(f"behaviour {r.behavior} · method {r.method} · family {r.family} · {timing_line(r)}")
    for note in r.notes:
        click.echo(f"note: {note}")
    if r.members:
        click.echo("score: mean over members of (cosine - median) / (1.4826 MAD), positive = pushes towards the "
                   "behaviour; rows ordered by the fused rank")
        if explain:
            click.echo(f"{'member':<28} {'weight':>6} {'median':>8} {'scale':>8}")
            for m in r.members:
                click.echo(f"{m['method'] + ' @ ' + str(m['layer']):<28} {m['weight']:>6.2f} {m['median']:>8.4f} "
                           f"{m['scale']:>8.4f}")
    for title, hits in (("top (pushes towards the behaviour)", r.top), ("bottom (inhibits it)", r.bottom)):
        if not hits:
            continue
        click.echo(f"\n{title}")
        if hits[0].influence is not None:
            from actindex.query.rerank import highlight

            click.echo(f"{'rank':>4} {'influence':>10} {'search':>8}  {'id':<20} text")
            for h in hits:
                click.echo(f"{h.rank:>4} {h.influence:>10.4g} {h.score:>8.4f}  {h.id[:20]:<20} {h.snippet[:100]}")
                if h.token_scores:
                    tokens, scores = zip(*h.token_scores)
                    click.echo(f"{'':>26}tokens: {highlight(list(tokens), np.array(scores))[:400]}")
            continue
        click.echo(f"{'rank':>4} {'score':>8}  {'id':<20} text")
        for h in hits:
            click.echo(f"{h.rank:>4} {h.score:>8.4f}  {h.id[:20]:<20} {h.snippet[:100]}")
    click.echo("")


def _method_names() -> list[str]:
    from actindex.query.methods import method_names

    return method_names()


@main.command()
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--behavior", required=True, help="Built-in name or pairs/persona file.")
@config_options(QueryConfig)
@click.option("--compare", multiple=True, type=LazyChoice(_method_names),
              help="Another method to show side by side (ROC curves, top-k overlap); repeatable.")
@click.option("--labels-field", help="Record field with ground-truth labels (adds ROC/PR curves, AUROC, AP).")
@click.option("--positive-label", help="Label value counted as positive (default: any value other than 'clean').")
@click.option("--title", help="What the page calls the behaviour (default: its name).")
@model_option
@device_option
@click.option("--no-cache", is_flag=True, help="Do not read or write the index's behaviour cache.")
@quiet_option
@click.option("--out", required=True, help="HTML file to write (self-contained: plots embedded, no network).")
@friendly
def report(index_dir: str, behavior: str, compare: tuple[str, ...], labels_field: str | None,
           positive_label: str | None, title: str | None, model: str | None, device: str, no_cache: bool,
           quiet: bool, out: str, **options: Any) -> None:
    """Write one self-contained HTML page of the query `actindex query` runs with the same options: the
    behaviour, the score histogram, the top and bottom rows (with per-token influence when reranked), label
    metrics, and other methods side by side with --compare."""
    from actindex.api import Index
    from actindex.report import write_report

    idx = Index.open(index_dir, cache=not no_cache, progress=not quiet)
    load_requested_model(idx, model, device)
    config = pop_config(QueryConfig, options)
    path = write_report(idx, behavior, out, config, compare=compare, labels_field=labels_field,
                        positive_label=positive_label, title=title)
    click.echo(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
