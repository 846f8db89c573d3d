"""What every bench section in RESULTS.md starts with: date, machine, library versions, the command.

    from record import append_section
    append_section("Search latency", body_markdown)

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

RESULTS = Path(__file__).with_name("RESULTS.md")


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


def append_section(title: str, body: str, packages: tuple[str, ...] | None = None) -> None:
    """Append a dated section to bench/RESULTS.md (append-only: other scripts write there too)."""
    with open(RESULTS, "a") as handle:
        handle.write(header(title, packages) + body.rstrip() + "\n")


def markdown_table(columns: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
