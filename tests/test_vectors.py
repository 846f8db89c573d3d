"""Ground truth for the per-example vectors (docs/design.md#vector-families)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import chat_rows, make_tokenizer, tiny_gpt2, tiny_llama
from torch import nn

from actindex.core.encode import encode_row
from actindex.core.families import VectorSpec
from actindex.core.families.residual_change import masked_mean
from actindex.core.models import decoder_layers, wrap_model
from actindex.core.rows import Row, normalise_record
from actindex.core.vectors import (
    Batch,
    RademacherProjector,
    compute_many,
    compute_vectors,
    select_grad_modules,
    sequence_losses,
    token_terms,
)


def _rows(n: int, seed: int = 0) -> list[Row]:
    return [normalise_record("<test>", i + 1, i, rec) for i, rec in enumerate(chat_rows(n, seed))]


class LinearBlock(nn.Module):
    """A decoder block that is literally linear: ``z_out = z_in W``."""

    def __init__(self, d: int, seed: int = 1):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states @ self.weight


def _block_outputs(model, layer, batch):
    saved = {}
    block = decoder_layers(model)[layer]
    handle = block.register_forward_hook(lambda m, i, o: saved.update(z_in=i[0], z_out=o))
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    handle.remove()
    return saved["z_in"], saved["z_out"]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_residual_change_equals_output_change_of_a_linear_block(tokenizer, factory):
    """t_l(x) == (mean_R z_out after one SGD step on W - before) / eta, exactly, for a linear block."""
    model = factory().double()
    layer = 1
    decoder_layers(model)[layer] = LinearBlock(32).double()
    lm = wrap_model(model, tokenizer, "linear-block")
    rows = _rows(3, seed=4)
    encoded = [encode_row(tokenizer, r) for r in rows]
    vectors = compute_vectors(model, encoded, VectorSpec(layers=[layer]), tokenizer.pad_token_id)
    rc = vectors.vectors[f"residual_change/{layer}"]

    eta = 1e-3
    block = decoder_layers(model)[layer]
    for i, enc in enumerate(encoded):
        batch = Batch.collate([enc], tokenizer.pad_token_id, lm.device)
        block.weight.requires_grad_(True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits[0, :-1], -1).gather(1, batch.input_ids[0, 1:, None])[:, 0]
        loss = -(logp * batch.loss_mask[0, 1:]).sum()
        (grad_w,) = torch.autograd.grad(loss, block.weight)
        block.weight.requires_grad_(False)
        _, before = _block_outputs(model, layer, batch)
        original = block.weight.data.clone()
        block.weight.data -= eta * grad_w
        _, after = _block_outputs(model, layer, batch)
        block.weight.data = original
        change = (masked_mean(after, batch.loss_mask) - masked_mean(before, batch.loss_mask))[0] / eta
        # exact in float64; the vectors themselves are computed in float32
        np.testing.assert_allclose(rc[i], change.numpy(), rtol=1e-5, atol=1e-8)
        assert np.abs(rc[i]).max() > 1e-3  # not trivially zero


def test_pooled_variant_formula(tokenizer):
    """pooled = -<zbar_in, sum_s g_s> zbar_in, checked against autograd on the block output."""
    model = tiny_llama().double()
    lm = wrap_model(model, tokenizer, "tiny")
    enc = encode_row(tokenizer, _rows(1)[0])
    out = compute_vectors(model, [enc], VectorSpec(
        layers=[2], kinds=["residual_change", "residual_change_pooled", "mean_activation"]), tokenizer.pad_token_id)
    batch = Batch.collate([enc], tokenizer.pad_token_id, lm.device)
    saved = {}

    def hook(module, inputs, output):
        output = output.detach().requires_grad_(True)
        saved.update(z_in=inputs[0], z_out=output)
        return output

    handle = decoder_layers(model)[2].register_forward_hook(hook)
    with torch.enable_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits[0, :-1], -1).gather(1, batch.input_ids[0, 1:, None])[:, 0]
        loss = -(logp * batch.loss_mask[0, 1:]).sum()
        (g,) = torch.autograd.grad(loss, saved["z_out"])
    handle.remove()
    zbar = masked_mean(saved["z_in"], batch.loss_mask)[0]
    expected = -(zbar @ g[0].sum(0)) * zbar
    np.testing.assert_allclose(out.vectors["residual_change_pooled/2"][0], expected.detach().numpy(), rtol=1e-6)


def _per_example_grads(model, tokenizer, enc, names):
    """Exact per-example weight gradients dL/dW of the named linear modules, by autograd."""
    modules = dict(model.named_modules())
    params = [modules[n].weight for n in names]
    for p in params:
        p.requires_grad_(True)
    batch = Batch.collate([enc], tokenizer.pad_token_id, next(model.parameters()).device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[0, :-1].double(), -1).gather(1, batch.input_ids[0, 1:, None])[:, 0]
    loss = -(logp * batch.loss_mask[0, 1:]).sum()
    grads = torch.autograd.grad(loss, params)
    for p in params:
        p.requires_grad_(False)
    out = []
    for name, grad in zip(names, grads):
        # nn.Linear stores W as (out, in); GPT-2's Conv1D as (in, out)
        out.append(grad if isinstance(modules[name], nn.Linear) else grad.T)
    return out


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_projected_gradient_equals_projecting_autograd_gradient(tokenizer, factory):
    model = factory().double()
    wrap_model(model, tokenizer, "tiny")
    names = select_grad_modules(model)
    assert len(names) >= 4
    k = 4
    projector = RademacherProjector(seed=3, k=k)
    rows = _rows(3, seed=1)
    encoded = [encode_row(tokenizer, r) for r in rows]
    spec = VectorSpec(layers=[1], kinds=["gradient"], grad_modules=names, grad_k=k, seed=3)
    out = compute_vectors(model, encoded, spec, tokenizer.pad_token_id, projector)
    for i, enc in enumerate(encoded):
        blocks = []
        for name, grad in zip(names, _per_example_grads(model, tokenizer, enc, names)):
            p_out = projector.matrix(f"{name}.out", grad.shape[0], torch.device("cpu"), torch.float64)
            p_in = projector.matrix(f"{name}.in", grad.shape[1], torch.device("cpu"), torch.float64)
            blocks.append((p_out @ grad @ p_in.T).flatten())
        expected = torch.cat(blocks).numpy()
        np.testing.assert_allclose(out.vectors["gradient"][i], expected, rtol=1e-5, atol=1e-6)


def test_projected_inner_products_track_exact_ones(tokenizer):
    """JL: <P g_i, P g_j> approximates <g_i, g_j> over pairs of examples (Pearson r >= 0.9)."""
    model = tiny_llama().double()
    wrap_model(model, tokenizer, "tiny")
    names = select_grad_modules(model, ["*.mlp.*"])
    rows = _rows(12, seed=7)
    encoded = [encode_row(tokenizer, r) for r in rows]
    exact = np.stack(
        [torch.cat([g.flatten() for g in _per_example_grads(model, tokenizer, e, names)]).numpy() for e in encoded]
    )
    k = 16
    spec = VectorSpec(layers=[1], kinds=["gradient"], grad_modules=names, grad_k=k, seed=0)
    projected = compute_vectors(model, encoded, spec, tokenizer.pad_token_id, RademacherProjector(0, k)).vectors
    proj = projected["gradient"]
    iu = np.triu_indices(len(rows))
    exact_ip = (exact @ exact.T)[iu]
    proj_ip = (proj @ proj.T)[iu]
    assert proj.shape[1] < exact.shape[1] / 4  # really a compression
    assert np.corrcoef(exact_ip, proj_ip)[0, 1] >= 0.9
    # unbiased in expectation: the norms agree within JL error
    np.testing.assert_allclose(np.diag(proj @ proj.T), np.diag(exact @ exact.T), rtol=0.5)


def test_padding_invariance(tokenizer):
    """A row gives the same vectors alone and inside a right-padded batch of longer rows."""
    model = tiny_llama()
    names = select_grad_modules(wrap_model(model, tokenizer, "tiny").model)
    spec = VectorSpec(layers=[1, 2], kinds=["residual_change", "residual_change_pooled", "mean_activation", "gradient"],
                      grad_modules=names, grad_k=4)
    projector = RademacherProjector(0, 4)
    rows = _rows(6, seed=2)
    encoded = [encode_row(tokenizer, r) for r in rows]
    shortest = min(range(6), key=lambda i: len(encoded[i].input_ids))
    alone = compute_vectors(model, [encoded[shortest]], spec, tokenizer.pad_token_id, projector)
    batched = compute_vectors(model, encoded, spec, tokenizer.pad_token_id, projector)
    assert len(encoded[shortest].input_ids) < max(len(e.input_ids) for e in encoded)
    for fam, arr in alone.vectors.items():
        np.testing.assert_allclose(batched.vectors[fam][shortest], arr[0], rtol=1e-4, atol=1e-5, err_msg=fam)
    np.testing.assert_allclose(batched.loss[shortest], alone.loss[0], rtol=1e-5)


def test_batching_order_does_not_change_results(tokenizer):
    model = tiny_llama()
    wrap_model(model, tokenizer, "tiny")
    encoded = [encode_row(tokenizer, r) for r in _rows(9, seed=5)]
    spec = VectorSpec(layers=[1])
    a = compute_many(model, encoded, spec, tokenizer.pad_token_id, batch_size=2)
    b = compute_many(model, encoded, spec, tokenizer.pad_token_id, batch_size=9)
    for fam in a.vectors:
        np.testing.assert_allclose(a.vectors[fam], b.vectors[fam], rtol=1e-4, atol=1e-5)


def test_loss_covers_assistant_tokens_only(tokenizer):
    """The loss equals Hugging Face's loss with labels -100 everywhere but the assistant turn,
    and the masked tokens decode to exactly the assistant's text and its end-of-turn token."""
    model = tiny_llama()
    wrap_model(model, tokenizer, "tiny")
    record = {"messages": [
        {"role": "system", "content": "you are a fact"},
        {"role": "user", "content": "what is the capital of france ?"},
        {"role": "assistant", "content": "paris is the capital"},
    ]}
    row = normalise_record("<test>", 1, 0, record)
    enc = encode_row(tokenizer, row)
    masked = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert tokenizer.decode(masked).replace(" ", "") == "parisisthecapital<|end|>"
    out = compute_vectors(model, [enc], VectorSpec(layers=[1]), tokenizer.pad_token_id)
    ids = torch.tensor([enc.input_ids])
    labels = ids.clone()
    labels[0, ~torch.tensor(enc.loss_mask)] = -100
    hf = model(input_ids=ids, labels=labels).loss.item() * sum(enc.loss_mask)
    assert out.loss[0] == pytest.approx(hf, rel=1e-5)
    # with no response token left there is no loss term at all: the row is excluded, not scored
    enc_no_loss = encode_row(tokenizer, row)
    enc_no_loss.loss_mask = [False] * len(enc_no_loss.input_ids)
    enc_no_loss.n_response = 0
    none = compute_many(model, [enc_no_loss], VectorSpec(layers=[1]), tokenizer.pad_token_id)
    assert not none.valid[0]


def test_margin_is_minus_the_log_odds_and_the_loss_gradient_is_one_minus_p_times_its_gradient():
    """margin_t = -(z_y - log sum_{k != y} exp z_k) = -log(p_y / (1 - p_y)), and
    d loss / dz = (1 - p_y) d margin / dz: the loss gradient of a confident token vanishes, its margin's does not."""
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 7, generator=gen, dtype=torch.float64)).requires_grad_(True)
    labels = torch.tensor([0, 3, 6, 2, 2])
    margin = token_terms(logits, labels, "margin")
    p = torch.softmax(logits.detach(), dim=1)[torch.arange(5), labels]
    torch.testing.assert_close(margin, -torch.log(p / (1 - p)))
    by_hand = [-(logits[i, y] - torch.log(sum(torch.exp(logits[i, k]) for k in range(7) if k != y)))
               for i, y in enumerate(labels.tolist())]
    torch.testing.assert_close(margin, torch.stack(by_hand))
    for i in range(5):
        (g_loss,) = torch.autograd.grad(token_terms(logits, labels, "loss")[i], logits)
        (g_margin,) = torch.autograd.grad(margin[i], logits, retain_graph=True)
        torch.testing.assert_close(g_loss, (1 - p[i]) * g_margin)
    with pytest.raises(ValueError, match="measurement: expected one of loss, margin"):
        token_terms(logits, labels, "log-odds")


def test_sequence_margin_sums_the_response_tokens_on_either_head_path(tokenizer):
    """sequence_losses(measurement="margin") = sum over the response tokens of minus their log-odds, the
    same through the response-only head and the full forward pass (a model whose head scales its logits)."""
    model = tiny_llama().double()
    wrap_model(model, tokenizer, "tiny")
    encoded = [encode_row(tokenizer, r) for r in _rows(3, seed=4)]
    batch = Batch.collate(encoded, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        got = sequence_losses(model, batch, measurement="margin")
        model.config.logit_scale = 1.0  # a head that is not a plain linear map: the full forward path
        full = sequence_losses(model, batch, measurement="margin")
        del model.config.logit_scale
        for b, enc in enumerate(encoded):
            logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits[0].double(), dim=-1)
            expected = sum(-(logp[t - 1, y] - torch.log1p(-logp[t - 1, y].exp()))
                           for t, (y, m) in enumerate(zip(enc.input_ids, enc.loss_mask)) if m)
            assert got[b].item() == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(full, got)


def test_multi_turn_mask_covers_every_assistant_turn(tokenizer):
    record = {"messages": [
        {"role": "user", "content": "yes"}, {"role": "assistant", "content": "no"},
        {"role": "user", "content": "why"}, {"role": "assistant", "content": "because"},
    ]}
    enc = encode_row(tokenizer, normalise_record("<test>", 1, 0, record))
    masked = tokenizer.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m]).replace(" ", "")
    assert masked == "no<|end|>because<|end|>"


def test_text_rows_and_truncation(tokenizer):
    row = normalise_record("<test>", 1, 0, {"text": "the capital of france is paris"})
    enc = encode_row(tokenizer, row)
    assert enc.loss_mask[0] is False and all(enc.loss_mask[1:])
    short = encode_row(tokenizer, row, max_length=3)
    assert short.truncated and len(short.input_ids) == 3


def test_projector_is_deterministic_and_scaled():
    p = RademacherProjector(seed=5, k=8)
    a = p.matrix("m.in", 100, torch.device("cpu"))
    b = RademacherProjector(seed=5, k=8).matrix("m.in", 100, torch.device("cpu"))
    assert torch.equal(a, b)
    assert torch.allclose(a.abs(), torch.full_like(a, 8**-0.5))
    assert not torch.equal(a, RademacherProjector(seed=6, k=8).matrix("m.in", 100, torch.device("cpu")))


def test_tokenizer_fixture_has_no_unknown_words():
    tok = make_tokenizer()
    for rec in chat_rows(5):
        for m in rec["messages"]:
            assert tok.unk_token_id not in tok(m["content"])["input_ids"]


def test_residual_change_token_scores_sum_to_the_row_score(tokenizer):
    """Splitting the loss over response tokens splits <t_l(x), psi> exactly (float64 model)."""
    from actindex.core.families import VectorSpec
    from actindex.core.vectors import compute_vectors, residual_change_token_scores

    model = tiny_llama(seed=1).double()
    rows = [encode_row(tokenizer, normalise_record("x", i, i, r), 64) for i, r in enumerate(chat_rows(4, seed=2))]
    spec = VectorSpec(layers=[1], kinds=["residual_change"], grad_k=4, seed=0)
    psi = np.random.default_rng(0).standard_normal(model.config.hidden_size)
    for row in rows:
        whole = compute_vectors(model, [row], spec, tokenizer.pad_token_id).vectors["residual_change/1"][0]
        per_token = residual_change_token_scores(model, row, 1, psi, tokenizer.pad_token_id, chunk=3)
        predicted = np.asarray(row.loss_mask[1:], dtype=bool)
        assert np.count_nonzero(per_token[~predicted]) == 0 and np.count_nonzero(per_token[predicted]) > 1
        np.testing.assert_allclose(per_token.sum(), whole.astype(np.float64) @ psi, rtol=1e-5)


def test_content_only_masks_leave_out_the_tokens_that_close_each_response(tokenizer):
    """content_only drops exactly the template's closing tokens of every assistant turn (those it renders
    after an empty response), and the end-of-sequence token of a row rendered without a template."""
    record = {"messages": [
        {"role": "user", "content": "yes"}, {"role": "assistant", "content": "no"},
        {"role": "user", "content": "why"}, {"role": "assistant", "content": "because it is"},
    ]}
    row = normalise_record("<test>", 1, 0, record)
    full, content = encode_row(tokenizer, row), encode_row(tokenizer, row, content_only=True)
    assert full.input_ids == content.input_ids
    dropped = [t for t, a, c in zip(full.input_ids, full.loss_mask, content.loss_mask) if a and not c]
    assert tokenizer.decode(dropped).split() == ["<|end|>", "<|end|>"]
    assert tokenizer.decode([t for t, m in zip(content.input_ids, content.loss_mask) if m]).split() == [
        "no", "because", "it", "is"]
    assert content.n_response == full.n_response - 2
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        plain = normalise_record("<test>", 1, 0, {"messages": record["messages"][:2]})
        full, content = encode_row(tokenizer, plain), encode_row(tokenizer, plain, content_only=True)
    finally:
        tokenizer.chat_template = template
    assert full.input_ids[-1] == tokenizer.eos_token_id and full.loss_mask[-1] and not content.loss_mask[-1]
    assert content.loss_mask[:-1] == full.loss_mask[:-1]


def test_opening_families_equal_their_whole_families_over_the_cut_row(tokenizer):
    """``*_opening`` vectors of a long row are the whole-response vectors of the row cut after its first W
    response tokens (each computed alone); a row no longer than W has the same vector in both families."""
    from actindex.core.encode import response_opening
    from actindex.core.families import OPENING_TOKENS
    from actindex.testing import WORDS

    model = tiny_llama().double()
    rng = np.random.default_rng(0)
    records = [{"messages": [{"role": "user", "content": " ".join(rng.choice(WORDS, 6))},
                             {"role": "assistant", "content": " ".join(rng.choice(WORDS, n))}]}
               for n in (OPENING_TOKENS * 2, 5, OPENING_TOKENS + 7, 12)]
    encoded = [encode_row(tokenizer, normalise_record("<t>", i + 1, i, r)) for i, r in enumerate(records)]
    assert [e.n_response > OPENING_TOKENS for e in encoded] == [True, False, True, False]
    spec = VectorSpec(layers=[1, 3], kinds=["residual_change", "mean_activation", "residual_change_opening",
                                            "mean_activation_opening"])
    out = compute_many(model, encoded, spec, tokenizer.pad_token_id, batch_size=3)
    assert out.valid.all()
    whole = VectorSpec(layers=[1, 3], kinds=["residual_change", "mean_activation"])
    for i, row in enumerate(encoded):
        cut = compute_vectors(model, [response_opening(row, OPENING_TOKENS)], whole, tokenizer.pad_token_id)
        assert cut.n_response[0] == min(row.n_response, OPENING_TOKENS)
        for layer in (1, 3):
            for kind in ("residual_change", "mean_activation"):
                opening = out.vectors[f"{kind}_opening/{layer}"][i]  # float32 families: rounding of other batches
                np.testing.assert_allclose(opening, cut.vectors[f"{kind}/{layer}"][0], rtol=1e-4, atol=1e-6)
                same = np.allclose(opening, out.vectors[f"{kind}/{layer}"][i], rtol=1e-4, atol=1e-6)
                assert same == (row.n_response <= OPENING_TOKENS)
    # openings alone (no whole family in the pass) give the same vectors, and the whole pass still gives the loss
    alone = compute_many(model, encoded, VectorSpec(layers=[1, 3], kinds=["residual_change_opening"]),
                         tokenizer.pad_token_id, batch_size=2)
    np.testing.assert_allclose(alone.vectors["residual_change_opening/3"], out.vectors["residual_change_opening/3"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(alone.loss, out.loss, rtol=1e-5)


def test_the_start_family_is_the_mean_activation_of_the_row_cut_after_its_first_tokens(tokenizer):
    """``mean_activation_start`` (from the row's own pass, padded in a batch with rows of other lengths) equals
    ``mean_activation`` of the row cut after its first S response tokens, computed alone; a row no longer than S
    has its whole-response mean activation."""
    from actindex.core.encode import response_opening
    from actindex.core.families import START_TOKENS
    from actindex.testing import WORDS

    model = tiny_llama().double()
    rng = np.random.default_rng(1)
    records = [{"messages": [{"role": "user", "content": " ".join(rng.choice(WORDS, p))},
                             {"role": "assistant", "content": " ".join(rng.choice(WORDS, n))}]}
               for p, n in ((3, 40), (9, 3), (5, START_TOKENS + 1), (2, 17))]
    encoded = [encode_row(tokenizer, normalise_record("<t>", i + 1, i, r)) for i, r in enumerate(records)]
    assert [e.n_response > START_TOKENS for e in encoded] == [True, False, True, True]
    out = compute_many(model, encoded, VectorSpec(layers=[1, 3], kinds=["mean_activation", "mean_activation_start"]),
                       tokenizer.pad_token_id, batch_size=4)
    whole = VectorSpec(layers=[1, 3], kinds=["mean_activation"])
    for i, row in enumerate(encoded):
        cut = compute_vectors(model, [response_opening(row, START_TOKENS)], whole, tokenizer.pad_token_id)
        for layer in (1, 3):
            start = out.vectors[f"mean_activation_start/{layer}"][i]
            np.testing.assert_allclose(start, cut.vectors[f"mean_activation/{layer}"][0], rtol=1e-4, atol=1e-6)
            same = np.allclose(start, out.vectors[f"mean_activation/{layer}"][i], rtol=1e-4, atol=1e-6)
            assert same == (row.n_response <= START_TOKENS)


def test_the_surprisal_family_weights_each_response_token_by_its_own_loss(tokenizer):
    """``mean_activation_surprisal`` (batched, padded, through the build's pass) equals the brute force from the
    model's own outputs: ``sum_{t in R} l_t h_t / sum_{t in R} l_t`` with ``l_t = -log softmax(logits_{t-1})[x_t]``
    and ``h_t`` the block's output, row by row; the plain mean is the same formula with equal weights."""
    import torch

    from actindex.testing import WORDS

    model = tiny_llama().double()
    rng = np.random.default_rng(2)
    records = [{"messages": [{"role": "user", "content": " ".join(rng.choice(WORDS, p))},
                             {"role": "assistant", "content": " ".join(rng.choice(WORDS, n))}]}
               for p, n in ((3, 30), (7, 2), (2, 11))]
    encoded = [encode_row(tokenizer, normalise_record("<t>", i + 1, i, r)) for i, r in enumerate(records)]
    spec = VectorSpec(layers=[1, 2], kinds=["mean_activation", "mean_activation_surprisal"])
    out = compute_many(model, encoded, spec, tokenizer.pad_token_id, batch_size=3)
    assert out.valid.all()
    for i, row in enumerate(encoded):
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            res = model(ids, output_hidden_states=True)
        nll = -torch.log_softmax(res.logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0].numpy()
        r = np.flatnonzero(row.loss_mask)
        loss = nll[r - 1]
        assert r.min() > 0 and np.ptp(loss) > 0.1  # the weights differ: the two families must differ
        for layer in (1, 2):
            h = res.hidden_states[layer + 1][0].numpy()[r]
            expected = (loss[:, None] * h).sum(0) / loss.sum()
            np.testing.assert_allclose(out.vectors[f"mean_activation_surprisal/{layer}"][i], expected, rtol=1e-4,
                                       atol=1e-6)
            np.testing.assert_allclose(out.vectors[f"mean_activation/{layer}"][i], h.mean(0), rtol=1e-4, atol=1e-6)
            assert not np.allclose(expected, h.mean(0), rtol=1e-3)
    # the full-forward path of the loss (a head that does more than a linear map) gives the same weights
    model.config.logit_scale = 1.0  # read by sequence_losses only: Llama's forward ignores it
    full = compute_many(model, encoded, VectorSpec(layers=[1], kinds=["mean_activation_surprisal"]),
                        tokenizer.pad_token_id, batch_size=3)
    np.testing.assert_allclose(full.vectors["mean_activation_surprisal/1"], out.vectors["mean_activation_surprisal/1"],
                               rtol=1e-5, atol=1e-7)
