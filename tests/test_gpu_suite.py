"""bench/gpu.sh --dry-run: the GPU suite's every step, on the CPU with tiny shapes (what a CI machine can run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("environment", "throughput", "torchrun", "device-map", "faiss", "record")


def test_gpu_suite_dry_run_prints_every_step():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for i, step in enumerate(STEPS, start=1):
        assert f"step {i}/{len(STEPS)} {step}:" in proc.stdout, proc.stdout
    assert '"equal": true' in proc.stdout and proc.stdout.count('"same_ids": true') == 2
    assert "10,000 rows IVF" in proc.stdout and "dry run: nothing recorded" in proc.stdout
