"""Stage 9 — the command line: ``actindex build | info | behaviors | query``.

Every user-fixable problem prints one line ``error: ...`` and exits with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

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
@click.option("--device", default="auto", show_default=True, help=_h("device"))
@click.option("--dtype", default="auto", show_default=True, help=_h("dtype"))
@click.option("--residual-change/--no-residual-change", default=True, show_default=True, help=_h("residual_change"))
@click.option("--pooled", is_flag=True, help=_h("pooled"))
@click.option("--mean-activation/--no-mean-activation", default=True, show_default=True, help=_h("mean_activation"))
@click.option("--grad", is_flag=True, help=_h("grad"))
@click.option("--grad-modules", callback=_str_list, help=_h("grad_modules") + " Comma-separated.")
@click.option("--grad-k", default=BuildConfig.grad_k, show_default=True, help=_h("grad_k"))
@click.option("--seed", default=BuildConfig.seed, show_default=True, help=_h("seed"))
@click.option("--store-dtype", default="float32", show_default=True, help=_h("store_dtype"))
@click.option("--faiss-factory", default="Flat", show_default=True, help=_h("faiss_factory"))
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
    s = manifest["summary"]
    click.echo(
        f"built {config.out}: {s['rows']} rows ({s['excluded']} excluded), {s['tokens']} tokens, "
        f"{s['truncated']} truncated, {s['seconds']:.1f} s, {s['vector_bytes_per_row']} vector bytes/row, "
        f"families: {', '.join(manifest['families'])}"
    )


@main.command()
@click.argument("index_dir")
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
@friendly
def info(index_dir: str, as_json: bool) -> None:
    """Show what an index holds (its manifest) as a table."""
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
    for extra in ("curvature",):
        if extra in m:
            lines.append((extra, ", ".join(m[extra])))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo("")
    click.echo(f"{'family':<32} {'dim':>7} {'dtype':>8}  faiss")
    for name, fam in m["families"].items():
        click.echo(f"{name:<32} {fam['dim']:>7} {fam['dtype']:>8}  {fam['faiss']} ({fam['faiss_factory']})")


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
@click.option("--method", default="residual-change", show_default=True, help="Query method (see --help-methods).")
@click.option("--layer", type=int, help="Layer to query (default: the index's middle layer).")
@click.option("--top-k", default=10, show_default=True, help="Rows to return; 0 = every row.")
@click.option("--bottom-k", default=0, show_default=True, help="Also return the k most negative rows.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv"]), default="table")
@click.option("--model", help="Model to form the query with (default: the one the index names).")
@click.option("--device", default="auto", show_default=True)
@click.option("--save-query", help="Save the query vector to this .npz file.")
@click.option("--query-vector", help="Use a saved query vector (.npz) instead of a behaviour.")
@click.option("--help-methods", is_flag=True, help="List the query methods and exit.")
@friendly
def query(
    index_dir: str, behaviors_: tuple[str, ...], method: str, layer: int | None, top_k: int, bottom_k: int,
    fmt: str, model: str | None, device: str, save_query: str | None, query_vector: str | None, help_methods: bool,
) -> None:
    """Rank training rows by how much they push the model towards a behaviour."""
    from .index import Index, load_query_vector, save_query_vector
    from .queries import QueryMethod

    if help_methods:
        for name, cls in QueryMethod.registry.items():
            click.echo(f"{name:<24} {cls.help}")
        return
    idx = Index.open(index_dir)
    results = []
    if query_vector:
        vector, meta = load_query_vector(query_vector)
        results.append(idx.query(meta.get("behavior", "vector"), meta.get("method", method),
                                 vector=vector, family=meta.get("family"), k=top_k, bottom_k=bottom_k))
    else:
        if not behaviors_:
            raise ActindexError("query needs --behavior NAME|FILE (see `actindex behaviors`) or --query-vector FILE")
        if model:
            idx.model(model, device)
        elif device != "auto":
            idx.model(None, device)
        for behavior in behaviors_:
            res = idx.query(behavior, method=method, layer=layer, k=top_k, bottom_k=bottom_k)
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
    click.echo(f"ok: {index_dir} ({m['rows']} rows, {len(m['families'])} families, checksums match)")


@main.command()
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--behavior", required=True, help="Built-in name or pairs/persona file.")
@click.option("--method", "methods", multiple=True, default=("residual-change",), show_default=True,
              help="Query method; repeat it to compare methods (one ROC curve per method).")
@click.option("--layer", type=int, help="Layer to query (default: the index's middle layer).")
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
    if model:
        idx.model(model, device)
    elif device != "auto":
        idx.model(None, device)
    path = write_report(idx, behavior, list(methods), out, labels_field=labels_field,
                        positive_label=positive_label, top_k=top_k, bottom_k=bottom_k, layer=layer)
    click.echo(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
