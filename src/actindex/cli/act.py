"""``actindex fit-curvature``, ``filter``, ``correct`` and ``detect``: exact influence, and acting on a ranking."""

from __future__ import annotations

from typing import Any

import click

from actindex.cli.main import (
    device_option,
    friendly,
    index_option,
    load_requested_model,
    main,
    model_option,
    quiet_option,
)
from actindex.cli.options import config_options, pop_config
from actindex.cli.query import where_option
from actindex.configs import check_choice
from actindex.query.curvature.config import CurvatureConfig


@main.command(name="fit-curvature")
@click.option("--index", "index_dir", required=True, help="Index directory (factors are stored inside it).")
@config_options(CurvatureConfig)
@device_option
@quiet_option
@friendly
def fit_curvature(index_dir: str, device: str, quiet: bool, **options: Any) -> None:
    """Fit EK-FAC / LinFAC curvature on a sample of the indexed rows (for --rerank and --method ekfac)."""
    from actindex.api import Index

    config = CurvatureConfig(**options)
    idx = Index.open(index_dir, progress=not quiet)
    if device != "auto":
        idx.session.model(None, device)
    entries = idx.session.fit_curvature(config, progress=not quiet, say=click.echo)
    for kind, e in entries.items():
        click.echo(f"fitted {kind}: {len(e.modules)} modules on {e.samples} rows ({e.labels} labels), "
                   f"{e.seconds:.1f} s, stored in {index_dir}")


def _filter_config() -> type:
    from actindex.act.filter import FilterConfig

    return FilterConfig


@main.command(name="filter")
@index_option
@config_options(_filter_config(), required=("behavior", "out"))
@where_option
@model_option
@device_option
@quiet_option
@friendly
def filter_(index_dir: str, model: str | None, device: str, quiet: bool, where: tuple[str, ...],
            **options: Any) -> None:
    """Write the training data without its top rows for a behaviour (same format; removals in a sidecar)."""
    from actindex.act.filter import FilterConfig, filter_dataset
    from actindex.api import Index
    from actindex.query.where import where_from_text

    config = FilterConfig(**options, where=where_from_text(where))
    idx = Index.open(index_dir, progress=not quiet)
    load_requested_model(idx, model, device)
    click.echo(filter_dataset(idx, config=config).summary())


def _correct_config() -> type:
    from actindex.act.correct.config import CorrectConfig

    return CorrectConfig


@main.command()
@click.option("--index", "index_dir", required=True,
              help="Index directory (its model ranks the rows, and is the one corrected unless --target is given).")
@click.option("--behavior", required=True, help="Built-in name or pairs/persona file.")
@click.option("--out", required=True, help="Directory to write the corrected model and correction.json to.")
@click.option("--target", help="Model to correct when it is not the index's (same tokenizer): e.g. an index built "
                               "with the checkpoint a fine-tune started from ranks the rows, the fine-tuned model "
                               "is corrected.")
@config_options(_correct_config())
@device_option
@quiet_option
@friendly
def correct(index_dir: str, behavior: str, out: str, target: str | None, device: str, quiet: bool,
            **options: Any) -> None:
    """Post-train the index's model against a behaviour (IBO; GA and PBO baselines), docs/design.md#correction.

    Rows ranked for the behaviour become D+ (strongly positive), D- (strongly negative) and D0
    (near zero); the model is trained to lower D+, raise D- and hold D0, with LoRA adapters by
    default. Prints the behaviour margin and perplexity before and after; writes OUT/correction.json.
    """
    from actindex.act.correct.config import CorrectConfig
    from actindex.act.correct.stage import correct as run_correct
    from actindex.api import Index

    config = CorrectConfig(**options)
    idx = Index.open(index_dir, progress=not quiet)
    if device != "auto":
        idx.session.model(None, device)
    rep = run_correct(idx, behavior, out, target=target, config=config, progress=not quiet).report
    m, p, s = rep["margin"], rep["perplexity"], rep["selection"]
    click.echo(f"corrected with {rep['algo']}: D+ {s['D+']}, D- {s['D-']}, D0 {s['D0']} rows ({s['rule']}), "
               f"{rep['steps']} steps, {rep['seconds']:.1f} s")
    click.echo(f"margin      {m['before']:+.4f} -> {m['after']:+.4f}  ({m['pairs']} held-out pairs)")
    if p["before"] is not None:
        change = 100 * (p["after"] / p["before"] - 1)
        click.echo(f"perplexity  {p['before']:.3f} -> {p['after']:.3f}  ({change:+.1f}%, {p['rows']} held-out rows)")
    click.echo(f"saved {rep['saved']['format']} to {rep['saved']['path']} (report: correction.json)")


def _detect_config() -> type:
    from actindex.act.detect.config import DetectConfig

    return DetectConfig


def _list_transforms(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--help-transforms``: print the transform registry and exit (eager: no other option is needed)."""
    if not value or ctx.resilient_parsing:
        return
    from actindex.act.detect.transforms import Transform

    for name, cls in Transform.registry.items():
        click.echo(f"{name:<18} {cls.category:<11} {cls.help}")
    ctx.exit()


@main.command()
@index_option
@config_options(_detect_config(), required=("queries",))
@model_option
@device_option
@quiet_option
@click.option("--help-transforms", is_flag=True, expose_value=False, is_eager=True, callback=_list_transforms,
              help="List the transforms and exit.")
@click.option("--explain", is_flag=True, help="Say why each row the --ensemble rule flags was flagged: the scores, "
                                              "votes and threshold it met.")
@friendly
def detect(index_dir: str, model: str | None, device: str, quiet: bool, explain: bool, **options: Any) -> None:
    """Flag training rows (poisons) whose influence survives semantic transforms of the test queries."""
    from actindex.act.detect.config import DetectConfig
    from actindex.act.detect.rules import DetectRule
    from actindex.act.detect.stage import detect as run_detect
    from actindex.api import Index

    config = DetectConfig(**options)
    idx = Index.open(index_dir, progress=not quiet)
    load_requested_model(idx, model, device)
    res = run_detect(idx, config, progress=not quiet)
    table = res.table
    how = f"exact {config.rerank} influence" if config.rerank else f"method {config.method}"
    click.echo(f"{len(table.rows)} rows scored under {len(table.names)} query sets ({how})")
    for name, cat, n in zip(table.names, table.categories, table.queries_used):
        click.echo(f"  {name:<18} {cat:<11} {n} queries")
    for name in table.skipped:
        click.echo(f"  {name:<18} applies to none of the queries: left out")
    click.echo(f"\n{'rule':<11} {'flagged':>7}" + ("  precision  recall     F1" if res.metrics else ""))
    for rule in DetectRule.registry:
        line = f"{rule:<11} {int(res.flags[rule].sum()):>7}"
        if res.metrics:
            m = res.metrics[rule]
            line += f"  {m['precision']:>9.3f}  {m['recall']:>6.3f}  {m['f1']:>5.3f}"
        click.echo(line + ("  <- written" if rule == config.ensemble and config.out else ""))
    if res.metrics:
        labelled = next(iter(res.metrics.values()))["true"]  # the same for every rule
        click.echo(f"({labelled} rows labelled poisoned by field {config.labels_field!r})")
    if explain:
        why = res.explanations()
        click.echo(f"\nwhy {config.ensemble} flagged each row ({len(why)}):" if why else
                   f"\n{config.ensemble} flagged no row")
        drawn = res.rules[config.ensemble].describe(table)
        if drawn:
            click.echo(f"  {drawn}")
        for row, row_id, reason in why:
            click.echo(f"  row {row} ({row_id}): {reason}")
    if config.out:
        click.echo(f"wrote {int(res.flags[config.ensemble].sum())} flagged row(s) to {config.out}")


__all__ = ["check_choice", "correct", "detect", "filter_", "fit_curvature", "pop_config"]
