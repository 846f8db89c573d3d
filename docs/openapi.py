"""Writes ``docs/openapi.json``, the OpenAPI schema of ``actindex serve``, which ``docs/hooks.py`` renders as the HTTP
API page of the documentation.

    python docs/openapi.py      # after a change to the HTTP API; tests/test_docs.py fails until the file is current

The schema does not depend on the index served, so it is taken from the app over a throwaway index of four rows
built with a tiny random model (no download); the description, which names that index, is left out.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("openapi.json")


def schema() -> dict[str, Any]:
    """``create_app(index).openapi()`` without ``info.description``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import actindex
    from actindex.core.models import wrap_model
    from actindex.serve.app import create_app
    from actindex.testing import chat_rows, make_tokenizer, write_jsonl

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                         pad_token_id=0, bos_token_id=2, eos_token_id=3)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_jsonl(Path(tmp) / "rows.jsonl", chat_rows(4, seed=0))
        actindex.build(data=str(data), out=str(Path(tmp) / "idx"), layers=[1], progress=False,
                       model=wrap_model(model, make_tokenizer(), "tiny"))
        with actindex.Index.open(Path(tmp) / "idx") as idx:
            spec = create_app(idx).openapi()
    spec["info"].pop("description", None)
    return spec


def dump(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(dump(schema()))
    sys.stdout.write(f"wrote {OUT}\n")
