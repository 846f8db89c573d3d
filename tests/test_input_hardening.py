"""Inputs that used to end in raw exceptions end in one clear line: exit status 2 on the command line, a 4xx with
a one-line ``detail`` over HTTP (a live server on 127.0.0.1 driven by httpx, as in test_serve.py).

Deeply nested JSON, invalid UTF-8 and lone surrogates in ``--example``/``--generate`` and HTTP bodies;
``/search`` values beyond float32; row ids with ``/``; a behaviour given as a pipe; ``cache clear --behavior ''``;
an id-less file appended to an id-less index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, live, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.jsontext import MAX_DEPTH, JSONTextError, json_depth, loads
from actindex.core.models import load_model
from actindex.errors import DataError
from actindex.index.search import normalise
from actindex.serve.app import create_app, plainly_safe
from actindex.serve.config import ServeConfig

PAIRS = [{"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
         {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"}]
FAMILY = "residual_change/2"
SLASHED = "shard/7/row 3"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model_dir, one_torch_thread) -> Path:
    tmp = tmp_path_factory.mktemp("hardening")
    rows = chat_rows(16, seed=8)
    rows[5]["id"] = SLASHED
    write_jsonl(tmp / "pairs.jsonl", PAIRS)
    actindex.build(data=str(write_jsonl(tmp / "train.jsonl", rows)), out=str(tmp / "idx"), layers=[1, 2],
                   model=load_model(str(model_dir)), progress=False)
    return tmp / "idx"


@pytest.fixture(scope="module")
def url(index_dir, model_dir):
    idx = actindex.Index.open(index_dir, cache=False).use_model(load_model(str(model_dir)))
    config = ServeConfig(port=0, workers=2)
    with live(create_app(idx, config), config) as base:
        yield base


def one_error_line(res) -> str:
    """The one ``error:`` line of a refused command (exit status 2, no traceback)."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def nested(depth: int) -> str:
    return '{"prompt": "is it true ?", "response": ' + "[" * depth + "]" * depth + "}"


# ---- JSON nesting -------------------------------------------------------------------------------


def test_depth_is_counted_outside_strings():
    assert json_depth('{"a": [1, {"b": "[[[[{{{"}], "c": "\\"]]"}') == 3
    assert json_depth(b"[[[]], [[[]]]]") == 4 and json_depth('"[[["') == 0 and json_depth("7") == 0


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 100_000])
def test_deeply_nested_example_is_one_line(index_dir, depth):
    res = CliRunner().invoke(main, ["query", "--index", str(index_dir), "--example", nested(depth), "--quiet"])
    line = one_error_line(res)
    assert "--example: JSON nested" in line and f"at most {MAX_DEPTH}" in line


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 100_000])
def test_deeply_nested_body_is_422(url, depth):
    body = '{"example": ' + nested(depth) + ', "k": 2}'
    response = httpx.post(url + "query", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
    assert "nested" in response.json()["detail"] and "\n" not in response.json()["detail"]


# ---- invalid UTF-8 and lone surrogates ----------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--generate", "why \udcff ?", "--generate: not valid Unicode"),  # argv bytes not UTF-8, as Python reads them
    ("--example", "is it \ud800 => yes", "--example: not valid Unicode"),
    ("--example", '{"prompt": "is it \\ud800", "response": "yes"}', "--example: prompt: not valid Unicode"),
    ("--example", '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\udfff"}]}',
     "--example: messages[1].content: not valid Unicode"),
    ("--generate", '{"prompt": "\\udc80 why"}', "--generate: prompt: not valid Unicode"),
])
def test_text_that_is_not_unicode_is_one_line(index_dir, option, value, message):
    res = CliRunner().invoke(main, ["query", "--index", str(index_dir), option, value, "--quiet"])
    assert message in one_error_line(res)


def test_an_argument_with_invalid_utf8_bytes_is_one_line(index_dir):
    """A real process given the bytes 0xff 0xfe in --generate (what a shell passes from a Latin-1 file)."""
    env = {**os.environ, "PYTHONPATH": str(Path(actindex.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "actindex", "query", "--index", str(index_dir), "--generate",
                           b"why \xff\xfe ?", "--quiet"], capture_output=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().strip().splitlines() == ["error: --generate: not valid Unicode (a lone surrogate: "
                                                         "a \\ud800-\\udfff escape, or bytes that are not UTF-8)"]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"example": {"prompt": "is it \\ud800", "response": "yes"}}', "example.prompt: not valid Unicode"),
    (b'{"generate": ["fine", "\\udc00 not"]}', "generate[1]: not valid Unicode"),
    (b'{"pairs": [{"prompt": "a", "treatment": "b\\ud83d"}]}', "pairs[0].treatment: not valid Unicode"),
    (b'{"generate": "why \xff ?"}', "body: not valid UTF-8 (byte 0xff"),
])
def test_a_body_that_is_not_unicode_is_422(url, body, message):
    response = httpx.post(url + "query", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize("body, unparsed", [
    (b'{"vector": [1.0, 2.5], "k": 3}', True), ('{"generate": "caf\u00e9 \u00fc"}'.encode(), True),
    (b'{"a": [1, 2', True), (b"", True), (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, True),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), False), (b'{"g": "\\ud800"}', False),
    (b'{"g": "\\\\ud800"}', False), (b'{"g": "\\ud83d\\ude00"}', False), (b'{"g": "\xff"}', False),
])
def test_a_body_passed_unparsed_is_one_the_check_would_pass(body, unparsed):
    """The server parses a body to check it only when it could fail the check: whatever it lets through unparsed,
    the check (:func:`loads`) passes, or finds only malformed JSON (FastAPI's own 422 names where)."""
    try:
        loads(body)
        refused = False
    except JSONTextError as err:
        refused = not err.malformed
    assert plainly_safe(body) == unparsed and not (unparsed and refused)


# ---- /search values beyond float32 --------------------------------------------------------------


def test_search_values_beyond_float32_are_422_and_large_ones_search_right(url, index_dir):
    idx = actindex.Index.open(index_dir)
    dim = idx.families[FAMILY].dim
    for value in (1e39, 1e300, -3.5e38):
        response = httpx.post(url + "search", json={"vector": [value] + [1.0] * (dim - 1), "family": FAMILY})
        assert response.status_code == 422 and "float32" in response.json()["detail"], response.text
    # finite float32 values whose squares overflow float32: the cosines of their direction, exactly
    direction = np.random.default_rng(1).standard_normal(dim)
    vector = direction / np.abs(direction).max() * 3e38
    found = httpx.post(url + "search", json={"vector": vector.tolist(), "family": FAMILY, "k": len(idx)}).json()
    cosines = normalise(idx.reader.vectors(FAMILY)).astype(np.float64) @ (direction / np.linalg.norm(direction))
    order = np.argsort(-cosines, kind="stable")
    assert found["rows"] == order.tolist()
    np.testing.assert_allclose(found["scores"], cosines[order], atol=1e-5)
    assert np.abs(found["scores"]).max() > 0.1
    # the Python search takes the same vector, and any finite float64 one, by its direction
    scores, rows = idx.search(vector * 1e100, k=len(idx), family=FAMILY)
    assert rows.tolist() == order.tolist()
    np.testing.assert_allclose(scores, cosines[order], atol=1e-5)
    with pytest.raises(actindex.ActindexError, match="finite"):
        idx.search(np.full(dim, np.inf), family=FAMILY)


# ---- row ids, pipes, the cache ------------------------------------------------------------------


def test_a_row_id_with_slashes_is_fetched(url):
    response = httpx.get(url + "rows/" + SLASHED)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == SLASHED and response.json()["row"] == 5
    assert httpx.get(url + "rows/shard/7").status_code == 404


def test_a_behaviour_given_as_a_pipe_is_read(index_dir, model_dir):
    """--behavior <(cat pairs.jsonl): a pipe, read once, ranks as the file does."""
    pairs = index_dir.parent / "pairs.jsonl"
    base = ["query", "--index", str(index_dir), "--format", "json", "--no-cache", "--quiet", "--top-k", "4"]
    want = CliRunner().invoke(main, [*base, "--behavior", str(pairs)])
    assert want.exit_code == 0, want.output
    fifo = index_dir.parent / "pipe.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(pairs.read_bytes()), daemon=True)
    writer.start()
    got = CliRunner().invoke(main, [*base, "--behavior", str(fifo)])
    writer.join(timeout=30)
    assert got.exit_code == 0, got.output
    top = [[h["id"] for h in r["top"]] for r in json.loads(got.output)]
    assert top == [[h["id"] for h in r["top"]] for r in json.loads(want.output)]


def test_cache_clear_with_an_empty_behaviour_is_refused(index_dir):
    runner = CliRunner()
    done = runner.invoke(main, ["query", "--index", str(index_dir), "--behavior", str(index_dir.parent / "pairs.jsonl"),
                                "--quiet"])
    assert done.exit_code == 0, done.output
    listed = runner.invoke(main, ["cache", "list", str(index_dir)]).output
    assert "pairs" in listed
    for empty in ("", "  "):
        assert "--behavior: expected a behaviour name" in one_error_line(
            runner.invoke(main, ["cache", "clear", str(index_dir), "--behavior", empty]))
    assert runner.invoke(main, ["cache", "list", str(index_dir)]).output == listed


# ---- appending rows without ids ------------------------------------------------------------------


def _without_ids(n: int, seed: int) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "id"} for row in chat_rows(n, seed=seed)]


def test_an_id_less_file_appends_to_an_id_less_index(tmp_path, model_dir):
    lm = load_model(str(model_dir))
    common = {"layers": [1], "model": lm, "progress": False}
    actindex.build(data=str(write_jsonl(tmp_path / "a.jsonl", _without_ids(4, 1))), out=str(tmp_path / "idx"),
                   **common)
    for name, n in (("b", 3), ("c", 2)):
        actindex.build(data=str(write_jsonl(tmp_path / f"{name}.jsonl", _without_ids(n, ord(name)))),
                       out=str(tmp_path / "idx"), append=True, **common)
    idx = actindex.Index.open(tmp_path / "idx")
    assert idx.reader.ids() == [f"row-{i}" for i in range(9)]
    assert idx.reader.records([4])[0] == _without_ids(3, ord("b"))[0]
    # a generated id that an explicit id of the index already holds: named as generated
    actindex.build(data=str(write_jsonl(tmp_path / "d.jsonl", [{**chat_rows(1)[0], "id": "row-2"}])),
                   out=str(tmp_path / "ids"), **common)
    with pytest.raises(DataError) as info:
        actindex.build(data=str(write_jsonl(tmp_path / "e.jsonl", _without_ids(3, 5))), out=str(tmp_path / "ids"),
                       append=True, **common)
    assert str(info.value) == (f"{tmp_path / 'e.jsonl'}:2: the row has no 'id' field and its generated id 'row-2' is "
                               f"already in {tmp_path / 'ids'}; give the rows ids")
