"""The compact index (the default): per-layer families stored at a fixed width through the stored projection, in
int4, one copy of each vector; bytes per row independent of the model's width; the full-width build behind one
flag."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import chat_rows, write_jsonl
from transformers import LlamaConfig, LlamaForCausalLM

import actindex
from actindex.core.models import wrap_model
from actindex.core.reduction import StorageProjection
from actindex.errors import IndexFileError
from actindex.index.config import DEFAULT_WIDTH
from actindex.index.manifest import read_manifest
from actindex.index.precision import row_bytes
from actindex.index.reader import IndexReader
from actindex.index.search import STORE, brute_force
from actindex.index.verify import verify
from actindex.query.behaviors import Behavior, Pair

#: the adaptive default's families (5 kinds) at the default layers of a 2-block model
DEFAULT_KINDS = {"residual_change", "mean_activation_surprisal", "residual_change_opening",
                 "mean_activation_opening", "mean_activation_start"}


def wide_llama(tokenizer, width: int) -> actindex.core.models.LoadedModel:
    """A random 2-block Llama of residual width ``width`` whose other matrices stay tiny (head_dim 8, MLP 16)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=width, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True)
    return wrap_model(LlamaForCausalLM(config).eval(), tokenizer, f"wide-llama-{width}")


def behavior(n: int = 8) -> Behavior:
    return Behavior(name="b", pairs=[Pair(f"question {i}", f"yes answer {i} " * 3, f"no answer {i} " * 3)
                                     for i in range(n)])


@pytest.fixture()
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", chat_rows(6))


def test_bytes_per_row_do_not_grow_with_the_models_width(tokenizer, rows_file, tmp_path):
    """Up to --width every dimension is kept (rotated); beyond it, the bytes a row takes stay the same."""
    built = {}
    for width in (576, DEFAULT_WIDTH, 4096):
        m = actindex.build(data=str(rows_file), out=str(tmp_path / f"w{width}"), model=wide_llama(tokenizer, width),
                           progress=False, heldout="none")
        assert {f.dim for f in m.families.values()} == {min(width, DEFAULT_WIDTH)}
        assert {f.dtype for f in m.families.values()} == {"int4"}
        assert {f.faiss_factory for f in m.families.values()} == {STORE} and m.reduction.hidden == width
        assert {name.split("/")[0] for name in m.families} == DEFAULT_KINDS
        built[width] = m
    families = len(built[576].layers) * len(DEFAULT_KINDS)
    assert built[576].summary["vector_bytes_per_row"] == families * row_bytes(576, "int4")  # 4 bits + a scale
    assert built[576].summary["vector_bytes_per_row"] <= 8 << 10
    small, large = built[DEFAULT_WIDTH].summary, built[4096].summary
    assert small["vector_bytes_per_row"] == large["vector_bytes_per_row"] == families * row_bytes(DEFAULT_WIDTH, "int4")
    assert large["vector_bytes_per_row"] <= 12 << 10
    # on disk: the same rows, plus the projection matrix (width x DEFAULT_WIDTH float32), a fixed cost
    fixed = (4096 - DEFAULT_WIDTH) * DEFAULT_WIDTH * 4 / 6
    assert abs(large["disk_bytes_per_row"] - small["disk_bytes_per_row"] - fixed) < 0.05 * fixed
    assert not (tmp_path / "w4096" / "faiss").exists() or not any((tmp_path / "w4096" / "faiss").iterdir())


def test_stored_and_query_vectors_are_the_full_width_ones_projected(llama, rows_file, tmp_path):
    full = actindex.build(data=str(rows_file), out=str(tmp_path / "full"), model=llama, progress=False,
                          full_width=True, heldout="none")
    compact = actindex.build(data=str(rows_file), out=str(tmp_path / "compact"), model=llama, progress=False,
                             full_width=False, width=16, heldout="none", store_dtype="float32")
    assert full.reduction is None and {f.dtype for f in full.families.values()} == {"float32"}
    assert len(full.families) == 14 and {f.faiss_factory for f in full.families.values()} == {"Flat"}
    q = StorageProjection.seeded(32, 16, 0)
    a, b = actindex.Index.open(tmp_path / "full").use_model(llama), actindex.Index.open(tmp_path / "compact")
    b.use_model(llama)
    assert np.array_equal(b.reader.reduction.matrix, q.matrix)
    assert np.allclose(q.matrix.T @ q.matrix, np.eye(16), atol=1e-5)  # orthonormal columns
    convs = [p.conversation(p.treatment) for p in behavior(3).pairs]
    for family in compact.families:
        projected = a.reader.vectors(family) @ q.matrix
        scale = np.abs(projected).max()
        assert np.abs(b.reader.vectors(family) - projected).max() < 1e-4 * scale, family  # the projection, stored
        wide = a.session.query_context().family_vectors(family, convs)
        assert np.allclose(b.session.query_context().family_vectors(family, convs), wide @ q.matrix, atol=1e-4 * scale)


def test_a_family_without_a_faiss_copy_is_searched_exactly_from_the_store(llama, rows_file, tmp_path):
    actindex.build(data=str(rows_file), out=str(tmp_path / "idx"), model=llama, progress=False, width=16,
                   full_width=False,
                   heldout="none")
    idx = actindex.Index.open(tmp_path / "idx")
    rng = np.random.default_rng(0)
    for family in idx.families:
        psi = rng.standard_normal(16).astype(np.float32)
        truth = brute_force(idx.reader.vectors(family), psi)
        scores, rows = idx.search(psi, k=4, family=family)
        assert rows.tolist() == np.argsort(-truth, kind="stable")[:4].tolist()
        assert np.allclose(scores, truth[rows], atol=1e-5)
        low, low_rows = idx.search(psi, k=2, family=family, bottom=True)
        assert low_rows.tolist() == np.argsort(truth, kind="stable")[:2].tolist()
    assert idx.reader.measured_recall(next(iter(idx.families))) == ("store (exact)", 1.0)
    wide = rng.standard_normal(32).astype(np.float32)  # the model's width: mapped by the index's projection
    family = "residual_change/3"
    assert idx.search(wide, k=4, family=family)[1].tolist() == idx.search(
        idx.reader.reduction.project(wide[None])[0], k=4, family=family)[1].tolist()


def test_the_default_and_the_full_width_build_answer_the_adaptive_query(llama, rows_file, tmp_path):
    """The full-width build (the layout of earlier releases) stays queryable by every method it holds."""
    for name, options in (("compact", {"width": 16, "full_width": False}), ("full", {"full_width": True})):
        actindex.build(data=str(rows_file), out=str(tmp_path / name), model=llama, progress=False,
                       heldout="none", **options)
        idx = actindex.Index.open(tmp_path / name, cache=False).use_model(llama)
        top = idx.query(behavior(), k=3).top
        assert len(top) == 3 and all(np.isfinite(h.score) for h in top)
    full = actindex.Index.open(tmp_path / "full", cache=False).use_model(llama)
    assert len(full.query(behavior(), k=3, method="ensemble").top) == 3


def test_a_named_method_needing_an_opt_in_family_says_how_to_build_it(llama, rows_file, tmp_path):
    actindex.build(data=str(rows_file), out=str(tmp_path / "idx"), model=llama, progress=False, heldout="none",
                   full_width=False)
    idx = actindex.Index.open(tmp_path / "idx", cache=False).use_model(llama)
    with pytest.raises(IndexFileError, match="rebuild with"):
        idx.query(behavior(), k=3, method="activation")
    actindex.build(data=str(rows_file), out=str(tmp_path / "more"), model=llama, progress=False, heldout="none",
                   full_width=False,
                   plain_mean=True, pooled=True)
    more = actindex.Index.open(tmp_path / "more", cache=False).use_model(llama)
    assert len(more.query(behavior(), k=3, method="activation").top) == 3


def test_a_damaged_projection_is_caught_by_open_and_verify(llama, rows_file, tmp_path):
    root = tmp_path / "idx"
    actindex.build(data=str(rows_file), out=str(root), model=llama, progress=False, width=16, heldout="none",
                   full_width=False)
    assert verify(root) == []
    damaged = shutil.copytree(root, tmp_path / "damaged")
    with h5py.File(damaged / "vectors.h5", "a") as f:
        f["reduction/matrix"][0, 0] += 1.0
    problems = verify(damaged)
    assert any("storage projection" in p for p in problems), problems
    reader = IndexReader(damaged, read_manifest(damaged))
    with pytest.raises(IndexFileError, match="storage projection"):
        _ = reader.reduction


def test_appending_keeps_the_index_storage(llama, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", chat_rows(4))
    second = write_jsonl(tmp_path / "b.jsonl", chat_rows(3, seed=1, first_id=4))
    root = tmp_path / "idx"
    actindex.build(data=str(first), out=str(root), model=llama, progress=False, width=16, heldout="none",
                   full_width=False)
    m = actindex.build(data=str(second), out=str(root), model=llama, progress=False, append=True, heldout="none")
    assert m.rows == 7 and m.reduction.width == 16 and {f.dim for f in m.families.values()} == {16}
    assert verify(root) == []


def test_logits_in_checkpointed_chunks_give_the_same_losses_and_vectors(llama, monkeypatch):
    from actindex.core import vectors
    from actindex.core.families import VectorSpec
    from actindex.query.context import encode_conversations

    convs = [p.conversation(p.treatment) for p in behavior(5).pairs]
    encoded = encode_conversations(llama, convs, 64)
    spec = VectorSpec(layers=[1, 3], kinds=["residual_change", "mean_activation_surprisal"])
    whole = vectors.compute_many(llama.model, encoded, spec, 0, batch_size=5)
    monkeypatch.setattr(vectors, "LOGIT_CHUNK", 3 * 256)  # 3 tokens' logits at a time
    chunked = vectors.compute_many(llama.model, encoded, spec, 0, batch_size=5)
    assert np.allclose(chunked.loss, whole.loss, rtol=1e-5)
    for family, values in whole.vectors.items():
        assert np.allclose(chunked.vectors[family], values, rtol=1e-4, atol=1e-6 * np.abs(values).max()), family


def test_an_index_of_an_earlier_release_reads_as_the_full_width_build_it_is():
    from pathlib import Path

    old = actindex.Index.open(Path(__file__).parent / "data" / "index-v1")
    assert old.manifest.build.full_width and old.manifest.build.index_factory() == "auto"
    assert old.reader.reduction is None and old.manifest.build.stored_width(old.manifest.model.hidden_size) is None
    family = next(iter(old.families))
    vectors = old.reader.vectors(family)
    assert old.search(vectors[3], k=1, family=family)[1].tolist() == [3]
