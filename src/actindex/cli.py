"""Stage 9 — the command line: ``actindex build | info | behaviors | query``.

Every user-fixable problem prints one line ``error: ...`` and exits with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
import numpy as np

from .config import BuildConfig, help_of
from .errors import ActindexError

DEBUG = {"on": False}


def _int_list(_ctx: Any, _param: Any, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _str_list(_ctx: Any, _param: Any, value: str | None) -> list[str] | None:
    return None if value is None else [x.strip() for x in value.split(",") if x.strip()]


def friendly(func: Callable) -> Callable:
    """Turn :class:`ActindexError` (and any other failure) into one line and exit status 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ActindexError as err:
            if DEBUG["on"]:
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as err:  # noqa: BLE001 - last line of defence, no traceback for users
            if DEBUG["on"]:
                raise
            click.echo(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(package_name="actindex")
def main(debug: bool) -> None:
    """actindex: activation-space training-data attribution for LLMs.

    \b
    actindex build --data train.jsonl --out idx       # one pass, cache vectors
    actindex query --index idx --behavior hallucination
    """
    DEBUG["on"] = debug


def _load_requested_model(idx: Any, model: str | None, device: str) -> None:
    """Load ``--model`` / ``--device`` into the index now (checked against its manifest); without
    either, the index loads the model it was built with when a query first needs it."""
    if model or device != "auto":
        idx.model(model, device)


def _h(name: str) -> str:
    return help_of(BuildConfig, name)


@main.command()
@click.option("--data", required=True, help=_h("data"))
@click.option("--out", required=True, help=_h("out"))
@click.option("--model", default=BuildConfig.model, show_default=True, help=_h("model"))
@click.option("--layers", callback=_int_list, help=_h("layers") + " Example: 12,18,24.")
@click.option("--max-length", default=BuildConfig.max_length, show_default=True, help=_h("max_length"))
@click.option("--batch-size", default=BuildConfig.batch_size, show_default=True, help=_h("batch_size"))
@click.option("--limit", type=int, help=_h("limit"))
@click.option("--split", help=_h("split"))
@click.option("--device", default="auto", show_default=True, help=_h("device"))
@click.option("--dtype", default="auto", show_default=True, help=_h("dtype"))
@click.option("--residual-change/--no-residual-change", default=True, show_default=True, help=_h("residual_change"))
@click.option("--pooled/--no-pooled", default=True, show_default=True, help=_h("pooled"))
@click.option("--mean-activation/--no-mean-activation", default=True, show_default=True, help=_h("mean_activation"))
@click.option("--grad", is_flag=True, help=_h("grad"))
@click.option("--grad-modules", callback=_str_list, help=_h("grad_modules") + " Comma-separated.")
@click.option("--grad-k", default=BuildConfig.grad_k, show_default=True, help=_h("grad_k"))
@click.option("--seed", default=BuildConfig.seed, show_default=True, help=_h("seed"))
@click.option("--store-dtype", default="float32", show_default=True, help=_h("store_dtype"))
@click.option("--faiss-factory", default="auto", show_default=True, help=_h("faiss_factory"))
@click.option("--faiss-train-rows", default=BuildConfig.faiss_train_rows, show_default=True,
              help=_h("faiss_train_rows"))
@click.option("--shard", metavar="I/N", help=_h("shard"))
@click.option("--append", is_flag=True, help=_h("append"))
@click.option("--skip-long", is_flag=True, help=_h("skip_long"))
@click.option("--part-size", default=BuildConfig.part_size, show_default=True, help=_h("part_size"))
@click.option("--overwrite", is_flag=True, help=_h("overwrite"))
@click.option("--trust-remote-code", is_flag=True, help=_h("trust_remote_code"))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly
def build(quiet: bool, **options: Any) -> None:
    """One pass over the training set: cache vectors in HDF5 with FAISS indexes.

    A killed build resumes where it stopped when the same command is run again.
    """
    from .build import build as run_build

    config = BuildConfig(**options)
    manifest = run_build(config, progress=not quiet)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    s = manifest["summary"]
    click.echo(
        f"built {config.out}: {s['rows']} rows ({s['excluded']} excluded), {s['tokens']} tokens, "
        f"{s['truncated']} truncated, {s['seconds']:.1f} s, {s['vector_bytes_per_row']} vector bytes/row, "
        f"families: {', '.join(manifest['families'])}"
    )


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
    from .store import read_manifest

    m = read_manifest(index_dir)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    model = m["model"]
    lines = [
        ("index", index_dir),
        ("format", str(m["format_version"])),
        ("model", f"{model['name']} ({model['architecture']}, {model['num_layers']} layers, d={model['hidden_size']})"),
        ("weights", model["fingerprint"]),
        ("tokenizer", model["tokenizer"]),
        ("data", f"{m['data']['path']} (sha256 {m['data']['sha256'][:16]}…)"),
        ("rows", f"{m['rows']} ({m['valid_rows']} searchable)"),
        ("layers", ",".join(map(str, m["layers"]))),
        ("projection", f"seed {m['projection']['seed']}, k {m['projection']['k']}, "
                       f"{len(m['projection']['modules'])} modules"),
        ("built", f"{m['created_at']} -> {m['finished_at']}"),
    ]
    for kind, c in m.get("curvature", {}).items():
        sub = f", sublayer {c['sublayer']}" if c.get("sublayer") else ""
        lines.append((f"curvature {kind}", f"{len(c['modules'])} modules{sub}, {c['samples']} rows, "
                                           f"{c['labels']} labels, fitted {c['fitted_at']}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo("")
    click.echo(f"{'family':<32} {'dim':>7} {'dtype':>8}  faiss")
    for name, fam in m["families"].items():
        click.echo(f"{name:<32} {fam['dim']:>7} {fam['dtype']:>8}  {fam['faiss']} ({fam['faiss_factory']})")
    if recall_queries:
        from .index import Index
        from .search import faiss_recall

        idx = Index.open(index_dir)
        click.echo("")
        click.echo(f"{'family':<32} {'index type':<28} recall@{recall_k} vs exact ({recall_queries} sampled rows)")
        for name in m["families"]:
            kind, recall = faiss_recall(idx, name, recall_k, recall_queries)
            click.echo(f"{name:<32} {kind:<28} {recall:.3f}")


@main.command()
@friendly
def behaviors() -> None:
    """List the built-in behaviours (use them with --behavior NAME)."""
    from .queries import builtin_behaviors

    items = builtin_behaviors()
    width = max(len(n) for n in items)
    for name, description in items.items():
        click.echo(f"{name:<{width}}  {description}")


def _methods() -> list[str]:
    from .queries import QueryMethod

    return list(QueryMethod.registry)


@main.command()
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--behavior", "behaviors_", multiple=True, help="Built-in name or pairs/persona file (repeatable).")
@click.option("--method", help="Query method (see --help-methods). Default: ensemble (rank fusion over the "
              "indexed layers); residual-change with --save-query or --query-vector (one vector).")
@click.option("--layer", type=int, help="Layer to query (default: the indexed layer nearest 60% of the depth; "
              "ensemble: every indexed layer).")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=0),
              help="Rows to return; 0 = every row.")
@click.option("--bottom-k", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also return the k most negative rows.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv"]), default="table")
@click.option("--model", help="Model to form the query with (default: the one the index names).")
@click.option("--device", default="auto", show_default=True)
@click.option("--save-query", help="Save the query vector to this .npz file.")
@click.option("--query-vector", help="Use a saved query vector (.npz) instead of a behaviour.")
@click.option("--help-methods", is_flag=True, help="List the query methods and exit.")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF indexes: inverted lists visited per query.")
@click.option("--ef-search", type=click.IntRange(min=1), help="HNSW indexes: candidate list size per query.")
@click.option("--rerank", type=click.Choice(["ekfac", "linfac"]),
              help="Re-score the candidates with exact influence (needs `actindex fit-curvature`) and rank by it.")
@click.option("--candidates", default=100, show_default=True, type=click.IntRange(min=1),
              help="With --rerank: top-K and bottom-K search results re-scored.")
@click.option("--per-token", is_flag=True, help="With --rerank: per-token influence ([[+token]] marks in tables).")
@click.option("--clusters", default=0, show_default=True, type=click.IntRange(min=0),
              help="With --rerank: one query per k-means cluster of the behaviour's pairs (max-|I| merge).")
@click.option("--recall", type=click.Choice(["tfidf"]), help="With --rerank: add TF-IDF lexical candidates.")
@friendly
def query(
    index_dir: str, behaviors_: tuple[str, ...], method: str | None, layer: int | None, top_k: int, bottom_k: int,
    fmt: str, model: str | None, device: str, save_query: str | None, query_vector: str | None, help_methods: bool,
    rerank: str | None = None, candidates: int = 100, per_token: bool = False, clusters: int = 0,
    recall: str | None = None, nprobe: int | None = None, ef_search: int | None = None,
) -> None:
    """Rank training rows by how much they push the model towards a behaviour."""
    from .index import Index, load_query_vector, save_query_vector
    from .queries import QueryMethod, default_method

    if help_methods:
        for name, cls in QueryMethod.registry.items():
            click.echo(f"{name:<24} {cls.help}")
        return
    idx = Index.open(index_dir)
    if nprobe or ef_search:
        from .search import set_search_params

        for family in idx.families:
            set_search_params(idx.faiss_index(family), nprobe=nprobe, ef_search=ef_search)
    results = []
    if (per_token or clusters or recall) and not rerank:
        raise ActindexError("--per-token, --clusters and --recall refine a rerank: add --rerank ekfac|linfac")
    exact = dict(rerank=rerank, candidates=candidates, per_token=per_token, clusters=clusters, recall=recall)
    if query_vector:
        vector, meta = load_query_vector(query_vector)
        results.append(idx.query(meta.get("behavior", "vector"), meta.get("method", method),
                                 vector=vector, family=meta.get("family"), k=top_k, bottom_k=bottom_k, **exact))
    else:
        if not behaviors_:
            raise ActindexError("query needs --behavior NAME|FILE (see `actindex behaviors`) or --query-vector FILE")
        method = method or default_method(needs_vector=bool(save_query))
        if save_query and method == "ensemble":
            raise ActindexError("--method ensemble fuses several rankings and has no single vector to --save-query")
        _load_requested_model(idx, model, device)
        for behavior in behaviors_:
            res = idx.query(behavior, method=method, layer=layer, k=top_k, bottom_k=bottom_k, **exact)
            results.append(res)
            if save_query:
                path = save_query if len(behaviors_) == 1 else save_query.replace(".npz", f"-{res.behavior}.npz")
                save_query_vector(path, res.vector, {"behavior": res.behavior, "method": method, "family": res.family,
                                                     "model": idx.manifest["model"]["fingerprint"]})
    _print_results(results, fmt)


def _print_results(results: list, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([{
            "behavior": r.behavior, "method": r.method, "family": r.family, "seconds": r.seconds,
            "notes": r.notes, "top": [h.to_dict(True) for h in r.top], "bottom": [h.to_dict(True) for h in r.bottom],
        } for r in results], indent=2, ensure_ascii=False))
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
        click.echo(f"behaviour {r.behavior} · method {r.method} · family {r.family} · {r.seconds * 1000:.0f} ms")
        for note in r.notes:
            click.echo(f"note: {note}")
        for title, hits in (("top (pushes towards the behaviour)", r.top), ("bottom (inhibits it)", r.bottom)):
            if not hits:
                continue
            click.echo(f"\n{title}")
            if hits[0].influence is not None:
                from .rerank import highlight

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


@main.command()
@click.argument("index_dir")
@friendly
def verify(index_dir: str) -> None:
    """Check an index against its manifest: files, checksums, row counts, FAISS indexes.

    Prints `ok: DIR ...` and exits 0, or prints each problem and exits 2.
    """
    from .store import read_manifest
    from .verify import verify as run_verify

    problems = run_verify(index_dir)
    if problems:
        for problem in problems:
            click.echo(problem)
        click.echo(f"error: {index_dir} failed verification ({len(problems)} problem(s))", err=True)
        sys.exit(2)
    m = read_manifest(index_dir)
    faiss = "checksums" if m["format_version"] >= 2 else "rows (decoded)"
    click.echo(f"ok: {index_dir} ({m['rows']} rows, {len(m['families'])} families): manifest, vectors.h5 "
               f"checksums and FAISS {faiss} match")


@main.command()
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--behavior", required=True, help="Built-in name or pairs/persona file.")
@click.option("--method", "methods", multiple=True, default=("residual-change",), show_default=True,
              help="Query method; repeat it to compare methods (one ROC curve per method).")
@click.option("--layer", type=int, help="Layer to query (default: the indexed layer nearest 60% of the depth).")
@click.option("--labels-field", help="Record field with ground-truth labels (adds ROC/PR curves, AUROC, AP).")
@click.option("--positive-label", help="Label value counted as positive (default: any value other than 'clean').")
@click.option("--top-k", default=20, show_default=True, type=click.IntRange(min=0), help="Top rows shown as cards.")
@click.option("--bottom-k", default=10, show_default=True, type=click.IntRange(min=0),
              help="Bottom rows shown as cards.")
@click.option("--model", help="Model to form the query with (default: the one the index names).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", required=True, help="HTML file to write (self-contained: plots embedded, no network).")
@friendly
def report(
    index_dir: str, behavior: str, methods: tuple[str, ...], layer: int | None, labels_field: str | None,
    positive_label: str | None, top_k: int, bottom_k: int, model: str | None, device: str, out: str,
) -> None:
    """Write one self-contained HTML report: score histogram, top/bottom rows, label metrics."""
    from .index import Index
    from .report import write_report

    idx = Index.open(index_dir)
    _load_requested_model(idx, model, device)
    path = write_report(idx, behavior, list(methods), out, labels_field=labels_field,
                        positive_label=positive_label, top_k=top_k, bottom_k=bottom_k, layer=layer)
    click.echo(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def _ch(name: str) -> str:
    from .correct import CorrectConfig

    return help_of(CorrectConfig, name)


@main.command()
@click.option("--index", "index_dir", required=True,
              help="Index directory (its model ranks the rows, and is the one corrected unless --target is given).")
@click.option("--behavior", required=True, help="Built-in name or pairs/persona file.")
@click.option("--out", required=True, help="Directory to write the corrected model and correction.json to.")
@click.option("--target", help="Model to correct when it is not the index's (same tokenizer): e.g. an index built "
                               "with the checkpoint a fine-tune started from ranks the rows, the fine-tuned model "
                               "is corrected.")
@click.option("--algo", default="ibo", show_default=True, type=click.Choice(["ibo", "ga", "pbo"]), help=_ch("algo"))
@click.option("--select", default="topk", show_default=True, type=click.Choice(["topk", "pareto"]),
              help=_ch("select"))
@click.option("--k", default=16, show_default=True, help=_ch("k"))
@click.option("--k0", type=int, help=_ch("k0"))
@click.option("--beta", default=2.0, show_default=True, help=_ch("beta"))
@click.option("--lambda-prox", default=0.1, show_default=True, help=_ch("lambda_prox"))
@click.option("--steps", default=40, show_default=True, help=_ch("steps"))
@click.option("--lr", type=float, help=_ch("lr"))
@click.option("--lora-rank", default=8, show_default=True, help=_ch("lora_rank"))
@click.option("--full", is_flag=True, help=_ch("full"))
@click.option("--merge", is_flag=True, help=_ch("merge"))
@click.option("--batch-size", default=8, show_default=True, help=_ch("batch_size"))
@click.option("--method", default="residual-change", show_default=True, help=_ch("method"))
@click.option("--layer", type=int, help=_ch("layer"))
@click.option("--held-out", help=_ch("held_out"))
@click.option("--ppl-rows", default=64, show_default=True, help=_ch("ppl_rows"))
@click.option("--seed", default=0, show_default=True, help=_ch("seed"))
@click.option("--max-length", type=int, help=_ch("max_length"))
@click.option("--token-weights", default="mean", show_default=True, type=click.Choice(["mean", "query", "top"]),
              help=_ch("token_weights"))
@click.option("--overwrite", is_flag=True, help=_ch("overwrite"))
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def correct(index_dir: str, behavior: str, out: str, target: str | None, device: str, quiet: bool,
            **options: Any) -> None:
    """Post-train the index's model against a behaviour (IBO; GA and PBO baselines), DESIGN section 6.

    Rows ranked for the behaviour become D+ (strongly positive), D- (strongly negative) and D0
    (near zero); the model is trained to lower D+, raise D- and hold D0, with LoRA adapters by
    default. Prints the behaviour margin and perplexity before and after; writes OUT/correction.json.
    """
    from .correct import CorrectConfig
    from .correct import correct as run_correct
    from .index import Index

    config = CorrectConfig(**options)
    idx = Index.open(index_dir)
    if device != "auto":
        idx.model(None, device)
    rep = run_correct(idx, behavior, out, target=target, config=config, progress=not quiet).report
    m, p, s = rep["margin"], rep["perplexity"], rep["selection"]
    click.echo(f"corrected with {rep['algo']}: D+ {s['D+']}, D- {s['D-']}, D0 {s['D0']} rows ({s['rule']}), "
               f"{rep['steps']} steps, {rep['seconds']:.1f} s")
    click.echo(f"margin      {m['before']:+.4f} -> {m['after']:+.4f}  ({m['pairs']} held-out pairs)")
    if p["before"] is not None:
        change = 100 * (p["after"] / p["before"] - 1)
        click.echo(f"perplexity  {p['before']:.3f} -> {p['after']:.3f}  ({change:+.1f}%, {p['rows']} held-out rows)")
    click.echo(f"saved {rep['saved']['format']} to {rep['saved']['path']} (report: correction.json)")


def _fh(name: str) -> str:
    from .filtering import FilterConfig

    return help_of(FilterConfig, name)


@main.command(name="filter")
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--behavior", required=True, help=_fh("behavior"))
@click.option("--remove-top", required=True, help=_fh("remove_top"))
@click.option("--out", required=True, help=_fh("out"))
@click.option("--method", default="ensemble", show_default=True, help=_fh("method"))
@click.option("--layer", type=int, help=_fh("layer"))
@click.option("--data", help=_fh("data"))
@click.option("--overwrite", is_flag=True, help=_fh("overwrite"))
@click.option("--model", help="Model to form the query with (default: the one the index names).")
@click.option("--device", default="auto", show_default=True)
@friendly
def filter_(index_dir: str, model: str | None, device: str, **options: Any) -> None:
    """Write the training data without its top rows for a behaviour (same format; removals in a sidecar)."""
    from .filtering import FilterConfig, filter_dataset
    from .index import Index

    config = FilterConfig(**options)
    idx = Index.open(index_dir)
    _load_requested_model(idx, model, device)
    click.echo(filter_dataset(idx, config=config).summary())


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
    from .shard import merge as run_merge

    manifest = run_merge(list(shard_dirs), out, overwrite=overwrite, faiss_factory=faiss_factory)
    s = manifest["summary"]
    click.echo(f"merged {len(shard_dirs)} shards into {out}: {s['rows']} rows ({s['excluded']} excluded), "
               f"families: {', '.join(manifest['families'])}")


def _dh(name: str) -> str:
    from .detect import DetectConfig

    return help_of(DetectConfig, name)


@main.command()
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--queries", required=True, help=_dh("queries"))
@click.option("--transforms", default="all", show_default=True, help=_dh("transforms"))
@click.option("--ensemble", type=click.Choice(["variance", "voting", "both", "soft-voting"]), default="voting",
              show_default=True,
              help=_dh("ensemble"))
@click.option("--method", default="residual-change", show_default=True, help=_dh("method"))
@click.option("--layer", type=int, help=_dh("layer"))
@click.option("--rerank", type=click.Choice(["ekfac", "linfac"]), help=_dh("rerank"))
@click.option("--norm", type=click.Choice(["relatif", "gradient", "none"]), default="relatif", show_default=True,
              help=_dh("norm"))
@click.option("--measurement", type=click.Choice(["loss", "margin"]), default="loss", show_default=True,
              help=_dh("measurement"))
@click.option("--response-tokens", type=click.Choice(["content", "all"]), default="content", show_default=True,
              help=_dh("response_tokens"))
@click.option("--target", help=_dh("target"))
@click.option("--paraphrase-model", help=_dh("paraphrase_model"))
@click.option("--threshold", default=3.0, show_default=True, help=_dh("threshold"))
@click.option("--vote-top", default=0.1, show_default=True, help=_dh("vote_top"))
@click.option("--vote-z", default=2.0, show_default=True, help=_dh("vote_z"))
@click.option("--vote-scale", type=click.Choice(["support", "all"]), default="support", show_default=True,
              help=_dh("vote_scale"))
@click.option("--min-votes", type=int, help=_dh("min_votes"))
@click.option("--soft-threshold", default=2.5, show_default=True, help=_dh("soft_threshold"))
@click.option("--labels-field", help=_dh("labels_field"))
@click.option("--out", help=_dh("out"))
@click.option("--model", help="Model to answer and embed the queries (default: the one the index names).")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--help-transforms", is_flag=True, help="List the transforms and exit.")
@friendly
def detect(index_dir: str, model: str | None, device: str, quiet: bool, help_transforms: bool,
           **options: Any) -> None:
    """Flag training rows (poisons) whose influence survives semantic transforms of the test queries."""
    from .detect import ENSEMBLE_CHOICES, DetectConfig, Transform
    from .detect import detect as run_detect
    from .index import Index

    if help_transforms:
        for name, cls in Transform.registry.items():
            click.echo(f"{name:<18} {cls.category:<11} {cls.help}")
        return
    config = DetectConfig(**options)
    idx = Index.open(index_dir)
    _load_requested_model(idx, model, device)
    res = run_detect(idx, config, progress=not quiet)
    table = res.table
    how = f"exact {config.rerank} influence" if config.rerank else f"method {config.method}"
    click.echo(f"{len(table.rows)} rows scored under {len(table.names)} query sets ({how})")
    for name, cat, n in zip(table.names, table.categories, table.queries_used):
        click.echo(f"  {name:<18} {cat:<11} {n} queries")
    for name in table.skipped:
        click.echo(f"  {name:<18} applies to none of the queries: left out")
    click.echo(f"\n{'rule':<11} {'flagged':>7}" + ("  precision  recall     F1" if res.metrics else ""))
    for rule in ENSEMBLE_CHOICES:
        line = f"{rule:<11} {int(res.flags[rule].sum()):>7}"
        if res.metrics:
            m = res.metrics[rule]
            line += f"  {m['precision']:>9.3f}  {m['recall']:>6.3f}  {m['f1']:>5.3f}"
        click.echo(line + ("  <- written" if rule == config.ensemble and config.out else ""))
    if res.metrics:
        click.echo(f"({res.metrics['both']['true']} rows labelled poisoned by field {config.labels_field!r})")
    if config.out:
        click.echo(f"wrote {int(res.flags[config.ensemble].sum())} flagged row(s) to {config.out}")


@main.command(name="fit-curvature")
@click.option("--index", "index_dir", required=True, help="Index directory (factors are stored inside it).")
@click.option("--kind", type=click.Choice(["ekfac", "linfac", "both"]), default="ekfac", show_default=True,
              help="Which factors to fit.")
@click.option("--samples", default=256, show_default=True, help="Training rows sampled to fit the factors.")
@click.option("--modules", callback=_str_list, help="EK-FAC modules, fnmatch patterns, comma-separated.")
@click.option("--sublayer", type=click.Choice(["mlp", "block"]), default="mlp", show_default=True,
              help="LinFAC sublayer: each block's MLP, or the whole decoder block.")
@click.option("--empirical-fisher", is_flag=True, help="Use the data's labels, not labels sampled from the model.")
@click.option("--damping", type=float, help="Damping added to every eigenvalue (default 0.1 x mean eigenvalue).")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly
def fit_curvature(index_dir: str, device: str, quiet: bool, **options: Any) -> None:
    """Fit EK-FAC / LinFAC curvature on a sample of the indexed rows (for --rerank and --method ekfac)."""
    from .curvature import CurvatureConfig
    from .index import Index

    config = CurvatureConfig(**options)
    idx = Index.open(index_dir)
    if device != "auto":
        idx.model(None, device)
    entry = idx.fit_curvature(config, progress=not quiet)
    for kind, e in entry.items():
        click.echo(f"fitted {kind}: {len(e['modules'])} modules on {e['samples']} rows ({e['labels']} labels), "
                   f"{e['seconds']:.1f} s, stored in {index_dir}")
