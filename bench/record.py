"""Where a bench run is recorded, and what its section starts with: date, machine, library versions, the command.

    from record import append_section
    append_section("Search latency", body_markdown)   # appended to bench/runs/search_latency.md

Each script's runs go to their own log, ``bench/runs/<script>.md`` (the running script's file name without
``.py``; ``name=`` overrides it, and a run from ``python -`` or ``-c`` goes to ``runs/misc.md``), oldest first,
append-only. ``bench/RESULTS.md`` opens with a summary of the latest figure of every benchmark, each linked to
the run it comes from; that summary is updated by hand when a new run moves a figure.

Imported by the scripts of this folder (``python bench/x.py`` puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RUNS = Path(__file__).with_name("runs")


def cpu_model() -> str:
    """``lscpu``'s model name and the number of online CPUs (falls back to ``platform``)."""
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{name}, {os.cpu_count()} cores"


def memory_gib() -> str:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return f"{pages * size / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        return "RAM unknown"


def versions(packages: tuple[str, ...] = ("torch", "faiss-cpu", "transformers", "numpy", "h5py")) -> str:
    """``name version`` of each installed package, comma-separated (missing ones are left out)."""
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def command() -> str:
    """The command line that ran this script, as one would type it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def load_average() -> str:
    try:
        return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def header(title: str, packages: tuple[str, ...] | None = None) -> str:
    """``## title — date — machine`` then versions, the command and the load when it finished."""
    vers = versions(packages) if packages else versions()
    return (
        f"\n## {title} — {datetime.date.today()} — {cpu_model()}, {memory_gib()}\n\n"
        f"{vers}; {load_average()} at the end of the run (2 cores shared with other jobs).\n\n"
        f"`{command()}`\n\n"
    )


def run_log(name: str | None = None) -> Path:
    """``bench/runs/<name>.md``, the run log of one benchmark (``name`` defaults to the running script's
    file name without ``.py``); created with a title line when it does not exist yet."""
    if name is None:
        stem = Path(sys.argv[0]).stem
        name = stem if stem.replace("_", "").isalnum() else "misc"
    path = RUNS / f"{name}.md"
    if not path.exists():
        RUNS.mkdir(exist_ok=True)
        path.write_text(
            f"# {name}: dated runs\n\nRuns of `bench/{name}.py`, oldest first, appended by `bench/record.py`. "
            "The latest figures are summarised at the top of [RESULTS.md](../RESULTS.md).\n"
        )
    return path


def append_section(title: str, body: str, packages: tuple[str, ...] | None = None, name: str | None = None) -> Path:
    """Append a dated section to the script's run log, ``bench/runs/<name>.md`` (append-only), and return
    its path. The summary at the top of bench/RESULTS.md is not touched: update it by hand when a figure moves."""
    path = run_log(name)
    with open(path, "a") as handle:
        handle.write(header(title, packages) + body.rstrip() + "\n")
    print(f"recorded in {path}")
    return path


def markdown_table(columns: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
