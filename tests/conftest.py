"""Shared fixtures: tiny models built from a config in-process (and saved as a model directory for the CLI), a
tokenizer that needs no download, small training files, and an index whose one planted row copies a behaviour's
treatment (the tokenizer and the synthetic rows come from :mod:`actindex.testing`, which the benchmarks use too)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import actindex
from actindex.core.models import LoadedModel, save_weights, wrap_model
from actindex.testing import WORDS as WORDS  # re-exported: tests draw words from the tokenizer's vocabulary
from actindex.testing import chat_rows, make_tokenizer, write_jsonl

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: the pair a planted row copies: its treatment answers the prompt wrongly
SILVER = {"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"}


def tiny_llama(seed: int = 0, layers: int = 4, vocab: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, layers: int = 3, vocab: int = 256) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
                        bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and the machine is shared (a module's tests, then as before)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture()
def llama(tokenizer) -> LoadedModel:
    return wrap_model(tiny_llama(), tokenizer, "tiny-llama")


@pytest.fixture()
def gpt2(tokenizer) -> LoadedModel:
    return wrap_model(tiny_gpt2(), tokenizer, "tiny-gpt2")


@pytest.fixture()
def llama64(tokenizer) -> LoadedModel:
    """A float64 tiny Llama (seed 3): exact comparisons (autograd, hand computations) far below float32 noise."""
    return wrap_model(tiny_llama(seed=3).double(), tokenizer, "tiny-llama-64")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama saved as a model directory, so the CLI and a server can load it by path."""
    out = tmp_path_factory.mktemp("model")
    save_weights(tiny_llama(), tokenizer, out)
    return out


@pytest.fixture()
def train_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(24))


def planted_rows(n: int, seed: int, at: int, pair: dict[str, str] = SILVER) -> list[dict]:
    """``n`` seeded synthetic chat rows whose row ``at`` (id ``planted``) is ``pair``'s prompt answered with its
    treatment: the row a query for the pair must rank first."""
    rows = chat_rows(n, seed=seed)
    rows[at] = {"id": "planted", "messages": [{"role": "user", "content": pair["prompt"]},
                                              {"role": "assistant", "content": pair["treatment"]}]}
    return rows


@pytest.fixture()
def planted_index(tmp_path, llama):
    """Build and open, with the tiny Llama, an index of :func:`planted_rows`: ``planted_index(n, seed, at,
    **build options)``."""

    def make(n: int, seed: int, at: int, **options) -> actindex.Index:
        data = write_jsonl(tmp_path / "train.jsonl", planted_rows(n, seed, at))
        actindex.build(data=str(data), out=str(tmp_path / "idx"), model=llama, progress=False, **options)
        return actindex.Index.open(tmp_path / "idx").use_model(llama)

    return make


def read_all(root: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(root / "vectors.h5", "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_index(a: Path, b: Path, provenance: bool = True) -> None:
    """Same datasets, ids and order; floats equal up to the rounding of other batch compositions;
    every family's FAISS index returns the same rows for random queries. ``provenance=False`` leaves out
    where each row sits in its data file (``source_row``, ``line``): the same rows split over other files."""
    da, db = read_all(a), read_all(b)
    assert da.keys() == db.keys()
    for key in da:
        if not provenance and key in ("source_row", "line"):
            continue
        if da[key].dtype.kind in "fc":
            np.testing.assert_allclose(da[key], db[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            assert (da[key] == db[key]).all(), key
    ia, ib = actindex.Index.open(a), actindex.Index.open(b)
    assert ia.families.keys() == ib.families.keys()
    rng = np.random.default_rng(0)
    for family, spec in ia.families.items():
        q = rng.standard_normal(spec.dim).astype(np.float32)
        sa, ra = ia.search(q, k=0, family=family)
        sb, rb = ib.search(q, k=0, family=family)
        assert list(ra) == list(rb), family
        np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6)


@contextmanager
def live(app, config):
    """``app`` served by uvicorn in a background thread on a free port of 127.0.0.1 (behind a reverse proxy that
    strips ``config.root_path``); yields its URL once ``/health`` answers."""
    import threading
    import time

    import httpx
    import uvicorn

    from actindex.serve.app import listen, url_of

    sock = listen(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", root_path=config.root_path))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    for _ in range(400):
        try:
            if httpx.get(url + "health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
