"""Query latency from a terminal: a built-in behaviour queried again and again, each time in a new process.

    python bench/query_latency.py --index demo-index --behavior hallucination --repeats 5

Runs ``actindex query`` as a user would, one process per call, and measures the wall time of each call
including the process start: a bare query (``--no-cache``: what every query cost before the behaviour
cache), then the first cached call, which forms the behaviour with the model and stores it (the cache is
cleared first), then the repeated calls, answered from the index's behaviour cache. Beside them,
``actindex --help``, ``info`` and ``verify``. Targets (issue 23): a repeated query at most 3 s; the first
at most the bare query plus 10%. Prints a table and appends it to bench/runs/query_latency.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record import append_section, markdown_table

ACTINDEX = str(Path(sys.executable).with_name("actindex"))


def timed(args: list[str]) -> tuple[float, str]:
    """Wall seconds of one ``actindex`` process, and its standard output."""
    started = time.perf_counter()
    out = subprocess.run([ACTINDEX, *args], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="demo-index", help="index directory (build it with `make demo`)")
    ap.add_argument("--behavior", default="hallucination")
    ap.add_argument("--repeats", type=int, default=5, help="cached calls after the first")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    args = ap.parse_args()
    shutil.rmtree(Path(args.index) / "cache", ignore_errors=True)
    query = ["query", "--index", args.index, "--behavior", args.behavior, "--format", "json", "--quiet"]
    bare, out = timed([*query, "--no-cache"])
    pass_s = json.loads(out)[0]["timings"].get("model pass", 0.0)
    first, out = timed(query)
    (result,) = json.loads(out)
    cached = []
    for _ in range(args.repeats):
        seconds, out = timed(query)
        assert json.loads(out)[0]["cached"], "the repeated query was not answered from the cache"
        cached.append(seconds)
    others = {name: timed(argv)[0] for name, argv in (("actindex --help", ["--help"]),
                                                      ("actindex info", ["info", args.index]),
                                                      ("actindex verify", ["verify", args.index]))}
    rows = [
        ["bare query (--no-cache)", f"{bare:.2f}", f"of which the pair pass {pass_s:.2f} s"],
        ["first query (forms and stores the behaviour)", f"{first:.2f}", f"{first / bare:.2f} x the bare query"],
        [f"repeated query, median of {args.repeats}", f"{statistics.median(cached):.2f}",
         f"max {max(cached):.2f}; in-process {result['seconds']:.2f} s first"],
        *[[name, f"{seconds:.2f}", ""] for name, seconds in others.items()],
    ]
    table = markdown_table(["call (new process each)", "wall s", "notes"], rows)
    print(table)
    if not args.no_record:
        body = (f"Index `{args.index}` ({result['family']}), behaviour `{args.behavior}`, method {result['method']}. "
                f"Targets: repeated query <= 3 s wall; first query <= bare query x 1.10.\n\n{table}\n")
        append_section("Query latency (new process per call)", body)


if __name__ == "__main__":
    main()
