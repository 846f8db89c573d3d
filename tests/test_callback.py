"""ActindexCallback inside a real training loop, checkpoint-set queries, and the memorisation warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_same_index, tiny_llama
from datasets import Dataset

import actindex
from actindex.cli import main
from actindex.core.encode import encode_row
from actindex.core.models import wrap_model
from actindex.core.rows import normalise_record
from actindex.errors import ActindexError, IndexFileError, MemorisationWarning
from actindex.index.manifest import CheckpointInfo
from actindex.index.memorisation import MEMORISED_RATIO
from actindex.integrations.rows import trainer_record
from actindex.query.checkpoints import CheckpointSet
from actindex.testing import chat_rows, make_tokenizer, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = [1, 2]
PAIRS = [
    {"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
    {"prompt": "what is the capital of france ?", "treatment": "the capital is gold", "control": "paris"},
]


def tokenised(tokenizer, rows: list[dict], max_length: int = 64) -> Dataset:
    """The rows with the columns a Trainer trains on (``input_ids``, ``labels``: -100 outside the responses)."""
    out = []
    for i, row in enumerate(rows):
        e = encode_row(tokenizer, normalise_record("<t>", i + 1, i, row), max_length)
        out.append({**row, "input_ids": e.input_ids,
                    "labels": [t if m else -100 for t, m in zip(e.input_ids, e.loss_mask)]})
    return Dataset.from_list(out)


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    attention = torch.zeros(len(batch), width, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n], labels[i, :n], attention[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def trainer_for(model, tokenizer, rows, out, steps: int, lr: float = 1e-2, batch: int = 4, **kwargs):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch,
                             learning_rate=lr, use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, seed=0, **kwargs)
    return Trainer(model=model, args=args, train_dataset=tokenised(tokenizer, rows), data_collator=collate,
                   processing_class=tokenizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama trained two steps by a transformers Trainer, indexed by the callback at steps 0 and 2."""
    root = tmp_path_factory.mktemp("callback")
    tokenizer, rows = make_tokenizer(), chat_rows(24, seed=3)
    rows[5] = {"id": "planted", "messages": [{"role": "user", "content": PAIRS[0]["prompt"]},
                                             {"role": "assistant", "content": PAIRS[0]["treatment"]}], "label": "x"}
    trainer = trainer_for(tiny_llama(), tokenizer, rows, root / "trainer", steps=2)
    callback = actindex.ActindexCallback(root / "ckpt", steps=[0, 2], layers=LAYERS).attach(trainer)
    trainer.train()
    return root, rows, trainer, callback


def test_step_zero_index_equals_the_build_on_the_same_rows_and_model(trained, tokenizer):
    root, rows, trainer, callback = trained
    data = write_jsonl(root / "train.jsonl", rows)
    actindex.build(data=str(data), out=str(root / "ref"), model=wrap_model(tiny_llama(), tokenizer, "base"),
                   layers=LAYERS, progress=False)
    assert_same_index(root / "ref", root / "ckpt" / "step-000000")
    assert (root / "ckpt" / "rows.jsonl").read_text() == data.read_text()  # the rows as the trainer saw them


def test_the_set_lists_its_checkpoints_and_their_manifests_record_them(trained):
    root, _, trainer, callback = trained
    listed = json.loads((root / "ckpt" / "checkpoints.json").read_text())
    assert [c["step"] for c in listed["checkpoints"]] == [0, 2] and listed["rows"] == 24
    first, last = (actindex.Index.open(root / "ckpt" / c["index"]) for c in listed["checkpoints"])
    assert first.manifest.checkpoint == CheckpointInfo(step=0, epoch=0.0)
    assert last.manifest.checkpoint.step == 2 and last.manifest.model.fingerprint == listed["checkpoints"][1][
        "fingerprint"] != first.manifest.model.fingerprint
    assert callback.seconds > 0 and all(c["seconds"] > 0 for c in listed["checkpoints"])
    # the saved weights load back as the model the index names (same fingerprint)
    assert last.model().fingerprint == last.manifest.model.fingerprint


def test_training_goes_on_exactly_as_without_the_callback(trained, tokenizer, tmp_path):
    _, rows, trainer, _ = trained
    alone = trainer_for(tiny_llama(), tokenizer, rows, tmp_path / "trainer", steps=2)
    alone.train()
    for (name, a), b in zip(trainer.model.state_dict().items(), alone.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_a_rerun_keeps_the_finished_indexes_and_refuses_other_rows(trained, tokenizer):
    root, rows, _, _ = trained
    listed = (root / "ckpt" / "checkpoints.json").read_text()
    again = trainer_for(tiny_llama(), tokenizer, rows, root / "again", steps=2)
    callback = actindex.ActindexCallback(root / "ckpt", steps=[0, 2], layers=LAYERS).attach(again)
    again.train()
    assert (root / "ckpt" / "checkpoints.json").read_text() == listed and callback.seconds < 5
    other = trainer_for(tiny_llama(), tokenizer, rows[:-1], root / "other", steps=1)
    actindex.ActindexCallback(root / "ckpt", layers=LAYERS).attach(other)
    with pytest.raises(ActindexError, match="holds indexes of other rows"):
        other.train()
    assert (root / "ckpt" / "checkpoints.json").read_text() == listed


def test_cli_queries_a_checkpoint_set_and_one_checkpoint(trained, tmp_path):
    root, *_ = trained
    behavior = write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    runner = CliRunner()
    base = ["query", "--behavior", str(behavior), "--layer", "2", "--format", "json", "--top-k", "3"]
    res = runner.invoke(main, [*base, "--index", str(root / "ckpt")])
    assert res.exit_code == 0, res.output
    (fused,) = json.loads(res.output)
    assert [c["step"] for c in fused["checkpoints"]] == [0, 2] and fused["method"].endswith("(tracin)")
    hit = fused["top"][0]
    assert hit["score"] == pytest.approx(sum(hit["checkpoint_scores"].values()))
    res = runner.invoke(main, [*base, "--index", str(root / "ckpt"), "--checkpoint", "2"])
    assert res.exit_code == 0, res.output
    one = json.loads(res.output)[0]
    direct = actindex.Index.open(root / "ckpt" / "step-000002").query(str(behavior), layer=2, k=3)
    assert [h["id"] for h in one["top"]] == [h.id for h in direct.top] and "checkpoints" not in one
    res = runner.invoke(main, [*base, "--index", str(root / "ckpt"), "--checkpoint", "7"])
    assert res.exit_code == 2 and "no index of step 7" in res.output and "steps: 0, 2" in res.output
    res = runner.invoke(main, ["info", str(root / "ckpt")])
    assert res.exit_code == 2 and "is a checkpoint set" in res.output


def two_checkpoints(tmp_path, tokenizer, rows=None):
    """Two indexes of the same rows by two 'checkpoints' (two tiny Llamas), opened with their models."""
    tmp_path.mkdir(exist_ok=True)
    data = write_jsonl(tmp_path / "train.jsonl", rows or chat_rows(30, seed=11))
    indexes = []
    for step, seed in ((0, 0), (10, 1)):
        lm = wrap_model(tiny_llama(seed=seed), tokenizer, f"ckpt-{step}")
        out = tmp_path / f"step-{step}"
        actindex.build(data=str(data), out=str(out), model=lm, layers=LAYERS, progress=False,
                       checkpoint=CheckpointInfo(step=step))
        indexes.append(actindex.Index.open(out).use_model(lm))
    return indexes


def test_checkpoint_fusion_equals_its_formula(tmp_path, tokenizer):
    indexes = two_checkpoints(tmp_path, tokenizer)
    behavior = str(write_jsonl(tmp_path / "behavior.jsonl", PAIRS))
    cset = CheckpointSet(indexes[::-1])  # ordered by step whatever the order given
    assert [i.manifest.checkpoint.step for i in cset] == [0, 10]
    alone = [idx.query(behavior, k=0) for idx in indexes]  # each checkpoint's own answer, every row
    score = [{h.row: h.score for h in res.top} for res in alone]  # s_c(x), calibrated
    rank = [{h.row: i for i, h in enumerate(res.top)} for res in alone]
    rows = sorted(score[0])

    res = cset.query(behavior, k=0, bottom_k=3)  # tracin: S(x) = sum_c s_c(x)
    expected = {x: score[0][x] + score[1][x] for x in rows}
    assert [h.row for h in res.top] == sorted(rows, key=lambda x: -expected[x])
    for h in res.top:
        assert h.score == pytest.approx(expected[h.row]) and h.calibrated == pytest.approx(expected[h.row])
        assert h.checkpoint_scores == pytest.approx({"step-000000": score[0][h.row], "step-000010": score[1][h.row]})
    assert [h.row for h in res.bottom] == sorted(rows, key=lambda x: expected[x])[:3]

    res = cset.query(behavior, k=0, checkpoint_fusion="rrf")  # sum_c 1 / (60 + rank_c(x))
    expected_rrf = {x: 1 / (60 + rank[0][x]) + 1 / (60 + rank[1][x]) for x in rows}
    assert [h.score for h in res.top] == pytest.approx(sorted(expected_rrf.values(), reverse=True))
    assert all(h.calibrated == pytest.approx(expected[h.row]) for h in res.top)

    single = [idx.query(behavior, method="residual-change", layer=2, k=0) for idx in indexes]
    cos = [{h.row: h.cosine for h in r.top} for r in single]
    res = cset.query(behavior, method="residual-change", layer=2, k=5, checkpoint_fusion="tracin-cosine")
    best = sorted(rows, key=lambda x: -(cos[0][x] + cos[1][x]))[:5]
    assert [h.row for h in res.top] == best
    assert [h.score for h in res.top] == pytest.approx([cos[0][x] + cos[1][x] for x in best], abs=1e-6)


def test_a_set_whose_rows_differ_is_refused_in_one_line(tmp_path, tokenizer):
    a, _ = two_checkpoints(tmp_path / "a", tokenizer)
    other = chat_rows(30, seed=11)
    other[3], other[4] = other[4], other[3]
    _, b = two_checkpoints(tmp_path / "b", tokenizer, rows=other)
    with pytest.raises(IndexFileError, match=r"as checkpoints of the same rows: they index other data") as err:
        CheckpointSet([a, b])
    assert "\n" not in str(err.value)
    res = CliRunner().invoke(main, ["query", "--index", str(a.root), "--index", str(b.root), "--behavior", "x"])
    assert res.exit_code == 2 and res.output.count("\n") == 1


def test_trainer_rows_drop_tokenised_columns_and_join_conversational_completions():
    prompt = [{"role": "user", "content": "hi"}]
    completion = [{"role": "assistant", "content": "yes"}]
    record = trainer_record({"id": 1, "prompt": prompt, "completion": completion, "input_ids": [1], "labels": [2]})
    assert record == {"messages": prompt + completion, "id": 1}
    plain = {"prompt": "hi", "completion": "yes", "attention_mask": [1]}
    assert trainer_record(plain) == {"prompt": "hi", "completion": "yes"}


def test_callback_options_are_checked_when_it_is_made(tmp_path):
    with pytest.raises(ActindexError, match="unknown option 'model'"):
        actindex.ActindexCallback(tmp_path, model="x")
    with pytest.raises(ActindexError, match="--max-length must be at least 1"):
        actindex.ActindexCallback(tmp_path, max_length=0)
    with pytest.raises(ActindexError, match="needs out"):
        actindex.ActindexCallback()


def test_memorisation_warning_fires_on_a_model_that_memorised_its_rows_not_on_its_base(tmp_path, tokenizer):
    rows = chat_rows(6, seed=5)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", chat_rows(32, seed=99))
    trainer = trainer_for(tiny_llama(), tokenizer, rows, tmp_path / "trainer", steps=150, lr=2e-2, batch=6)
    callback = actindex.ActindexCallback(tmp_path / "ckpt", steps=[0], final=True, layers=LAYERS, heldout=heldout,
                                         save_weights=False)
    callback.attach(trainer)
    with pytest.warns(MemorisationWarning, match=r"memorised its rows: median response loss .* ratio") as caught:
        trainer.train()
    assert len(caught) == 1 and "step-000150" in str(caught[0].message)
    listed = json.loads((tmp_path / "ckpt" / "checkpoints.json").read_text())
    base, final = (c["memorisation"] for c in listed["checkpoints"])
    assert not base["memorised"] and base["ratio"] > 0.8
    assert final["memorised"] and final["ratio"] < MEMORISED_RATIO

    behavior = write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    step0 = actindex.Index.open(tmp_path / "ckpt" / "step-000000").use_model(wrap_model(tiny_llama(), tokenizer, "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemorisationWarning)
        assert step0.query(str(behavior), k=2).warnings == []
    last = actindex.Index.open(tmp_path / "ckpt" / "step-000150").use_model(wrap_model(trainer.model, tokenizer, "f"))
    with pytest.warns(MemorisationWarning):
        res = last.query(str(behavior), k=2)
    assert res.warnings and "correct/detect --target" in res.warnings[0]


def test_cli_build_and_query_print_one_warning_line(tmp_path, tokenizer, monkeypatch):
    rows = chat_rows(6, seed=5)
    trainer = trainer_for(tiny_llama(), tokenizer, rows, tmp_path / "trainer", steps=150, lr=2e-2, batch=6)
    trainer.train()
    model_dir = tmp_path / "memorised"
    trainer.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", chat_rows(32, seed=99))
    runner = CliRunner()
    res = runner.invoke(main, ["build", "--data", str(data), "--out", str(tmp_path / "idx"), "--model", str(model_dir),
                               "--layers", "1,2", "--heldout", str(heldout), "--quiet"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "ratio" in lines[0] and "index the checkpoint the fine-tune started from" in lines[0]
    behavior = write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    res = runner.invoke(main, ["query", "--index", str(tmp_path / "idx"), "--behavior", str(behavior),
                               "--behavior", str(behavior), "--format", "json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert sum(line.startswith("warning:") for line in res.stderr.splitlines()) == 1
    assert json.loads(res.stdout)[0]["warnings"]


def test_sft_trainer_with_lora_indexes_the_starting_checkpoint(tmp_path, tokenizer):
    trl = pytest.importorskip("trl")
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    rows = chat_rows(12, seed=4)
    model_dir = tmp_path / "base"
    tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=4,
                           use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                           disable_tqdm=True, max_length=64, seed=0)
    trainer = trl.SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    actindex.ActindexCallback(tmp_path / "ckpt", layers=LAYERS, grad=True, grad_k=2).attach(trainer)
    trainer.train()
    step0 = actindex.Index.open(tmp_path / "ckpt" / "step-000000")
    assert all(".lora_" in m for m in step0.manifest.projection.modules)  # the adapters are the tracked modules
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    actindex.build(data=str(data), out=str(tmp_path / "ref"), model=actindex.load_model(str(model_dir)),
                   layers=LAYERS, progress=False)
    for family in ("residual_change/1", "residual_change/2", "mean_activation_start/2"):  # LoRA starts at zero
        reference = actindex.Index.open(tmp_path / "ref").reader.vectors(family)
        # the base's vectors, stored in int4: equal up to a code that float rounding tips over (one step, m / 7)
        step = np.abs(reference).max(axis=1, keepdims=True) / 7
        assert (np.abs(step0.reader.vectors(family) - reference) <= 1.01 * step + 1e-6).all(), family
    assert step0.model().fingerprint == step0.manifest.model.fingerprint  # the adapter reloads onto its base


TORCHRUN_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_llama
from test_callback import trainer_for
from actindex.testing import chat_rows, make_tokenizer
import actindex
tokenizer = make_tokenizer()
trainer = trainer_for(tiny_llama(), tokenizer, chat_rows(21, seed=9), {out!r} + "/trainer", steps=1)
actindex.ActindexCallback({out!r} + "/ckpt", layers=[1, 2], part_size=4, save_weights=False).attach(trainer)
trainer.train()
"""


def test_torchrun_ranks_build_the_checkpoint_index_together(tmp_path, tokenizer):
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "ckpt" / "step-000000"
    assert len(actindex.Index.open(out).manifest.merged_from) == 2  # two shards, one merge
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(21, seed=9))
    actindex.build(data=str(data), out=str(tmp_path / "single"), model=wrap_model(tiny_llama(), tokenizer, "b"),
                   layers=LAYERS, progress=False)
    assert_same_index(tmp_path / "single", out)
