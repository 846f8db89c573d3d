"""Hostile training and behaviour data: every reader and writer of a data file agrees on what a row is,
a DatasetDict keeps its splits through filter, problems surface as one-line DataErrors before a model
loads (or naming the file and line when the tokenizer fails), persona specs fail cleanly, and a huge
row costs bounded work and storage. Nothing outside the output path is ever written."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import h5py
import pytest
from click.testing import CliRunner
from conftest import chat_rows, write_jsonl
from transformers import PreTrainedTokenizerFast

import actindex
from actindex.act.filter import filter_dataset
from actindex.cli import main
from actindex.core.encode import encode_row
from actindex.core.readers import iter_records, jsonl_lines, load_rows, scan_rows
from actindex.core.rows import CHARS_PER_TOKEN, RECORD_STRING_CAP, capped_record, normalise_record
from actindex.errors import DataError
from actindex.query.behaviors import load_behavior, load_persona

build_module = importlib.import_module("actindex.index.build")  # the module (``actindex.build`` is the function)
PAIRS = [
    {"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
    {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"},
]
#: lines that hold no row by the loader's rule (str.isspace): each must be skipped by the filter too
BLANK_LINES = ["\u00a0", "\x1f", "\x1c", "\x0b", "\x0c", "\u2028", "\u3000", "\u0085", " \u00a0\t", ""]


def snapshot(root: Path, exclude: tuple[Path, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), leaving out ``exclude`` and what is under it."""
    out = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(path == e or e in path.parents for e in exclude):
            continue
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------
# One rule for "is this line a row"
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", BLANK_LINES)
def test_loader_and_line_iterator_agree_on_rows(blank: str, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = chat_rows(3)
    data.write_bytes((blank + "\n" + json.dumps(rows[0]) + "\n" + blank + "\n" + "\n".join(map(json.dumps, rows[1:]))
                      + "\n").encode("utf-8"))
    assert [n for n, _, is_row in jsonl_lines(data) if is_row] == [n for n, _ in iter_records(data)] == [2, 4, 5]
    assert [r.id for r in load_rows(data)] == ["r0", "r1", "r2"]


def test_filter_with_blank_looking_lines_removes_the_ranked_rows(llama, tmp_path: Path) -> None:
    """U+00A0-only and U+001F-only lines (and other str.isspace lines) before and between the rows: the
    sidecar names exactly the rows missing from the output, and every kept line is byte-identical."""
    rows = chat_rows(20, seed=3)
    lines = ["\u00a0", "\x1f"] + BLANK_LINES
    for i, row in enumerate(rows):
        lines.append(json.dumps(row, ensure_ascii=i % 2 == 0))
        if i % 4 == 1:
            lines.append(BLANK_LINES[i % len(BLANK_LINES)])
    data = tmp_path / "train.jsonl"
    data.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    behavior = write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1, 2], model=llama, progress=False)
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    out = tmp_path / "clean.jsonl"
    sidecar = tmp_path / "clean.jsonl.removed.jsonl"
    kept_out = (out, sidecar, tmp_path / "idx" / "cache")  # the outputs, and the index's own behaviour cache
    before = snapshot(tmp_path, kept_out)
    res = filter_dataset(idx, behavior=str(behavior), remove_top=5, out=out, method="residual-change", layer=2)
    assert snapshot(tmp_path, kept_out) == before
    removed = [json.loads(x)["id"] for x in sidecar.read_text(encoding="utf-8").splitlines()]
    kept_ids = [json.loads(line)["id"] for line in out.read_bytes().splitlines() if line.decode().strip()]
    assert len(removed) == 5 and res.kept == 15 and len(kept_ids) == 15
    assert set(removed) == {r["id"] for r in rows} - set(kept_ids)
    assert [r["id"] for r in res.removed] == removed
    # the output is the input minus exactly the removed rows' lines, byte for byte
    raw = data.read_bytes().splitlines(keepends=True)
    gone = {line for line in raw if line.decode().strip() and json.loads(line)["id"] in removed}
    assert out.read_bytes() == b"".join(line for line in raw if line not in gone)


# --------------------------------------------------------------------------------------------
# Splits of a save_to_disk DatasetDict
# --------------------------------------------------------------------------------------------


def _dataset_dict(path: Path, splits: dict[str, list[dict]]) -> Path:
    import datasets

    flat = {name: [{"id": r["id"], "prompt": r["messages"][0]["content"], "response": r["messages"][1]["content"]}
                   for r in rows] for name, rows in splits.items()}
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in flat.items()}).save_to_disk(
        str(path))
    return path


def test_filter_keeps_every_split_of_a_dataset_dict(llama, tmp_path: Path) -> None:
    import datasets

    train, test = chat_rows(16, seed=1), [dict(r, id=f"t{i}") for i, r in enumerate(chat_rows(5, seed=2))]
    data = _dataset_dict(tmp_path / "ds", {"train": train, "test": test})
    behavior = write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    manifest = actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=llama, progress=False)
    assert manifest.data[0].split == "train" and manifest.to_dict()["data"]["split"] == "train"
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    assert idx.ids() == [r["id"] for r in train]
    out = tmp_path / "clean"
    before = snapshot(tmp_path, (out, tmp_path / "clean.removed.jsonl", tmp_path / "idx" / "cache"))
    res = filter_dataset(idx, behavior=str(behavior), remove_top=4, out=out, method="residual-change")
    assert snapshot(tmp_path, (out, tmp_path / "clean.removed.jsonl", tmp_path / "idx" / "cache")) == before
    assert (out / "dataset_dict.json").exists()
    back = datasets.load_from_disk(str(out))
    assert isinstance(back, datasets.DatasetDict) and set(back) == {"train", "test"}
    removed = {r["id"] for r in res.removed}
    assert len(removed) == 4 and back["train"]["id"] == [r["id"] for r in train if r["id"] not in removed]
    assert back["test"].to_list() == datasets.load_from_disk(str(data))["test"].to_list()


def test_split_is_chosen_explicitly(llama, tmp_path: Path) -> None:
    """No `train` split and several others: a one-line error asking for --split; a named split is
    indexed, recorded, and the one filter filters."""
    import datasets

    val, test = chat_rows(12, seed=4), [dict(r, id=f"t{i}") for i, r in enumerate(chat_rows(4, seed=5))]
    data = _dataset_dict(tmp_path / "ds", {"validation": val, "test": test})
    with pytest.raises(DataError) as info:
        scan_rows(data)
    assert str(info.value) == f"{data}: has splits validation, test and none is 'train': choose one with --split"
    with pytest.raises(DataError, match=r"has no split 'nope' \(splits: validation, test\)"):
        load_rows(data, split="nope")
    with pytest.raises(DataError, match="drop --split"):
        load_rows(write_jsonl(tmp_path / "t.jsonl", val), split="train")
    result = CliRunner().invoke(main, ["build", "--data", str(data), "--out", str(tmp_path / "x"), "--model",
                                       "/nonexistent", "--quiet"])
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {info.value}"]
    manifest = actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=llama, progress=False,
                              split="validation")
    assert manifest.data[0].split == "validation" and manifest.build.split == "validation"
    idx = actindex.Index.open(tmp_path / "idx").use_model(llama)
    assert idx.ids() == [r["id"] for r in val]
    behavior = write_jsonl(tmp_path / "behavior.jsonl", PAIRS)
    res = filter_dataset(idx, behavior=str(behavior), remove_top=3, out=tmp_path / "clean", method="residual-change")
    back = datasets.load_from_disk(str(tmp_path / "clean"))
    removed = {r["id"] for r in res.removed}
    assert back["validation"]["id"] == [r["id"] for r in val if r["id"] not in removed]
    assert back["test"]["id"] == [r["id"] for r in test]
    # a single split: chosen without being asked, and recorded
    single = _dataset_dict(tmp_path / "one", {"validation": val})
    assert scan_rows(single).split == "validation"


# --------------------------------------------------------------------------------------------
# Row problems before any model loads; tokenizer failures name the file and line
# --------------------------------------------------------------------------------------------

BAD_CHATS = [
    ([{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "yes"}], "messages[0].role"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "hello"}], "messages[1].role"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "messages[1].role"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "messages[1].role"),
    ([{"role": "system", "content": "s"}, {"role": "system", "content": "t"}, {"role": "user", "content": "a"},
      {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}], "messages[4].role"),
]


@pytest.mark.parametrize(("messages", "field"), BAD_CHATS)
def test_turn_order_fails_before_the_model_loads(messages: list, field: str, tmp_path: Path, monkeypatch) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [chat_rows(1)[0], {"id": "bad", "messages": messages}])

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not load for a bad row")

    monkeypatch.setattr(build_module, "load_model", no_model)
    with pytest.raises(DataError) as info:
        actindex.build(data=str(data), out=str(tmp_path / "idx"), progress=False)
    assert str(info.value).startswith(f"{data}:2: field '{field}': ")
    result = CliRunner().invoke(main, ["build", "--data", str(data), "--out", str(tmp_path / "idx"), "--quiet"])
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {info.value}"]
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").iterdir())


def test_system_turns_then_alternating_turns_are_accepted() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "system", "content": "t"},
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    assert normalise_record(Path("x"), 1, 0, {"messages": messages}).messages == messages


def test_tokenizer_failure_is_a_data_error_naming_file_and_line(llama, tmp_path: Path, monkeypatch) -> None:
    rows = chat_rows(6)
    rows[3]["messages"][1]["content"] = "explode now"
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    original = PreTrainedTokenizerFast.apply_chat_template

    def fragile(self: Any, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        if any("explode" in m["content"] for m in conversation):
            raise ValueError("the template cannot render this\nsecond line")
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "apply_chat_template", fragile)
    expected = (f"{data}:4: field 'messages': the tokenizer failed on this row "
                "(ValueError: the template cannot render this)")
    row = load_rows(data)[3]
    with pytest.raises(DataError) as info:
        encode_row(llama.tokenizer, row, 64)
    assert str(info.value) == expected
    with pytest.raises(DataError) as info:
        actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False)
    assert str(info.value) == expected
    monkeypatch.setattr(build_module, "load_model", lambda *a, **k: llama)
    result = CliRunner().invoke(main, ["build", "--data", str(data), "--out", str(tmp_path / "idx2"), "--layers", "1",
                                       "--quiet"])
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {expected}"]
    assert not (tmp_path / "idx2" / "manifest.json").exists()


# --------------------------------------------------------------------------------------------
# Persona specs
# --------------------------------------------------------------------------------------------

INSTRUCTION = [{"pos": "you are false", "neg": "you are true"}]
RESPONSE = {"question": "q ?", "pos": "p", "neg": "n"}
PERSONA_CASES = [
    ("missing-pos", {"instruction": INSTRUCTION, "questions": ["q ?"],
                     "responses": [RESPONSE, RESPONSE, {"question": "q ?", "neg": "n"}]},
     "{path}: field 'responses[2].pos': is missing"),
    ("responses-string", {"instruction": INSTRUCTION, "questions": ["q ?"], "responses": "p"},
     "{path}: field 'responses': expected a list of {question, pos, neg} objects (or no field, to generate them), "
     "got string"),
    ("response-not-object", {"instruction": INSTRUCTION, "questions": ["q ?"], "responses": [["p", "n"]]},
     "{path}: field 'responses[0]': expected an object with 'question', 'pos' and 'neg', got array"),
    ("response-pos-integer", {"instruction": INSTRUCTION, "questions": ["q ?"],
                              "responses": [dict(RESPONSE, pos=3)]},
     "{path}: field 'responses[0].pos': expected a non-empty string, got integer"),
    ("response-system-missing", {"instruction": INSTRUCTION * 2, "questions": ["q ?"], "responses": [RESPONSE]},
     "{path}: field 'responses[0].pos_system': is missing (it names the system prompt; needed when 'instruction' "
     "has several pairs)"),
    ("questions-missing", {"instruction": INSTRUCTION},
     "{path}: field 'questions': expected a non-empty list of question strings ('extract_questions', the "
     "persona_vectors name, is accepted too); is missing"),
    ("questions-string", {"instruction": INSTRUCTION, "questions": "q ?"},
     "{path}: field 'questions': expected a non-empty list of question strings ('extract_questions', the "
     "persona_vectors name, is accepted too); got string"),
    ("extract-questions-empty", {"instruction": INSTRUCTION, "extract_questions": []},
     "{path}: field 'extract_questions': expected a non-empty list of question strings; got an empty array"),
    ("question-blank", {"instruction": INSTRUCTION, "questions": ["q ?", " "]},
     "{path}: field 'questions[1]': expected a non-empty string, got a blank string"),
    ("top-level-array", [INSTRUCTION], "{path}: a persona spec must be a JSON object, got array"),
    ("instruction-missing", {"questions": ["q ?"]},
     "{path}: field 'instruction': expected a non-empty list of {pos, neg} objects"),
]
PERSONA_BYTES = [
    ("latin-1", '{"instruction": [{"pos": "tu es méchant", "neg": "tu es gentil"}], "questions": ["q ?"]}'
     .encode("latin-1"), "{path}:1: not valid UTF-8 (byte 0xe9); save it as UTF-8"),
    ("nested", b"[" * 100_000 + b"]" * 100_000, "{path}: malformed JSON (nested too deeply)"),
    ("malformed", b'{"instruction": [\n{"pos": "a", "neg": "b"},\n]}', "{path}:3: malformed JSON (Expecting value)"),
    ("huge-number", b'{"instruction": ' + b"9" * 5000 + b"}", "{path}: malformed JSON (a number has too many digits)"),
    ("bom", b'\xef\xbb\xbf{"instruction": []}',
     "{path}:1: the file starts with a byte order mark (BOM); save it as UTF-8 without BOM"),
    ("gzip", gzip.compress(b'{"instruction": []}', mtime=0),
     "{path}: is gzip-compressed; compressed files are not supported: decompress it first"),
]


@pytest.mark.parametrize(("name", "content", "expected"),
                         [(n, json.dumps(v).encode(), e) for n, v, e in PERSONA_CASES] + PERSONA_BYTES,
                         ids=[c[0] for c in PERSONA_CASES + PERSONA_BYTES])
def test_persona_problems_are_one_line_data_errors(name: str, content: bytes, expected: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_persona(path)
    assert str(info.value) == expected.replace("{path}", str(path))
    with pytest.raises(DataError):
        load_behavior(str(path))


def test_persona_accepts_extract_questions_and_fills_the_only_system_prompts(tmp_path: Path) -> None:
    path = tmp_path / "persona.json"
    path.write_text(json.dumps({"instruction": INSTRUCTION, "extract_questions": ["q ?"], "responses": [RESPONSE]}))
    spec = load_persona(path)
    assert spec.questions == ["q ?"]
    assert spec.responses == [dict(RESPONSE, pos_system="you are false", neg_system="you are true")]


def test_cli_query_with_a_bad_persona_prints_one_line(llama, tmp_path: Path, monkeypatch) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[2], model=llama, progress=False,
                   plain_mean=True)  # persona's family
    monkeypatch.setattr(actindex.Index, "model", lambda self, *a, **k: llama)
    runner = CliRunner()
    for name, value, expected in PERSONA_CASES[:3]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(value))
        result = runner.invoke(main, ["query", "--index", str(tmp_path / "idx"), "--behavior", str(path),
                                      "--method", "persona", "--layer", "2"])
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"error: {expected.replace('{path}', str(path))}"]


# --------------------------------------------------------------------------------------------
# Huge rows: bounded tokenisation, capped stored record
# --------------------------------------------------------------------------------------------


#: characters a chat template adds around the contents (the test template's role and end markers)
TEMPLATE_CHARS = 100


class Recorder:
    """Records the longest text the tokenizer is given (``__call__``, which also receives rendered
    chats) and the longest chat (``apply_chat_template``, total characters of its contents)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.longest = 0
        call, template = PreTrainedTokenizerFast.__call__, PreTrainedTokenizerFast.apply_chat_template
        recorder = self

        def recorded_call(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
            recorder.longest = max(recorder.longest, len(text) if isinstance(text, str) else 0)
            return call(self, text, *args, **kwargs)

        def recorded_template(self: Any, conversation: Any, *args: Any, **kwargs: Any) -> Any:
            recorder.longest = max(recorder.longest, sum(len(m["content"]) for m in conversation))
            return template(self, conversation, *args, **kwargs)

        monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", recorded_call)
        monkeypatch.setattr(PreTrainedTokenizerFast, "apply_chat_template", recorded_template)


def _words(n: int, seed: int = 0) -> str:
    import random

    from conftest import WORDS

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.mark.parametrize("shape", ["text", "chat", "two-long-turns"])
def test_huge_row_is_encoded_with_bounded_work(shape: str, tokenizer, monkeypatch) -> None:
    max_length = 24
    huge = _words(800_000)  # ~3.5 MB
    record = {"text": huge} if shape == "text" else {"messages": [
        {"role": "user", "content": "what ?" if shape == "chat" else huge},
        {"role": "assistant", "content": huge}]}
    row = normalise_record(Path("big.jsonl"), 1, 0, record)
    # the reference: the same row cut by hand to a length whose whole encoding is cheap, encoded whole
    small = {"text": huge[:20_000]} if shape == "text" else {"messages": [
        dict(m, content=m["content"][:20_000]) for m in record["messages"]]}
    reference = encode_row(tokenizer, normalise_record(Path("big.jsonl"), 1, 0, small))
    recorder = Recorder(monkeypatch)
    enc = encode_row(tokenizer, row, max_length)
    assert recorder.longest <= 2 * CHARS_PER_TOKEN * max_length + TEMPLATE_CHARS
    assert enc.input_ids == reference.input_ids[:max_length] and enc.loss_mask == reference.loss_mask[:max_length]
    assert enc.truncated and len(reference.input_ids) > max_length


def test_a_prefix_with_too_few_tokens_falls_back_to_the_whole_text(tokenizer) -> None:
    """One 5000-character word is one token: the prefix holds too few, so the whole text is encoded."""
    text = "x" * 5000 + " " + _words(200)
    row = normalise_record(Path("t.jsonl"), 1, 0, {"text": text})
    full = tokenizer(text)["input_ids"]
    enc = encode_row(tokenizer, row, 16)
    assert enc.input_ids == full[:16] and enc.truncated


def test_normal_rows_encode_as_before(tokenizer) -> None:
    """Capping and stopping after max_length tokens change nothing: the result is the whole encoding, truncated."""
    records = chat_rows(6, seed=9)
    multi = [{"messages": [{"role": "system", "content": "you are true"}] + a["messages"] + b["messages"]}
             for a, b in zip(records, records[1:])]
    texts = [{"text": _words(n, seed=n)} for n in (3, 40, 700)]
    for record in records + multi + texts:
        row = normalise_record(Path("t.jsonl"), 1, 0, record)
        whole = encode_row(tokenizer, row)
        for max_length in (4, 9, 20, 512):
            for content_only in (False, True):
                full = encode_row(tokenizer, row, content_only=content_only)
                cut = encode_row(tokenizer, row, max_length, content_only=content_only)
                assert cut.input_ids == whole.input_ids[:max_length] and cut.loss_mask == full.loss_mask[:max_length]
                assert cut.truncated == (len(whole.input_ids) > max_length)


def test_capped_record_keeps_a_valid_row() -> None:
    long = "a " * RECORD_STRING_CAP
    record = {"id": "x" * (RECORD_STRING_CAP + 5), "messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": long}], "n": 3}
    capped = capped_record(record)
    content = capped["messages"][1]["content"]
    assert capped["id"] == record["id"] and capped["n"] == 3
    assert content.startswith(long[:RECORD_STRING_CAP]) and content.endswith(
        f" [actindex: cut {len(long) - RECORD_STRING_CAP} of {len(long)} characters]")
    assert normalise_record(Path("<index>"), 0, 0, capped).snippet()
    assert capped_record({"text": "short"}) == {"text": "short"}


def test_huge_row_is_stored_capped(llama, tmp_path: Path, monkeypatch) -> None:
    rows = chat_rows(6)
    huge = _words(600_000, seed=1)  # ~2.6 MB
    rows[2] = {"id": "huge", "prompt": "what ?", "response": huge, "label": "x" * 10}
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    recorder = Recorder(monkeypatch)
    actindex.build(data=str(data), out=str(tmp_path / "idx"), layers=[1], model=llama, progress=False,
                   max_length=16)
    assert recorder.longest <= 2 * CHARS_PER_TOKEN * 16 + TEMPLATE_CHARS
    with h5py.File(tmp_path / "idx" / "vectors.h5", "r") as f:
        stored = [json.loads(v) for v in f["record"][()]]
        assert bool(f["truncated"][2])
    assert len(json.dumps(stored[2])) < RECORD_STRING_CAP + 1000
    assert stored[2]["response"].startswith(huge[:RECORD_STRING_CAP]) and "[actindex: cut " in stored[2]["response"]
    assert stored[2]["label"] == "x" * 10 and stored[0] == rows[0]
    idx = actindex.Index.open(tmp_path / "idx")
    assert idx.ids()[2] == "huge"
    assert normalise_record(Path("<index>"), 0, 0, idx.records([2])[0]).snippet().startswith("what ? =>")
