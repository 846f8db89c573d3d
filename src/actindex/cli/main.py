"""The ``actindex`` command group and the one-line error handling every command shares."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import click

from actindex.errors import ActindexError, ActindexWarning

DEBUG = {"on": False}


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show each :class:`ActindexWarning` once, as one ``warning: ...`` line on stderr (other warnings as
    Python shows them)."""
    shown, seen = warnings.showwarning, set()

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, ActindexWarning):
            shown(message, category, *args, **kwargs)
        elif str(message) not in seen:
            seen.add(str(message))
            click.echo(f"warning: {message}", err=True)

    with warnings.catch_warnings():  # restores the filters and warnings.showwarning on exit
        warnings.simplefilter("always", ActindexWarning)
        warnings.showwarning = show
        yield


def friendly(func: Callable) -> Callable:
    """Turn :class:`ActindexError` (and any other failure) into one line and exit status 2; warnings the user
    should see become ``warning:`` lines (:func:`one_line_warnings`)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with one_line_warnings():
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


def load_requested_model(idx: Any, model: str | None, device: str) -> None:
    """Load ``--model`` / ``--device`` into the index now (checked against its manifest); without
    either, the index loads the model it was built with when a query first needs it."""
    if model or device != "auto":
        idx.session.model(model, device)


def answer_line(answer: dict[str, str]) -> str:
    """How the terminal shows one of the model's answers a ``generate`` query attributes."""
    return f"the model's answer to {answer['prompt']!r}: {answer['answer']!r}"


#: the options every command that runs the index's model shares
model_option = click.option("--model", help="Model to form the query with (default: the one the index names).")
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
index_option = click.option("--index", "index_dir", required=True, help="Index directory.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
