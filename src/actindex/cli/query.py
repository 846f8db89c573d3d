"""``actindex query`` and ``actindex report``: rank the rows for a behaviour, in the terminal or a page."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import click
import numpy as np

from actindex.cli.main import (
    answer_line,
    device_option,
    friendly,
    load_requested_model,
    main,
    model_option,
    quiet_option,
)
from actindex.cli.options import LazyChoice, config_options, pop_config
from actindex.errors import ActindexError
from actindex.query.cache import CacheConfig
from actindex.query.checkpoints.config import CheckpointConfig
from actindex.query.pipeline import QueryConfig, member_label

FORMATS = ("table", "json", "jsonl", "csv")

#: ``--where FIELD=VALUE`` (repeatable): the rows a command ranks, by their record fields
where_option = click.option(
    "--where", "where", multiple=True, metavar="FIELD=VALUE",
    help="Rank only rows whose record has FIELD equal to VALUE (compared as text); repeat it for more fields "
         "(all must match), or with the same field for any of its values.")


def with_where(config: QueryConfig, where: tuple[str, ...]) -> QueryConfig:
    """``config`` with the rows ``--where`` names (unchanged without one)."""
    from dataclasses import replace

    from actindex.query.where import where_from_text

    asked = where_from_text(where)
    return config if asked is None else replace(config, where=asked)


@main.command()
@click.option("--index", "index_dirs", multiple=True,
              help="Index directory; repeat it, or name a checkpoint set (ActindexCallback's OUT), to query several "
                   "checkpoints' indexes of the same rows together.")
@click.option("--behavior", "behaviors_", multiple=True, help="Built-in name or pairs/persona file (repeatable).")
@click.option("--example", "examples", multiple=True, metavar="FILE|TEXT",
              help="Query by example: attribute a model output by its own vectors; a file of training rows, a JSON "
                   "row or 'prompt => response' (repeatable).")
@click.option("--generate", "prompts", multiple=True, metavar="PROMPT|FILE",
              help="Let the model answer a prompt (or a JSONL file of prompts; greedy) and attribute its answers "
                   "(repeatable).")
@click.option("--versus", "versus", multiple=True, metavar="BEHAVIOUR",
              help="Rank what is specific to the behaviour against this one (built-in name or pairs file; "
                   "repeatable): each query vector keeps what the behaviour asks and theirs do not.")
@config_options(QueryConfig)
@where_option
@config_options(CheckpointConfig)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="Output format.")
@model_option
@device_option
@click.option("--save-query", help="Save the query vector to this .npz file (several behaviours: one file each, "
                                   "FILE-<behaviour>.npz).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --save-query file (a regular file only).")
@click.option("--query-vector", help="Use a saved query vector (.npz) instead of a behaviour.")
@click.option("--help-methods", is_flag=True, help="List the query methods and exit.")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF indexes: inverted lists visited per query.")
@click.option("--ef-search", type=click.IntRange(min=1), help="HNSW indexes: candidate list size per query.")
@click.option("--no-faiss-gpu", is_flag=True, help="Search on the CPU even when a GPU build of FAISS sees a GPU.")
@click.option("--explain", is_flag=True, help="Also show the members of a fused method (weights, calibration).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the index's behaviour cache.")
@config_options(CacheConfig)
@quiet_option
@friendly
def query(index_dirs: tuple[str, ...], behaviors_: tuple[str, ...], examples: tuple[str, ...],
          prompts: tuple[str, ...], fmt: str, model: str | None, device: str, save_query: str | None,
          overwrite: bool, query_vector: str | None, help_methods: bool, nprobe: int | None, ef_search: int | None,
          no_faiss_gpu: bool, explain: bool, no_cache: bool, quiet: bool, where: tuple[str, ...],
          versus: tuple[str, ...], **options: Any) -> None:
    """Rank training rows by how much they push the model towards a behaviour, or by how much they explain a
    model output (--example, --generate).

    Several --index (or a checkpoint set) are checkpoints of one training run: each ranks the rows with its own
    model and the answers are fused (--checkpoint-fusion); --checkpoint STEP queries one of them."""
    if help_methods:
        from actindex.query.methods import QueryMethod

        for name, cls in QueryMethod.registry.items():
            click.echo(f"{name:<24} {cls.help}")
        return
    if not index_dirs:
        raise ActindexError("query needs --index DIR")
    if versus and query_vector:
        raise ActindexError("--versus forms the query from the behaviours' pairs; it takes no --query-vector")
    from actindex.api import Index
    from actindex.index.checkpoints import is_checkpoint_set
    from actindex.query.behaviors import load_behavior

    config, checkpoints = with_where(pop_config(QueryConfig, options), where), pop_config(CheckpointConfig, options)
    cache_config = pop_config(CacheConfig, options)
    if len(index_dirs) == 1 and not is_checkpoint_set(index_dirs[0]) and checkpoints.checkpoint is None:
        idx = Index.open(index_dirs[0], cache=not no_cache, progress=not quiet, cache_config=cache_config)
    else:
        from actindex.query.checkpoints.checkpoint_set import CheckpointSet

        cset = CheckpointSet.open(index_dirs, cache=not no_cache, progress=not quiet)
        if checkpoints.checkpoint is None:
            if versus:
                raise ActindexError("--versus works on one index; pick one checkpoint with --checkpoint STEP")
            if query_vector or save_query or model:
                raise ActindexError("--query-vector, --save-query and --model work on one index: each checkpoint "
                                    "forms its own vectors with its own model; pick one with --checkpoint STEP")
            asked = asked_behaviors(behaviors_, examples, prompts)
            for member in cset:
                member.reader.tune(nprobe=nprobe, ef_search=ef_search, gpu=not no_faiss_gpu)
                load_requested_model(member, None, device)
            results = [cset.query(b, config, checkpoints.checkpoint_fusion) for b in asked]
            print_results(results, fmt, explain)
            return
        idx = cset.select(checkpoints.checkpoint)
    idx.reader.tune(nprobe=nprobe, ef_search=ef_search, gpu=not no_faiss_gpu)
    asked = [] if query_vector else asked_behaviors(behaviors_, examples, prompts)
    others = [load_behavior(spec) for spec in versus]
    print_results(query_index(idx, asked, config, model, device, save_query, query_vector, overwrite, others), fmt,
                  explain)


def asked_behaviors(behaviors_: tuple[str, ...], examples: tuple[str, ...], prompts: tuple[str, ...]) -> list[Any]:
    """The behaviours a query asks, each read once: names or files (:func:`load_behavior`; a file may be a pipe),
    examples (:func:`example_behavior`) and prompts to answer (:func:`generate_behavior`); at least one."""
    from actindex.query.behaviors import load_behavior
    from actindex.query.examples import example_behavior, generate_behavior

    asked = [*map(load_behavior, behaviors_), *map(example_behavior, examples), *map(generate_behavior, prompts)]
    if not asked:
        raise ActindexError("query needs --behavior NAME|FILE (see `actindex behaviors`), --example, --generate "
                            "or --query-vector FILE")
    return asked


def save_query_paths(idx: Any, asked: list[Any], save_query: str, overwrite: bool) -> list[Path]:
    """Where each behaviour's ``--save-query`` vector goes: the file itself for one behaviour, else
    ``FILE-<behaviour>.npz`` each; checked by the output rule before any model work (two behaviours of one name
    would write one file: refused)."""
    from actindex.outputs import check_output, check_outputs, index_inputs

    base = Path(save_query)
    if len(asked) == 1:
        paths = [base]
    else:
        paths = [base.with_name(f"{base.stem}-{re.sub(r'[^A-Za-z0-9._-]', '_', b.name)}{base.suffix}") for b in asked]
    check_outputs([(p, f"behaviour {b.name!r}") for p, b in zip(paths, asked)], "--save-query file")
    inputs = [*index_inputs(idx), *[(b.source, "a behaviour file") for b in asked if os.path.lexists(b.source)]]
    for path in paths:
        check_output(path, overwrite=overwrite, inputs=inputs, option="--save-query", make_parent=False)
    return paths


def query_index(idx: Any, asked: list[Any], config: QueryConfig, model: str | None, device: str,
                save_query: str | None, query_vector: str | None, overwrite: bool = False,
                versus: list[Any] | None = None) -> list[Any]:
    """The results of one index's query: a saved vector's, or each behaviour's (against the ``versus`` behaviours;
    saving its vector if asked)."""
    from dataclasses import replace

    from actindex.api import load_query_vector, save_query_vector

    if query_vector:
        vector, meta = load_query_vector(query_vector)
        config = replace(config, method=meta.get("method", config.method))
        return [idx.session.query(meta.get("behavior", "vector"), config, vector=vector, family=meta.get("family"))]
    from actindex.query.methods import QueryMethod

    if save_query and QueryMethod.get(config.resolved_method(needs_vector=True)).fused:
        raise ActindexError(f"--method {config.method} fuses several rankings and has no single vector to "
                            "--save-query; pick one of its member methods")
    if save_query and config.method is None:
        config = replace(config, method=config.resolved_method(needs_vector=True))
    paths = save_query_paths(idx, asked, save_query, overwrite) if save_query else [None] * len(asked)
    load_requested_model(idx, model, device)
    results = []
    for behavior, path in zip(asked, paths):
        res = idx.session.query(behavior, config, versus=versus or ())
        results.append(res)
        if path is not None:
            save_query_vector(path, res.vector, {"behavior": res.behavior, "method": config.method,
                                                 "family": res.family, "model": idx.manifest.model.fingerprint})
    return results


def print_results(results: list, fmt: str, explain: bool = False) -> None:
    """Query results as a table, JSON, JSON lines or CSV."""
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
        return
    if fmt == "jsonl":
        for r in results:
            answers = {"answers": r.answers} if r.answers else {}
            for d in r.to_dicts(with_record=True):
                click.echo(json.dumps({"behavior": r.behavior, "method": r.method, **answers, **d},
                                      ensure_ascii=False))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["behavior", "method", "side", "rank", "row", "id", "score", "calibrated", "cosine", "snippet"])
        for r in results:
            for d in r.to_dicts():
                extra = [f"{d[key]:.6f}" if d.get(key) is not None else "" for key in ("calibrated", "cosine")]
                writer.writerow([r.behavior, r.method, d["side"], d["rank"], d["row"], d["id"],
                                 f"{d['score']:.6f}", *extra, d["snippet"]])
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


def members_table(members: list[dict[str, Any]]) -> str:
    """The members of a fused query and, for the adaptive default, every candidate with its held-out pair
    checks (pair AUROC: treatments above their controls; index AUROC: above the index's typical rows; versus
    AUROC, asked against other behaviours: above theirs; separation: treatment minus control in robust standard
    deviations of the candidate's cosines over the index) and, with few pairs, whether the prior holds it."""
    checked = any("pair AUROC" in m or "index AUROC" in m for m in members)
    versus = any("versus AUROC" in m for m in members)
    prior = any("prior" in m for m in members)
    head = f"{'member':<40} {'weight':>6} {'median':>8} {'scale':>8}"
    head += f" {'pair AUROC':>10} {'index AUROC':>11}" if checked else ""
    head += f" {'versus AUROC':>12}" if versus else ""
    head += f" {'separation':>10}" if checked else ""
    lines = [head + (f" {'prior':>5}" if prior else "")]
    for m in sorted(members, key=lambda m: -m["weight"]):
        name = member_label(m["method"], m["family"])
        calibration = (f"{m['median']:>8.4f} {m['scale']:>8.4f}" if "median" in m else f"{'-':>8} {'-':>8}")
        line = f"{name:<40} {m['weight']:>6.2f} {calibration}"
        if checked:
            line += f" {m.get('pair AUROC', float('nan')):>10.3f} {m.get('index AUROC', float('nan')):>11.3f}"
        if versus:
            line += f" {m.get('versus AUROC', float('nan')):>12.3f}"
        if checked:
            line += f" {m.get('separation', float('nan')):>10.2f}"
        if prior:
            line += f" {'yes' if m.get('prior') else '':>5}"
        lines.append(line)
    return "\n".join(lines)


def print_table(r: Any, explain: bool = False) -> None:
    """One result as the terminal table: rows in the ranking's order with its score (calibrated; a rule that orders
    by another score shows that one and the calibrated score beside it) and the raw cosine; reranked hits show
    their influence and strongest tokens."""
    click.echo(f"behaviour {r.behavior} · method {r.method} · family {r.family} · {timing_line(r)}")
    for answer in r.answers:
        click.echo(answer_line(answer))
    for note in r.notes:
        click.echo(f"note: {note}")
    if r.checkpoints:
        print_checkpoints(r, explain)
    else:
        click.echo(score_line(r))
    if r.members and not r.checkpoints:
        kept = [m for m in r.members if m["weight"] > 0]
        if explain:
            click.echo(members_table(r.members))
        elif "pair AUROC" in kept[0] or "prior" in kept[0]:
            by = [name for name, key in (("the held-out pairs", "index AUROC"), ("the prior", "prior"))
                  if key in kept[0]]
            click.echo(f"members (chosen by {' and '.join(by)}): " + ", ".join(
                f"{m['method']} {m['family']} ({m['weight']:.2f})" for m in kept) + " · --explain for all candidates")
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
        steps = "".join(f"{'s@' + str(c['step'] if c['step'] is not None else c['label']):>9}" for c in r.checkpoints)
        other = other_order(r)
        columns = (("calibrated",) if other else ()) + ("cosine",)
        click.echo(f"{'rank':>4} {'score':>8}" + "".join(f" {c:>10}" for c in columns) + f"{steps}  {'id':<20} text")
        for h in hits:
            values = ((h.calibrated,) if other else ()) + (h.cosine,)
            shown = "".join(f" {v:>10.4f}" if v is not None else f" {'':>10}" for v in values)
            each = "".join(f"{v:>9.4f}" for v in (h.checkpoint_scores or {}).values())
            click.echo(f"{h.rank:>4} {h.score:>8.4f}{shown}{each}  {h.id[:20]:<20} {h.snippet[:100]}")
    click.echo("")


def other_order(r: Any) -> bool:
    """Whether a result's rows are ordered by a score other than the calibrated one (a rank-fusion rule)."""
    return any(h.calibrated is not None and abs(h.calibrated - h.score) > 1e-9 for h in [*r.top, *r.bottom])


def score_line(r: Any) -> str:
    """What a single index's scores mean."""
    calibrated = "(s - median) / (1.4826 MAD) of the search score s against the index's typical rows"
    if r.members:
        calibrated = "weighted mean over the members of " + calibrated
    cosine = "cosine: the raw cosine with the query vector" + (" (members' weighted mean)" if r.members else "")
    if other_order(r):
        return (f"score: the fusion rule's score (the order); calibrated: {calibrated}, positive = pushes towards "
                f"the behaviour; {cosine}")
    return f"score: calibrated, {calibrated}; positive = pushes towards the behaviour; {cosine}"


def print_checkpoints(r: Any, explain: bool = False) -> None:
    """The score line of a checkpoint-set query, and with ``explain`` each checkpoint's index and weights."""
    labels = ", ".join(c["label"] for c in r.checkpoints)
    click.echo(f"score: sum over the checkpoints ({labels}) of each one's calibrated score s@step (mean over its "
               "members of (cosine - median) / (1.4826 MAD)); rows ordered by the checkpoint fusion rule")
    if explain:
        for c in r.checkpoints:
            click.echo(f"  {c['label']:<14} epoch {c['epoch']}  weights {c['fingerprint'][:12]}  {c['index']}")


def _method_names() -> list[str]:
    from actindex.query.methods import method_names

    return method_names()


@main.command()
@click.option("--index", "index_dir", required=True, help="Index directory.")
@click.option("--behavior", required=True, help="Built-in name or pairs/persona file.")
@config_options(QueryConfig)
@where_option
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
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (a regular file only).")
@friendly
def report(index_dir: str, behavior: str, compare: tuple[str, ...], labels_field: str | None,
           positive_label: str | None, title: str | None, model: str | None, device: str, no_cache: bool,
           quiet: bool, out: str, overwrite: bool, where: tuple[str, ...], **options: Any) -> None:
    """Write one self-contained HTML page of the query `actindex query` runs with the same options: the
    behaviour, the score histogram, the top and bottom rows (with per-token influence when reranked), label
    metrics, and other methods side by side with --compare."""
    from actindex.api import Index
    from actindex.outputs import check_output, index_inputs
    from actindex.report import write_report

    idx = Index.open(index_dir, cache=not no_cache, progress=not quiet)
    check_output(out, overwrite=overwrite, inputs=index_inputs(idx, behavior))  # before the model loads
    load_requested_model(idx, model, device)
    config = with_where(pop_config(QueryConfig, options), where)
    path = write_report(idx, behavior, out, config, compare=compare, labels_field=labels_field,
                        positive_label=positive_label, title=title, overwrite=overwrite)
    click.echo(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
