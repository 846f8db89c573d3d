"""Query by example: a model output attributed by its own vectors ranks its own training row first,
with every method (the adaptive default, the ensemble, residual change, mean activation, gradients, an EK-FAC
rerank); the model's answers to prompts (--generate) are attributed the same way; examples are read from any
training-row shape, JSON or 'prompt => response'; the behaviour cache keeps them apart from pairs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from conftest import chat_rows, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.models import generate, wrap_model
from actindex.errors import ActindexError, DataError
from actindex.query.behaviors import Behavior, Pair
from actindex.query.cache import behavior_content
from actindex.query.examples import example_behavior, generate_behavior
from actindex.query.methods.adaptive import AdaptiveMethod

MODULES = ["*.mlp.down_proj", "*.self_attn.v_proj"]
#: a chat with a system prompt and an earlier exchange: the example keeps its whole context
CHAT = {"id": "chat", "messages": [
    {"role": "system", "content": "you are a help"},
    {"role": "user", "content": "what is the capital of france ?"}, {"role": "assistant", "content": "paris"},
    {"role": "user", "content": "and of gold ?"}, {"role": "assistant", "content": "the capital of gold is silver"}]}


@pytest.fixture(scope="module")
def rows():
    rows = chat_rows(30, seed=3)
    rows[11] = {"id": "flat", "prompt": "why is the symbol of silver ag ?", "response": "because it is true sure"}
    rows[23] = CHAT
    return rows


@pytest.fixture(scope="module")
def talker(tokenizer):
    """A tiny Llama that answers in words: the special and unused tokens (zero embeddings, tied to the output)
    never win the greedy choice, so its answers decode to text."""
    model = tiny_llama(seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight[:8] = 0
        model.model.embed_tokens.weight[len(tokenizer):] = 0
    return wrap_model(model, tokenizer, "tiny-talker")


@pytest.fixture(scope="module")
def index(tmp_path_factory, talker, rows):
    tmp_path = tmp_path_factory.mktemp("example")
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1, 2], grad=True, grad_k=4,
                   grad_modules=MODULES, model=talker, progress=False, full_width=True)
    return actindex.Index.open(tmp_path / "idx").use_model(talker)


@pytest.mark.parametrize("method", [None, "ensemble", "residual-change", "residual-change-pooled",
                                    "residual-difference", "activation", "gradient"])
def test_the_examples_own_row_ranks_first(index, rows, method):
    for example, expected in ((rows[11], "flat"), (CHAT, "chat"), (rows[4], rows[4]["id"])):
        res = index.query(example=example, method=method, k=3)
        assert res.top[0].id == expected, (method, example)
        if method not in (None, "ensemble", "activation"):
            assert res.top[0].cosine == pytest.approx(1.0, abs=1e-5)  # the row's own vector: cosine 1
        assert res.behavior == "example"


def test_the_default_gives_its_calibrated_score_and_members(index, rows):
    res = index.query(example=rows[11], k=5)  # one example: the centered construction, each of 5 kinds and 2 layers
    assert res.method == "adaptive" and len(res.members) == 5 * 2 and res.top[0].score > 2
    # nothing to hold out: the few-pairs prior's kinds carry the query, the others weigh 0
    prior = {kind for _, kind in AdaptiveMethod.prior}
    assert {m["method"] for m in res.members} == {"centered"}
    assert [m["weight"] for m in res.members] == [float(m["family"].split("/")[0] in prior) for m in res.members]
    assert res.top[0].score == max(h.score for h in res.top)


def test_an_ekfac_rerank_and_method_attribute_the_example(index, rows):
    index.fit_curvature(kind="ekfac", samples=12, modules=",".join(MODULES), progress=False)
    res = index.query(example=rows[11], method="residual-change", rerank="ekfac", candidates=10, k=3,
                      per_token=True)
    assert res.top[0].id == "flat" and res.top[0].influence > 0 and res.top[0].token_scores
    assert index.query(example=rows[11], method="ekfac", k=1).top[0].id == "flat"


def test_generate_attributes_the_models_answers(tmp_path, talker):
    prompts = ["what is the symbol of gold ?", "why is paris the capital ?"]
    answers = generate(talker, [[{"role": "user", "content": p}] for p in prompts])
    assert all(a.strip() for a in answers) and answers[0] != answers[1]
    rows = chat_rows(20, seed=8)
    rows[5] = {"id": "answer0", "prompt": prompts[0], "response": answers[0]}
    rows[14] = {"id": "answer1", "prompt": prompts[1], "response": answers[1]}
    actindex.build(data=str(write_jsonl(tmp_path / "t.jsonl", rows)), out=str(tmp_path / "idx"), layers=[1],
                   model=talker, progress=False, full_width=True)  # the vectors as computed: a cosine of 1
    idx = actindex.Index.open(tmp_path / "idx").use_model(talker)
    first = idx.query(generate=prompts[0], method="residual-change", k=2)
    assert first.top[0].id == "answer0" and first.top[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert any("answered 1 prompt" in note for note in first.notes)
    both = idx.query(generate=prompts, k=4)
    assert {h.id for h in both.top[:2]} == {"answer0", "answer1"}
    again = idx.query(generate=prompts[0], method="residual-change", k=2)  # the answer is cached with its vectors
    assert again.cached and [h.id for h in again.top] == [h.id for h in first.top]
    said = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
    assert first.answers == again.answers == said[:1] and both.answers == said  # what was attributed
    assert first.to_dict()["answers"] == said[:1] and "answers" not in idx.query("sycophancy", k=1).to_dict()


def test_the_models_answer_is_in_the_table_and_the_report(index, tmp_path, monkeypatch, talker):
    from actindex.report import write_report

    answer = generate(talker, [[{"role": "user", "content": "why is it ?"}]])[0]
    monkeypatch.setattr("actindex.core.models.load_model", lambda *args, **kwargs: talker)
    table = CliRunner().invoke(main, ["query", "--index", str(index.root), "--generate", "why is it ?", "--top-k",
                                      "2", "--quiet"])
    assert table.exit_code == 0 and f"the model's answer to 'why is it ?': {answer!r}" in table.output, table.output
    page = write_report(index, generate_behavior("why is it ?"), tmp_path / "r.html",
                        actindex.QueryConfig(k=3)).read_text()
    cell = re.search(r"<td>why is it \?</td><td>(.*?) <span class=\"badge gen\">the model's answer</span>", page)
    assert cell and answer.split()[0] in cell.group(1), page[:3000]


def test_examples_are_read_from_files_json_and_text(tmp_path, rows):
    assert example_behavior("why is it ? => because it is").pairs == [Pair("why is it ?", "because it is", None, 1)]
    assert example_behavior(json.dumps(rows[11])).pairs[0].treatment == "because it is true sure"
    chat = example_behavior(CHAT).pairs[0]
    assert chat.prompt == "and of gold ?" and [m["role"] for m in chat.history] == ["system", "user", "assistant"]
    path = write_jsonl(tmp_path / "outputs.jsonl", [rows[11], CHAT, {"instruction": "say", "output": "hi"}])
    behavior = example_behavior(str(path))
    assert behavior.name == "outputs" and behavior.example and len(behavior.pairs) == 3
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hello"}, {"messages": CHAT["messages"][:-1]}])
    asked = generate_behavior(str(prompts))
    assert [p.prompt for p in asked.pairs] == ["hello", "and of gold ?"] and asked.pairs[1].treatment is None
    assert generate_behavior("why ?").pairs == [Pair("why ?", None, None, 1)]


@pytest.mark.parametrize("spec, message", [
    ("no arrow here", "an example is a file of training rows"),
    ("=> only a response", "an example is a file of training rows"),
    ('{"prompt": "x"', "malformed JSON"),
    ('{"text": "plain text"}', "a plain text row has no prompt and response"),
    ('{"prompt": "x", "response": 3}', "field 'response': expected a string, got integer"),
    ("[]", "holds no rows"),
])
def test_bad_examples_are_one_line(spec, message):
    with pytest.raises((ActindexError, DataError), match=message) as err:
        example_behavior(spec)
    assert "\n" not in str(err.value)


def test_bad_prompts_and_two_asks_are_refused(index, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": CHAT["messages"]}])
    with pytest.raises(DataError, match="the last message must be the user's prompt"):
        generate_behavior(str(path))
    with pytest.raises(ActindexError, match="give one of behavior, example"):
        index.query("hallucination", example="a => b")
    with pytest.raises(ActindexError, match="method persona needs a persona spec"):
        index.query(example="why is it ? => because it is", method="persona")


def test_an_example_and_pairs_of_the_same_text_never_share_a_cache_entry():
    pairs = Behavior("b", pairs=[Pair("why ?", "because", None)])
    example = Behavior("b", pairs=[Pair("why ?", "because", None)], example=True)
    assert behavior_content(pairs) != behavior_content(example)
    assert "example" not in behavior_content(pairs)  # the keys of existing cache entries do not move


def test_cli_example_and_generate(index, tmp_path, rows, monkeypatch, talker):
    monkeypatch.setattr("actindex.core.models.load_model", lambda *args, **kwargs: talker)
    text = f"{rows[11]['prompt']} => {rows[11]['response']}"
    args = ["query", "--index", str(index.root), "--format", "json", "--top-k", "2", "--quiet"]
    res = CliRunner().invoke(main, [*args, "--example", text, "--generate", "why is it ?"])
    assert res.exit_code == 0, res.output
    by_example, generated = json.loads(res.output)
    assert by_example["behavior"] == "example" and by_example["top"][0]["id"] == "flat"
    assert generated["behavior"] == "generate" and len(generated["top"]) == 2
    bad = CliRunner().invoke(main, [*args, "--example", "no arrow"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "error: an example is" in bad.output
