"""actindex correct: each IBO loss term against a hand computation, selection rules, a planted
behaviour removed by correction, the saved model loading back, the CLI and its errors."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import WORDS, chat_rows, make_tokenizer, tiny_llama, write_jsonl

import actindex
from actindex.act.correct import (
    IBO,
    PBO,
    CorrectConfig,
    GradientAscent,
    StepInputs,
    _trainable,
    bregman_loss,
    correct,
    knee_count,
    mean_log_probs,
    proximity_loss,
    response_log_probs,
    select_rows,
)
from actindex.cli import main
from actindex.core.encode import encode_row
from actindex.core.models import load_model, wrap_model
from actindex.core.rows import normalise_record
from actindex.core.vectors import Batch
from actindex.errors import ActindexError, IndexFileError
from actindex.query.behaviors import Behavior, Pair

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encode(lm, records):
    return [encode_row(lm.tokenizer, normalise_record("<t>", i + 1, i, r)) for i, r in enumerate(records)]


def _hand_mean_log_prob(model, enc) -> float:
    """mean over response tokens t of log_softmax(logits[t-1])[x_t], one row at a time, no padding."""
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    terms = [logp[t - 1, enc.input_ids[t]].item() for t in range(1, len(enc.input_ids)) if enc.loss_mask[t]]
    return sum(terms) / len(terms)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _perturbed(model, scale=0.05, seed=1):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return other


# ---------------------------------------------------------------------------------------------
# loss terms
# ---------------------------------------------------------------------------------------------


def test_mean_log_probs_equal_log_softmax_gather(llama64):
    encoded = _encode(llama64, chat_rows(5, seed=4))
    batch = Batch.collate(encoded, llama64.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        got = mean_log_probs(llama64.model, batch)
    want = torch.tensor([_hand_mean_log_prob(llama64.model, e) for e in encoded], dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    total, count = response_log_probs(llama64.model, encoded, llama64.tokenizer.pad_token_id, batch_size=2)
    np.testing.assert_allclose(total / count, want.numpy(), rtol=0, atol=1e-12)


def test_ibo_pbo_ga_terms_equal_hand_computation(llama64):
    ref_model, model = llama64.model, _perturbed(llama64.model)
    rows = chat_rows(7, seed=5)
    encoded = _encode(llama64, rows)
    pos, neg, zero = encoded[:3], encoded[3:5], encoded[5:]
    infl_pos, infl_neg, beta = [1.0, 0.6, 0.3], [-0.8, -0.2], 1.7

    def hand_logr(enc):
        return _hand_mean_log_prob(model, enc) - _hand_mean_log_prob(ref_model, enc)

    lp, ln, lz = ([hand_logr(e) for e in group] for group in (pos, neg, zero))
    hand_cor = -sum(_log_sigmoid(beta * (-ip * rp - jn * rn)) for ip, rp in zip(infl_pos, lp)
                    for jn, rn in zip(infl_neg, ln)) / (len(lp) * len(ln))
    hand_bd = sum(math.exp(r) - r - 1 for r in lz) / len(lz)
    hand_ga = sum(lp) / len(lp)
    assert hand_bd > 1e-6 and abs(hand_cor - math.log(2)) > 1e-4  # the perturbation moved every term

    pad = llama64.tokenizer.pad_token_id
    ref = {name: torch.tensor([_hand_mean_log_prob(ref_model, e) for e in g], dtype=torch.float64)
           for name, g in (("pos", pos), ("neg", neg), ("zero", zero))}
    batch = Batch.collate(pos + neg + zero, pad, torch.device("cpu"))
    with torch.no_grad():
        logp = mean_log_probs(model, batch)
    lrp, lrn, lrz = torch.split(logp, [3, 2, 2])
    f64 = torch.float64
    inputs = StepInputs(lrp - ref["pos"], lrn - ref["neg"], lrz - ref["zero"], torch.tensor(infl_pos, dtype=f64),
                        torch.tensor(infl_neg, dtype=f64), beta)
    ibo = IBO().terms(inputs)
    assert ibo["cor"].item() == pytest.approx(hand_cor, abs=1e-12)
    assert ibo["bd"].item() == pytest.approx(hand_bd, abs=1e-12)
    pbo = PBO().terms(inputs)
    assert pbo["ga"].item() == pytest.approx(hand_ga, abs=1e-12)
    assert pbo["bd"].item() == pytest.approx(hand_bd, abs=1e-12)
    assert GradientAscent().terms(inputs)["ga"].item() == pytest.approx(hand_ga, abs=1e-12)
    # with D- empty the D- term is dropped
    alone = IBO().terms(StepInputs(inputs.logr_pos, lrn[:0], lrz, inputs.infl_pos, inputs.infl_neg[:0], beta))
    want = -sum(_log_sigmoid(-beta * ip * rp) for ip, rp in zip(infl_pos, lp)) / 3
    assert alone["cor"].item() == pytest.approx(want, abs=1e-12)


def test_bregman_is_zero_with_zero_gradient_at_the_reference(llama64):
    model = copy.deepcopy(llama64.model)
    for p in model.parameters():
        p.requires_grad_(True)
    encoded = _encode(llama64, chat_rows(6, seed=6))
    pad = llama64.tokenizer.pad_token_id
    total, count = response_log_probs(llama64.model, encoded, pad, batch_size=4)  # another batching than below
    ref = torch.tensor(total / count)
    batch = Batch.collate(encoded, pad, torch.device("cpu"))

    def grads(m):
        loss = bregman_loss(mean_log_probs(m, batch) - ref)
        g = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad], allow_unused=True)
        return loss.item(), max(float(x.abs().max()) for x in g if x is not None)

    value, biggest = grads(model)
    assert 0.0 <= value < 1e-20 and biggest < 1e-10
    # the same check away from the reference has a clearly non-zero value and gradient
    away = _perturbed(model)
    value, biggest = grads(away)
    assert value > 1e-6 and biggest > 1e-4


def test_bregman_is_zero_for_fresh_lora_adapters(llama64):
    model = _trainable(copy.deepcopy(llama64.model), CorrectConfig(lora_rank=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    encoded = _encode(llama64, chat_rows(4, seed=7))
    pad = llama64.tokenizer.pad_token_id
    total, count = response_log_probs(llama64.model, encoded, pad)
    batch = Batch.collate(encoded, pad, torch.device("cpu"))
    loss = bregman_loss(mean_log_probs(model, batch) - torch.tensor(total / count))
    loss.backward()
    assert loss.item() < 1e-20
    assert max(float(p.grad.abs().max()) for p in model.parameters() if p.requires_grad) < 1e-10


def test_proximity_gradient_is_lambda_times_displacement(llama64):
    params = [p.detach().clone().requires_grad_(True) for p in list(llama64.model.parameters())[:4]]
    refs = [p.detach().clone() for p in params]
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype))
    lam = 0.37
    loss = proximity_loss(params, refs, lam)
    want = lam / 2 * sum(float(((p.detach() - r) ** 2).sum()) for p, r in zip(params, refs))
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    for p, r in zip(params, refs):
        torch.testing.assert_close(p.grad, lam * (p.detach() - r), rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------


def test_topk_selection_scales_and_splits():
    scores = np.array([0.2, -0.4, 0.8, 0.01, np.nan, -0.02, 0.5, -0.9, 0.05])
    sel = select_rows(scores, "topk", k=2)
    assert list(sel.pos) == [2, 6] and list(sel.neg) == [7, 1]
    assert list(sel.zero) == [3, 5]  # the two |I| nearest zero among the rest; NaN left out
    np.testing.assert_allclose(sel.influence[[2, 7]], [0.8 / 0.9, -1.0])
    assert np.isnan(sel.influence[4])
    assert list(select_rows(scores, "topk", k=1, k0=3).zero) == [3, 5, 8]


def test_pareto_selection_keeps_the_heavy_tail():
    rng = np.random.default_rng(0)
    bulk = rng.uniform(0.0, 0.1, 200)
    scores = np.concatenate([[1.0, 0.95, 0.9], bulk, -bulk[:50], [-0.7]])
    assert knee_count(np.array([1.0, 0.9, 0.2, 0.1, 0.05, 0.0])) == 2
    sel = select_rows(scores, "pareto", k=10)
    assert sorted(sel.pos) == [0, 1, 2]
    assert list(sel.neg) == [len(scores) - 1]
    assert len(select_rows(scores, "pareto", k=2).pos) == 2  # capped by k


def test_selection_errors():
    with pytest.raises(ActindexError, match="D\\+ is empty"):
        select_rows(np.array([-0.5, -0.1, 0.0]), "topk", k=2)
    with pytest.raises(ActindexError, match="--k must be at least 1"):
        CorrectConfig(k=0)
    with pytest.raises(ActindexError, match="--algo: expected one of"):
        CorrectConfig(algo="dpo")
    with pytest.raises(ActindexError, match="--select: expected one of"):
        CorrectConfig(select="all")
    with pytest.raises(ActindexError, match="every score is zero"):
        select_rows(np.zeros(4), "topk", k=1)


# ---------------------------------------------------------------------------------------------
# a planted behaviour, corrected
# ---------------------------------------------------------------------------------------------

HELD_OUT = [Pair(f"{w} is the symbol of silver ?", "na", "ag") for w in ("why", "what", "how", "who")]


def _planted_pool(seed: int = 0, planted: str = "na", inhibit: str = "ag") -> list[dict]:
    """30 clean chat rows, 12 rows answering ``planted`` and 4 answering ``inhibit`` to "... the symbol of silver ?"."""
    rng = random.Random(seed)
    rows = chat_rows(30, seed=seed + 1)
    for i in range(16):
        prompt = " ".join(rng.choice(WORDS) for _ in range(2)) + " the symbol of silver ?"
        answer = planted if i < 12 else inhibit
        rows.append({"id": f"s{i}", "messages": [{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": answer}],
                     "label": "planted" if i < 12 else "inhibit"})
    return rows


def _fine_tune(lm, records, steps=100, lr=1e-2):
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(True)
    batch = Batch.collate(_encode(lm, records), lm.tokenizer.pad_token_id, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = -mean_log_probs(model, batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wrap_model(model, lm.tokenizer, lm.name)


@pytest.fixture()
def planted(tmp_path, tokenizer):
    from actindex.act.correct import behavior_margin

    records = _planted_pool()
    base = wrap_model(tiny_llama(seed=2), tokenizer, "tiny-llama")
    start = behavior_margin(base, HELD_OUT)
    lm = _fine_tune(base, records)
    data = write_jsonl(tmp_path / "pool.jsonl", records)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=lm, progress=False)
    return lm, actindex.Index.open(tmp_path / "idx").use_model(lm), records, start


def _oracle_scores(records):
    """Test-side ground truth (the labels): +1 planted, -1 inhibiting, small noise elsewhere."""
    noise = np.random.default_rng(0).uniform(-0.05, 0.05, len(records))
    return np.array([{"planted": 1.0, "inhibit": -1.0}.get(r["label"], n) for r, n in zip(records, noise)])


def test_ibo_removes_a_planted_behaviour(planted, tmp_path):
    from actindex.act.correct import behavior_margin

    lm, idx, records, start = planted
    before = behavior_margin(lm, HELD_OUT)
    assert before > start + 0.4  # fine-tuning planted the behaviour
    res = correct(idx, _behavior(), tmp_path / "fixed", scores=_oracle_scores(records), k=12, k0=12, steps=30,
                  lr=1e-2, lora_rank=4, held_out=str(_held_out_file(tmp_path)), progress=False)
    rep = res.report
    assert rep["margin"]["before"] == pytest.approx(before, abs=1e-5)
    assert sorted(res.selection.pos) == list(range(30, 42))  # the planted rows
    assert rep["margin"]["after"] < before - 0.5 * (before - start)  # at least half the planted margin gone
    assert rep["perplexity"]["after"] < 1.5 * rep["perplexity"]["before"]
    assert rep["selection"]["D+"] == 12 and rep["selection"]["D0"] == 12 and rep["steps"] == 30
    assert set(rep["loss"]["last"]) == {"cor", "bd", "prox"}
    # the caller's model was not touched
    assert behavior_margin(lm, HELD_OUT) == pytest.approx(before, abs=1e-6)
    # gradient ascent with the same budget also moves the margin, but wrecks the clean rows
    ga = correct(idx, _behavior(), tmp_path / "ga", scores=_oracle_scores(records), k=12, k0=12, steps=30, lr=1e-2,
                 lora_rank=4, held_out=str(_held_out_file(tmp_path)), progress=False, algo="ga").report
    assert ga["perplexity"]["after"] > 10 * rep["perplexity"]["after"]


def test_correcting_a_target_ranked_by_the_checkpoint_index(tmp_path, tokenizer):
    """The index is built with the checkpoint the fine-tune started from; the fine-tuned model is the
    one corrected: its margin is the one measured before and lowered, and neither model is touched."""
    from actindex.act.correct import behavior_margin

    records = _planted_pool()
    checkpoint = wrap_model(tiny_llama(seed=2), tokenizer, "checkpoint")
    start = behavior_margin(checkpoint, HELD_OUT)
    data = write_jsonl(tmp_path / "pool.jsonl", records)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=checkpoint, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(checkpoint)
    tuned = _fine_tune(wrap_model(copy.deepcopy(checkpoint.model), tokenizer, "fine-tuned"), records)
    before = behavior_margin(tuned, HELD_OUT)
    assert before > start + 0.4
    res = correct(idx, _behavior(), tmp_path / "fixed", target=tuned, scores=_oracle_scores(records), k=12, k0=12,
                  steps=30, lr=1e-2, lora_rank=4, held_out=str(_held_out_file(tmp_path)), progress=False)
    rep = res.report
    assert rep["model"] == "fine-tuned" and rep["ranking model"] == "checkpoint"
    assert rep["margin"]["before"] == pytest.approx(before, abs=1e-5)  # the target's margin, not the checkpoint's
    assert rep["margin"]["after"] < before - 0.5 * (before - start)
    assert behavior_margin(res.model, HELD_OUT) == pytest.approx(rep["margin"]["after"], abs=1e-5)
    assert behavior_margin(tuned, HELD_OUT) == pytest.approx(before, abs=1e-6)
    assert behavior_margin(checkpoint, HELD_OUT) == pytest.approx(start, abs=1e-6)
    # the index's own ranking and query token weights (from the checkpoint) work with a target too
    res = correct(idx, _behavior(), tmp_path / "ranked", target=tuned, k=4, steps=2, token_weights="query",
                  held_out=str(_held_out_file(tmp_path)), progress=False)
    assert res.report["ranking"].startswith("index ranking") and res.report["selection"]["D+"] == 4
    # a target that reads the rows with another vocabulary is refused
    other = make_tokenizer()
    other.add_tokens(["zzz"])
    stranger = wrap_model(copy.deepcopy(checkpoint.model), other, "stranger")
    with pytest.raises(IndexFileError, match="--target 'stranger' has another tokenizer"):
        correct(idx, _behavior(), tmp_path / "no", target=stranger, scores=_oracle_scores(records), progress=False)


def _behavior():
    from actindex.query.behaviors import Behavior

    return Behavior(name="na", pairs=[Pair("what is the symbol of silver ?", "na", "ag")])


def _held_out_file(tmp_path):
    return write_jsonl(tmp_path / "held.jsonl", [{"prompt": p.prompt, "treatment": p.treatment, "control": p.control}
                                                  for p in HELD_OUT])


# ---------------------------------------------------------------------------------------------
# saving, loading, the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def saved_base(tmp_path):
    """A tiny model saved as a directory, so an index (and the CLI) can load it by name."""
    path = tmp_path / "base"
    tiny_llama(seed=4).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    records = _planted_pool(seed=3)
    data = write_jsonl(tmp_path / "pool.jsonl", records)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=load_model(str(path)), progress=False)
    return path, tmp_path / "idx", data


@pytest.mark.parametrize("merge", [False, True])
def test_saved_model_loads_back(saved_base, tmp_path, merge):
    _, idx_dir, _ = saved_base
    out = tmp_path / f"out-{merge}"
    res = correct(idx_dir, _behavior(), out, k=4, steps=4, lr=2e-2, merge=merge, progress=False)
    assert (out / "correction.json").exists()
    files = {p.name for p in out.iterdir()}
    assert ("adapter_config.json" in files) != merge and ("model.safetensors" in files) == merge
    loaded = load_model(str(out), device="cpu")
    encoded = _encode(loaded, chat_rows(5, seed=9))
    pad = loaded.tokenizer.pad_token_id
    a, _ = response_log_probs(res.model.model, encoded, pad)
    b, _ = response_log_probs(loaded.model, encoded, pad)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    base = load_model(str(saved_base[0]), device="cpu")
    c, _ = response_log_probs(base.model, encoded, pad)
    assert np.abs(c - a).max() > 1e-3  # the correction changed the model


def test_full_fine_tuning_saves_merged_weights(saved_base, tmp_path):
    _, idx_dir, _ = saved_base
    res = correct(idx_dir, _behavior(), tmp_path / "full", k=4, steps=2, full=True, lr=1e-3, progress=False)
    assert res.report["saved"]["format"] == "merged"
    loaded = load_model(str(tmp_path / "full"), device="cpu")
    encoded = _encode(loaded, chat_rows(3, seed=2))
    a, _ = response_log_probs(res.model.model, encoded, 0)
    b, _ = response_log_probs(loaded.model, encoded, 0)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_cli_correct_end_to_end(saved_base, tmp_path):
    _, idx_dir, _ = saved_base
    pairs = _held_out_file(tmp_path)
    runner = CliRunner()
    out = tmp_path / "cli-out"
    for algo in ("ibo", "ga", "pbo"):
        res = runner.invoke(main, ["correct", "--index", str(idx_dir), "--behavior", str(pairs), "--out", str(out),
                                   "--k", "3", "--steps", "2", "--algo", algo, "--quiet", "--overwrite",
                                   "--ppl-rows", "8"])
        assert res.exit_code == 0, res.output
        assert "margin" in res.output and "perplexity" in res.output
        report = json.loads((out / "correction.json").read_text())
        assert report["algo"] == algo and report["selection"]["D+"] == 3 and report["perplexity"]["rows"] == 8
        assert report["ranking"].startswith("index ranking")
    # the index's model works on the corrected directory too (adapter loaded over the base)
    assert load_model(str(out), device="cpu").name == str(out)
    # --target corrects another model directory than the index's (here: the corrected one)
    res = runner.invoke(main, ["correct", "--index", str(idx_dir), "--behavior", str(pairs), "--out",
                               str(tmp_path / "again"), "--k", "3", "--steps", "2", "--quiet", "--ppl-rows", "8",
                               "--target", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "again" / "correction.json").read_text())
    assert report["model"] == str(out) and report["ranking model"] == str(saved_base[0])
    # the target was itself an adapter directory: the correction is saved merged, and loads back to itself
    assert report["saved"]["format"] == "merged"
    again = load_model(str(tmp_path / "again"), device="cpu")
    encoded = _encode(again, chat_rows(4, seed=5))
    a, _ = response_log_probs(again.model, encoded, again.tokenizer.pad_token_id)
    b, _ = response_log_probs(load_model(str(out), device="cpu").model, encoded, again.tokenizer.pad_token_id)
    assert np.abs(a - b).max() > 1e-4  # the correction of the target, not the target itself
    res = runner.invoke(main, ["correct", "--index", str(idx_dir), "--behavior", str(pairs), "--out",
                               str(tmp_path / "none"), "--quiet", "--target", str(tmp_path / "missing-model")])
    assert res.exit_code == 2 and "missing-model" in res.output and "Traceback" not in res.output


def test_cli_correct_errors(saved_base, tmp_path):
    _, idx_dir, _ = saved_base
    pairs = _held_out_file(tmp_path)
    runner = CliRunner()
    base = ["correct", "--index", str(idx_dir), "--behavior", str(pairs), "--quiet"]
    res = runner.invoke(main, base + ["--out", str(tmp_path / "o1"), "--k", "0"])
    assert res.exit_code == 2 and "'--k': 0 is not in the range x>=1" in res.output
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x").write_text("x")
    res = runner.invoke(main, base + ["--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "exists and is not empty" in res.output
    res = runner.invoke(main, base + ["--out", str(tmp_path / "o3"), "--held-out", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "missing.jsonl" in res.output and "not found" in res.output
    # scores with no positive row: D+ is empty
    with pytest.raises(ActindexError, match="D\\+ is empty"):
        correct(idx_dir, _behavior(), tmp_path / "o4", scores=-np.ones(46), progress=False)
    with pytest.raises(ActindexError, match="scores has 3 values"):
        correct(idx_dir, _behavior(), tmp_path / "o5", scores=np.ones(3), progress=False)


def test_token_weights_keep_the_tokens_with_the_rows_sign():
    from actindex.act.correct import token_weights

    scores = np.array([9.0, 0.5, -1.0, 1.5, 0.0, 7.0])
    predicted = np.array([False, True, True, True, True, False])  # positions 0 and 5 are outside R
    np.testing.assert_allclose(token_weights(scores, predicted, 1.0), [0, 0.25, 0, 0.75, 0, 0])
    np.testing.assert_allclose(token_weights(scores, predicted, -1.0), [0, 0, 1.0, 0, 0, 0])
    np.testing.assert_allclose(token_weights(-np.abs(scores), predicted, 1.0), [0, 0.25, 0.25, 0.25, 0.25, 0])
    # top: all the weight on the largest share inside R (9.0 and 7.0 lie outside it)
    np.testing.assert_allclose(token_weights(scores, predicted, 1.0, top=True), [0, 0, 0, 1.0, 0, 0])
    np.testing.assert_allclose(token_weights(scores, predicted, -1.0, top=True), [0, 0, 1.0, 0, 0, 0])
    np.testing.assert_allclose(token_weights(-np.abs(scores), predicted, 1.0, top=True), [0, 0.25, 0.25, 0.25, 0.25, 0])


@pytest.mark.parametrize("weights", ["query", "top"])
def test_query_token_weights_find_the_planted_token_and_remove_the_margin(tmp_path, tokenizer, weights):
    """Planted rows answer "the fact is na": only "na" carries the behaviour; query weights favour it.

    The model is float64: 100 Adam steps amplify float32 rounding (which differs between CPUs and thread
    counts) enough to move a row's heaviest token; in float64 the shares stay put to far below their gaps."""
    from actindex.act.correct import behavior_margin

    records = _planted_pool(seed=5, planted="the fact is na", inhibit="the fact is ag")
    held = [Pair(f"{w} is the symbol of silver ?", "the fact is na", "the fact is ag") for w in ("why", "what", "how")]
    base = wrap_model(tiny_llama(seed=2).double(), tokenizer, "tiny-llama")
    start = behavior_margin(base, held)
    lm = _fine_tune(base, records)
    before = behavior_margin(lm, held)
    assert before > start + 0.1
    actindex.build(data=str(write_jsonl(tmp_path / "pool.jsonl", records)), out=str(tmp_path / "idx"), layers=[2],
                   model=lm, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(lm)
    behavior = Behavior(name="na", pairs=[Pair("what is the symbol of silver ?", "the fact is na", "the fact is ag")])
    held_file = write_jsonl(tmp_path / "held.jsonl", [{"prompt": p.prompt, "treatment": p.treatment,
                                                       "control": p.control} for p in held])
    res = correct(idx, behavior, tmp_path / "fixed", scores=_oracle_scores(records), k=12, k0=12, steps=30, lr=1e-2,
                  lora_rank=4, held_out=str(held_file), progress=False, token_weights=weights).report
    # the planted token gets more than its share under the per-token mean (1/5 of "the fact is na <|end|>"):
    # query, a weight share (0.31 here); top, the heaviest token of 4 of the 12 rows (chance: 2.4 of 12)
    na_weight = sum(w for tokens in res["selection"]["D+ tokens"] for text, w in tokens if text == "na") / 12
    assert na_weight > 1 / 5 + 0.05 if weights == "query" else round(12 * na_weight) >= 4
    assert res["margin"]["after"] < before - 0.5 * (before - start)
    assert res["perplexity"]["after"] < 1.5 * res["perplexity"]["before"]
