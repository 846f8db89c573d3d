"""bench/serve.py's smoke test: the whole benchmark (build, a server in its own process, client processes at two
client counts, the table) on a tiny index, nothing recorded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_bench_serve_runs_and_prints_its_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH.parent / "src"), str(BENCH)]))
    out = subprocess.run([sys.executable, str(BENCH / "serve.py"), "--rows", "24", "--queries", "4", "--clients", "1,4",
                          "--hidden", "32", "--layers", "2", "--rounds", "1", "--work", str(tmp_path), "--no-record"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    row = r"^\| this tree \| (/\w+[^|]*) \| (\d) \| 4 \| [\d.]+ \| [\d.]+ \| \d+ \| 0 \|$"
    rows = re.findall(row, out.stdout, re.M)
    assert [c for _, c in rows] == ["1", "4"] * 3, out.stdout
    assert "throughput at 4 clients / 1 client: this tree, /query, same request:" in out.stdout
