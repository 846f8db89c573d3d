"""Every script of bench/ still runs against the package as it is: its imports resolve (also those inside
functions, which ``--help`` does not reach), ``--help`` works, and where a run can be made cheap (synthetic rows,
a tiny random model) a tiny run completes and prints its table. The benchmarks themselves (the figures) are run by
hand: bench/README.md."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

#: script -> the arguments of a tiny run (after ``--work``/``--no-record`` where the script takes them), or the
#: reason it has none: it needs the default model or the labelled public sets, minutes even at its smallest
TINY: dict[str, list[str] | str] = {
    "search_latency.py": ["--rows", "2000", "--factories", "flat,ivf", "--queries", "5", "--nprobe", "4",
                          "--train-rows", "1000", "--threads", "1", "--no-record"],
    "memory.py": ["--rows", "16", "--hidden", "32", "--layers", "2", "--no-record"],
    "serve.py": ["--rows", "40,80", "--synthetic-families", "residual_change/1", "--queries", "5", "--clients", "1",
                 "--rounds", "1", "--hidden", "16", "--layers", "2", "--no-record", "--work", "{tmp}"],
    "scale.py": ["--rows", "200", "--stages", "data,model,build", "--hidden", "16", "--blocks", "2", "--threads", "1",
                 "--work", "{tmp}"],
    "scale10m.py": ["--rows", "3000", "--families", "2", "--part-rows", "1000", "--flat-rows", "1000", "--clusters",
                    "16", "--train-rows", "1000", "--queries", "20", "--recall-queries", "10", "--cold-queries", "5",
                    "--depth-queries", "5", "--whole-queries", "2", "--nprobe", "16", "--candidates", "200",
                    "--ondisk-shards", "2", "--threads", "1", "--work", "{tmp}"],
    "throughput.py": "its tiny run is step 2 of bench/gpu.sh --dry-run (tests/test_gpu_suite.py)",
    "gpu.py": "bench/gpu.sh --dry-run runs it (tests/test_gpu_suite.py)",
    "storage.py": "IVF-PQ64 trains 256 centroids per sub-quantiser: minutes of CPU even at a few hundred rows",
    "scaling.py": "torchrun builds with the default model",
    "query_latency.py": "needs a built demo index (the default model)",
    "retrieval.py": "the default model on the labelled sets",
    "compact.py": "rewrites the full-width indexes retrieval.py --work keeps (the default model on the labelled sets)",
    "rerank.py": "the default model and an EK-FAC fit on the labelled sets",
    "peers.py": "bergson and kronfluence in their own venv",
    "detect.py": ["--model", "tiny", "--pools", "synthetic,synthetic/none", "--seeds", "0", "--clean", "30",
                  "--queries", "4", "--backdoor-steps", "3", "--layer", "1", "--max-length", "32",
                  "--curvature-samples", "16", "--rerank", "ekfac", "--routes", "own,base,target", "--work", "{tmp}",
                  "--no-record"],
    "correct.py": "fine-tunes the default model on a labelled set",
    "filter.py": "fine-tunes the default model on a labelled set",
    "callback.py": "fine-tunes the default model with TRL",
}
#: modules of bench/ that other scripts import, with no command line of their own
MODULES = {"record.py"}
SCRIPTS = sorted(TINY)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(BENCH)]), "OMP_NUM_THREADS": "1"}


def test_every_script_is_in_the_table():
    assert {p.name for p in BENCH.glob("*.py")} == set(TINY) | MODULES


def actindex_names(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """Every ``from actindex... import name`` and every dotted ``actindex.a.b`` in the code: (line, module, name)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("actindex"):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.startswith("actindex")]
        elif isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "actindex":
                dotted = ["actindex", *reversed(parts)]
                found.append((node.lineno, ".".join(dotted[:-1]), dotted[-1]))
    return found


def resolves(dotted: str) -> bool:
    """``actindex.a.b.name`` names something: its longest importable prefix is a module, the rest attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("script", sorted(TINY.keys() | MODULES))
def test_imports_of_the_package_resolve(script):
    tree = ast.parse((BENCH / script).read_text())
    names = [(line, ".".join(filter(None, (module, name)))) for line, module, name in actindex_names(tree)]
    missing = [f"{script}:{line} {dotted}" for line, dotted in names if not resolves(dotted)]
    assert not missing, "bench script uses names the package no longer has:\n" + "\n".join(missing)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], env=env(), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("script", [s for s in SCRIPTS if isinstance(TINY[s], list)])
def test_tiny_run(script, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in TINY[script]]
    runs = {p: p.stat().st_mtime_ns for p in (BENCH / "runs").glob("*.md")}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], env=env(), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "|---" in proc.stdout, proc.stdout[-2000:]  # its table
    assert {p: p.stat().st_mtime_ns for p in (BENCH / "runs").glob("*.md")} == runs, "a smoke run recorded itself"
