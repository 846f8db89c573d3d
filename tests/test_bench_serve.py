"""bench/serve.py's smoke test: the whole benchmark (build, a synthetic larger index made from it, a server in its
own process for each, client processes at two client counts, the table) on tiny indexes, nothing recorded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_bench_serve_runs_and_prints_its_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH.parent / "src"), str(BENCH)]))
    out = subprocess.run([sys.executable, str(BENCH / "serve.py"), "--rows", "24,60", "--queries", "4", "--clients",
                          "1,4", "--synthetic-families", "residual_change/1,mean_activation_start/1,nope/9", "--hidden",
                          "32", "--layers", "2", "--rounds", "1", "--work", str(tmp_path), "--no-record"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    row = r"^\| this tree \| (\d+) \| (/\w+[^|]*) \| (\d) \| 4 \| [\d.]+ \| [\d.]+ \| \d+ \| 0 \|$"
    rows = re.findall(row, out.stdout, re.M)
    assert [(size, c) for size, _, c in rows] == [("24", "1"), ("24", "4")] * 3 + [("60", "1"), ("60", "4")] * 3, \
        out.stdout
    assert "made " in out.stdout and "(60 rows, 2 families)" in out.stdout, out.stdout
    assert "throughput at 4 clients / 1 client: this tree, 24 rows, /query, same request:" in out.stdout
