"""actindex serve: a live server on 127.0.0.1 driven over HTTP (httpx). /query answers what Index.query answers;
errors are 4xx with one line; a concurrent burst has no errors and /health (and cached queries, and searches)
answer while a model pass runs; nothing but the behaviour cache is written; the CLI says where it listens; the
browser page, rendered by headless Chromium, runs a query from its URL and shows the ranked rows. Filters (where)
and pages (offset) answer what brute force over the matching rows answers; rows come in batches; a token guards
every endpoint that reads the index, CORS preflights pass for the origins allowed, a root path prefixes every link;
/docs and /redoc render from the package's own assets with the network cut (and a wheel ships them); the OpenAPI
schema names every answer and error; the model's answer of a generate query is in the JSON, on the page and in the
cache listing; a damaged cache entry is listed as damaged; answers carry no host path."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, live, tiny_llama, write_jsonl

import actindex
from actindex.cli import main
from actindex.core.models import load_model
from actindex.index.search import normalise
from actindex.query.behaviors import load_behavior
from actindex.query.cache import BehaviorCache
from actindex.serve.app import create_app
from actindex.serve.config import ServeConfig
from actindex.serve.memo import NOTE
from actindex.serve.responses import InfoOut, QueryOut, RowsOut, SearchOut

BEHAVIOR = "sycophancy"
PAIRS = [{"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
         {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"}]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    rows = chat_rows(40, seed=6)
    for i, row in enumerate(rows):
        row["label"] = "ab"[i % 2]
    rows[13] = {"id": "planted", "prompt": PAIRS[0]["prompt"], "response": PAIRS[0]["treatment"]}
    actindex.build(data=str(write_jsonl(tmp / "train.jsonl", rows)), out=str(tmp / "idx"), layers=[1, 2],
                   model=load_model(str(model_dir)), progress=False, full_width=True)  # every method's families
    return tmp / "idx"


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file of the index but its behaviour cache."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "cache"}


@pytest.fixture(scope="module")
def server(index_dir, model_dir):
    """A live server on a free port of 127.0.0.1; checks at the end that the index's own files were not written."""
    before = digests(index_dir)
    idx = actindex.Index.open(index_dir).use_model(load_model(str(model_dir)))
    config = ServeConfig(port=0, workers=8)
    with live(create_app(idx, config), config) as url:
        assert url.startswith("http://127.0.0.1:")
        yield url, idx
    assert digests(index_dir) == before


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server[0], timeout=120) as c:
        yield c


def same(got: dict, want: dict) -> None:
    for side in ("top", "bottom"):
        assert [h["id"] for h in got[side]] == [h["id"] for h in want[side]], side
        np.testing.assert_allclose([h["score"] for h in got[side]], [h["score"] for h in want[side]], rtol=1e-6)
    assert {k: got[k] for k in ("behavior", "method", "family", "members")} == \
           {k: want[k] for k in ("behavior", "method", "family", "members")}


def test_query_answers_what_index_query_answers(client, index_dir, model_dir):
    local = actindex.Index.open(index_dir, cache=False).use_model(load_model(str(model_dir)))
    cases = [({"behavior": BEHAVIOR, "k": 5, "bottom_k": 2}, (BEHAVIOR,), {"k": 5, "bottom_k": 2}),
             ({"behavior": BEHAVIOR, "method": "residual-difference", "layer": 1, "k": 4}, (BEHAVIOR,),
              {"method": "residual-difference", "layer": 1, "k": 4}),
             ({"example": {"prompt": PAIRS[0]["prompt"], "response": PAIRS[0]["treatment"]}, "k": 3}, (),
              {"example": f"{PAIRS[0]['prompt']} => {PAIRS[0]['treatment']}", "k": 3})]
    for body, args, options in cases:
        response = client.post("/query", json=body)
        assert response.status_code == 200, response.text
        QueryOut.model_validate(response.json())  # the schema the docs show is the answer's
        same(response.json(), local.query(*args, **options).to_dict())
    first = client.post("/query", json={"pairs": PAIRS, "name": "symbols", "k": 3}).json()
    assert first["behavior"] == "symbols" and first["top"][0]["id"] == "planted" and not first["cached"]
    again = client.post("/query", json={"pairs": PAIRS, "name": "symbols", "k": 3}).json()
    assert again["cached"] and [h["id"] for h in again["top"]] == [h["id"] for h in first["top"]]
    assert set(first["top"][0]) >= {"rank", "row", "id", "score", "snippet", "record", "calibrated", "cosine"}


def test_search_rows_info_and_behaviors(client, server):
    idx = server[1]
    vector = idx.reader.vectors("residual_change/2", [13])[0]
    found = client.post("/search", json={"vector": vector.tolist(), "family": "residual_change/2", "k": 3}).json()
    SearchOut.model_validate(found)
    scores, rows = idx.search(vector, 3, "residual_change/2")
    assert found["rows"] == rows.tolist() and found["ids"][0] == "planted"
    np.testing.assert_allclose(found["scores"], scores, rtol=1e-6)
    row = client.get("/rows/planted").json()
    assert row["record"]["response"] == PAIRS[0]["treatment"] and row["row"] == 13 and row["line"] == 14
    assert row["n_tokens"] == int(idx.reader.table.n_tokens[13]) and row["file"] == "train.jsonl"  # not the host's path
    info = client.get("/info").json()
    InfoOut.model_validate(info)
    assert info["families"] == idx.manifest.to_dict()["families"] and info["rows"] == 40
    assert info["data"]["path"] == "train.jsonl" and str(idx.root.parent) not in json.dumps(info)
    behaviors = {b["name"]: b for b in client.get("/behaviors").json()}
    assert behaviors[BEHAVIOR]["cached"] and not behaviors["evil"]["cached"]
    assert client.get("/health").json()["status"] == "ok"
    docs = client.get("/openapi.json").json()
    method = docs["components"]["schemas"]["QueryRequest"]["properties"]["method"]
    assert "ensemble" in method["anyOf"][0]["enum"] and client.get("/docs").status_code == 200


def test_an_identical_request_is_answered_from_memory_until_its_cache_entry_changes(client, server, index_dir):
    pairs = [dict(PAIRS[1], treatment="yes it is so false")]  # pairs no other test asks
    body = {"pairs": pairs, "name": "remembered", "k": 4}
    first = client.post("/query", json=body).json()  # a model pass: not remembered
    second = client.post("/query", json=body).json()  # from the behaviour cache: remembered
    third = client.post("/query", json=body).json()
    assert not first["cached"] and "memory" not in second["timings"] and set(third["timings"]) == {"memory"}
    assert third["cached"] and third["notes"][-1] == NOTE and NOTE not in second["notes"]
    same(third, second)
    other = client.post("/query", json={**body, "k": 3}).json()
    assert "memory" not in other["timings"] and len(other["top"]) == 3
    assert BehaviorCache(index_dir, server[1].manifest).clear("remembered") == 1  # the entry changes
    again = client.post("/query", json=body).json()
    assert "memory" not in again["timings"] and not again["cached"]  # computed again (its pair vectors in memory)
    same(again, second)


def test_a_damaged_cache_entry_is_listed_as_damaged_not_cached(client, server, index_dir):
    client.post("/query", json={"behavior": BEHAVIOR, "k": 3})  # cached
    cache = BehaviorCache(index_dir, server[1].manifest)
    entry = cache.path(cache.key(load_behavior(BEHAVIOR)))
    whole = entry.read_bytes()
    try:
        damaged = entry.with_name("damaged.tmp")
        damaged.write_bytes(whole[: len(whole) // 2])
        os.replace(damaged, entry)  # another file (inode) at the entry's name, as a torn copy would leave
        behaviors = {b["name"]: b for b in client.get("/behaviors").json()}
        assert not behaviors[BEHAVIOR]["cached"] and behaviors[BEHAVIOR]["damaged"] == "unreadable (BadZipFile)"
        assert behaviors["evil"]["damaged"] is None and not behaviors["evil"]["cached"]
        listed = {e["key"]: e for e in client.get("/cache").json()}
        assert listed[entry.stem]["problem"] == "unreadable (BadZipFile)" and listed[entry.stem]["behavior"] == "?"
        shown = CliRunner().invoke(main, ["cache", "list", str(index_dir)])
        assert re.search(r"^\(damaged\) .* unreadable \(BadZipFile\)  \(" + entry.stem[:12], shown.output, re.M), \
            shown.output
    finally:
        restored = entry.with_name("restored.tmp")
        restored.write_bytes(whole)
        os.replace(restored, entry)
    behaviors = {b["name"]: b for b in client.get("/behaviors").json()}
    assert behaviors[BEHAVIOR]["cached"] and behaviors[BEHAVIOR]["damaged"] is None
    assert client.post("/query", json={"behavior": BEHAVIOR, "k": 3}).json()["cached"]


@pytest.mark.parametrize("method, path, body, status, message", [
    ("post", "/query", {"behavior": "no-such"}, 400, "unknown built-in behaviour 'no-such'"),
    ("post", "/query", {"behavior": "/etc/passwd"}, 400, "send other behaviours inline"),
    ("post", "/query", {"behavior": BEHAVIOR, "example": "a => b"}, 400, "asks exactly one of"),
    ("post", "/query", {}, 400, "got none"),
    ("post", "/query", {"behavior": BEHAVIOR, "per_token": True}, 400, "refine a rerank"),
    ("post", "/query", {"behavior": BEHAVIOR, "rerank": "ekfac"}, 400, "fit-curvature"),
    ("post", "/query", {"behavior": BEHAVIOR, "layer": 7}, 400, "has no vectors for layer 7"),
    ("post", "/query", {"behavior": BEHAVIOR, "k": -1}, 422, "k: Input should be greater than or equal to 0"),
    ("post", "/query", {"behavior": BEHAVIOR, "method": "nope"}, 422, "method: Input should be"),
    ("post", "/query", {"behavior": BEHAVIOR, "save_query": "x.npz"}, 422, "save_query: Extra inputs"),
    ("post", "/query", {"pairs": [{"prompt": "a", "treatment": " "}]}, 400, "<request>:1: field 'treatment'"),
    ("post", "/query", {"example": {"text": "plain"}}, 400, "a plain text row has no prompt"),
    ("post", "/query", {"example": "no arrow"}, 400, "an example is a file of training rows"),
    ("post", "/query", {"generate": "why is it ?"}, 400, "the model's answer to 'why is it ?' is empty"),
    ("post", "/search", {"vector": [1.0, 2.0], "family": "residual_change/1"}, 400, "vector has dimension 2"),
    ("post", "/search", {"vector": [0.0] * 32, "family": "residual_change/1"}, 400, "not all zero"),
    ("post", "/search", {"vector": [1.0] * 32, "family": "nope"}, 400, "has no vector family 'nope'"),
    ("get", "/rows/no-such-row", None, 404, "no row with id 'no-such-row'"),
    ("post", "/query", {"behavior": BEHAVIOR, "where": {"lable": "a"}}, 400, "has a field 'lable'"),
    ("post", "/query", {"behavior": BEHAVIOR, "where": {"label": []}}, 400, "empty list of values"),
    ("post", "/search", {"vector": [1.0] * 32, "where": {"nope": 1}}, 400, "no row of idx has a field 'nope'"),
    ("post", "/query", {"behavior": BEHAVIOR, "k": 0}, 422, "k: 0 (every row) is not served over HTTP"),
    ("post", "/query", {"behavior": BEHAVIOR, "k": 1001}, 422, "k: at most 1000 rows a request"),
    ("post", "/query", {"behavior": BEHAVIOR, "bottom_k": 5000}, 422, "bottom_k: at most 1000 rows"),
    ("post", "/search", {"vector": [1.0] * 32, "k": 0}, 422, "k: 0 (every row)"),
    ("post", "/query", {"behavior": BEHAVIOR, "offset": -1}, 422, "offset: Input should be greater than"),
    ("post", "/rows", {"ids": ["r1"] * 1001}, 422, "ids: at most 1000 rows a request"),
    ("post", "/rows", {"ids": "r1"}, 422, "ids: Input should be a valid list"),
    ("get", "/rows", None, 422, "ids: Field required"),
])
def test_bad_requests_are_4xx_with_one_line(client, method, path, body, status, message):
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail, detail


def test_nothing_can_be_written_through_the_api(client):
    for method in ("PUT", "DELETE", "PATCH"):
        assert client.request(method, "/query").status_code == 405
    assert client.post("/rows/planted").status_code == 405
    assert client.get("/static/../manifest.json").status_code == 404


def test_a_concurrent_burst_has_no_errors(client, server):
    url = server[0]
    vector = server[1].reader.vectors("residual_change/1", [3])[0].tolist()
    calls = [("post", "/query", {"behavior": BEHAVIOR, "k": 5}), ("post", "/search", {"vector": vector, "k": 5}),
             ("get", "/health", None), ("post", "/query", {"behavior": BEHAVIOR, "method": "residual-change", "k": 3}),
             ("get", "/rows/planted", None)]

    def call(i: int) -> tuple[int, str]:
        method, path, body = calls[i % len(calls)]
        with httpx.Client(base_url=url, timeout=120) as c:
            response = c.request(method.upper(), path, json=body)
            return response.status_code, path

    client.post("/query", json={"behavior": BEHAVIOR, "method": "residual-change", "k": 3})  # cached first
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(40)))
    assert [r for r in results if r[0] != 200] == [] and len(results) == 40


def test_health_cached_queries_and_searches_answer_while_a_model_pass_runs(client, server):
    url = server[0]
    many = [{"prompt": f"{p['prompt']} {' '.join(['why'] * (i % 7))}", "treatment": p["treatment"] * 4,
             "control": p["control"] * 4} for i in range(150) for p in PAIRS]
    slow = threading.Thread(target=lambda: httpx.post(url + "query", json={"pairs": many, "k": 3}, timeout=600))
    client.post("/query", json={"behavior": BEHAVIOR, "k": 3})  # cached
    slow.start()
    seen = []
    while slow.is_alive():
        started = time.perf_counter()
        health = client.get("/health").json()
        if health["model_busy"]:
            cached = client.post("/query", json={"behavior": BEHAVIOR, "k": 3})
            search = client.post("/search", json={"vector": [1.0] * 32, "k": 3})
            seen.append((time.perf_counter() - started, cached.json()["cached"], search.status_code,
                         client.get("/health").json()["model_busy"]))
        time.sleep(0.05)
    slow.join()
    busy = [s for s in seen if s[3]]  # the model pass was still running after the three calls
    assert busy, "never caught the model pass running"
    assert all(s[1] and s[2] == 200 for s in busy) and min(s[0] for s in busy) < 2.0, busy


def test_the_cli_says_where_it_listens(index_dir, model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "actindex", "serve", "--index", str(index_dir), "--port", "0",
                             "--model", str(model_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.match(r"actindex serve: (http://127\.0\.0\.1:\d+/) \(40 rows of .*; API docs at /docs; listening on "
                         r"this machine only; Ctrl\+C stops\)$", line.strip())
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        for _ in range(300):
            try:
                health = httpx.get(match.group(1) + "health").json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health["status"] == "ok" and health["model_loaded"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    busy = subprocess.run([sys.executable, "-m", "actindex", "serve", "--index", str(index_dir), "--port",
                           match.group(1).rsplit(":", 1)[1].strip("/"), "--host", "no.such.host.invalid",
                           "--token", "t"],
                          capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and busy.stderr.startswith("error: --host 'no.such.host.invalid': cannot resolve")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


#: Chromium with no network but this machine's loopback: a page that reaches for a CDN finds nothing
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium(tmp_path: Path, url: str) -> str:
    cmd = [CHROMIUM, *OFFLINE, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
    separated by NUL bytes on file descriptors 3 and 4), to click through a page as a user does."""

    def __init__(self, tmp_path: Path):
        to_chrome, self.writer = os.pipe()
        self.reader, from_chrome = os.pipe()

        def descriptors() -> None:  # the child's fd 3 reads our messages, its fd 4 writes its answers
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen([CHROMIUM, *OFFLINE, f"--user-data-dir={tmp_path / 'cdp-profile'}",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=descriptors,
                                     pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self.ids, self.buffer, self.session = 0, b"", None

    def send(self, method: str, **params) -> dict:
        self.ids += 1
        message = {"id": self.ids, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.reader, 1 << 16)
                assert chunk, "Chromium closed its pipe"
                self.buffer += chunk
            text, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(text)
            if answer.get("id") == self.ids:
                if "error" in answer:
                    raise RuntimeError(answer["error"]["message"])
                return answer["result"]

    def open(self, url: str) -> None:
        """A new tab at ``url``, once its document has loaded."""
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for _ in range(600):
            try:  # the blank document the tab starts with is replaced when the page arrives
                if self.run("return location.protocol + ' ' + document.readyState") == "http: complete":
                    return
            except RuntimeError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} never loaded")

    def run(self, script: str) -> object:
        """The value of an async JavaScript function body run in the page."""
        found = self.send("Runtime.evaluate", expression=f"(async () => {{ {script} }})()", awaitPromise=True,
                          returnByValue=True)
        if "exceptionDetails" in found:
            raise RuntimeError(found["exceptionDetails"])
        return found["result"].get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.reader)
        os.close(self.writer)


#: JavaScript: wait until ``cond`` holds (polling; a page still loading throws: not yet), up to a minute
UNTIL = ("const holds = (cond) => { try { return cond(); } catch (err) { return false; } }; "
         "const until = async (cond) => { for (let i = 0; i < 600 && !holds(cond); i++) "
         "await new Promise(r => setTimeout(r, 100)); };")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (`chromium` not on PATH)")
def test_the_page_runs_a_query_from_its_url_and_shows_the_rows(client, server, tmp_path):
    want = client.post("/query", json={"behavior": BEHAVIOR, "k": 5}).json()
    other = client.post("/query", json={"behavior": BEHAVIOR, "k": 5, "method": "residual-change"}).json()
    page = client.get("/").text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)  # nothing from the network
    dom = chromium(tmp_path, f"{server[0]}?behavior={BEHAVIOR}&k=5&compare=residual-change")
    sections = re.findall(r'<section class="result" data-method="([^"]+)">(.*?)</section>', dom, re.S)
    assert [m for m, _ in sections] == ["adaptive", "residual-change"], dom[-2000:]
    for (_, html), result in zip(sections, (want, other)):
        rows = re.findall(r'<tr class="hit(?: shared)?" data-id="([^"]+)" data-rank="(\d+)">.*?'
                          r'<td class="num score (?:pos|neg)"[^>]*>([^<]+)</td>', html, re.S)
        assert [(i, int(r)) for i, r, _ in rows] == [(h["id"], h["rank"]) for h in result["top"]]
        assert [s for _, _, s in rows] == [f"{h['score']:+.4f}" for h in result["top"]]
    assert 'id="status" class="muted" role="status">done: adaptive' in dom


@pytest.mark.parametrize("bad, message", [
    ({"port": 70000}, "--port must be at most 65535"), ({"port": -1}, "--port must be at least 0"),
    ({"workers": 0}, "--workers must be at least 1"), ({"host": " "}, "--host needs an address"),
    ({"host": "0.0.0.0"}, "--host 0.0.0.0 answers other machines: give --token"),
    ({"token": "two words"}, "--token must be a non-empty string without spaces"),
    ({"cors_origins": ["https://a.example/path"]}, "--cors-origin: expected"),
    ({"root_path": "actindex"}, "--root-path: expected a path"), ({"max_page": 0}, "--max-page must be at least 1"),
])
def test_serve_settings_are_checked(bad, message, monkeypatch):
    monkeypatch.delenv("ACTINDEX_TOKEN", raising=False)
    with pytest.raises(actindex.ActindexError, match=re.escape(message)):
        ServeConfig(**bad)


def test_serve_settings_defaults(monkeypatch):
    monkeypatch.delenv("ACTINDEX_TOKEN", raising=False)
    assert ServeConfig().local_only and ServeConfig(host="localhost").local_only and ServeConfig(host="::1").local_only
    assert not ServeConfig(host="0.0.0.0", token="t").local_only and ServeConfig(workers=3).threads == 3
    assert ServeConfig().token is None and ServeConfig(root_path="/a/").root_path == "/a"
    monkeypatch.setenv("ACTINDEX_TOKEN", "from-env")
    assert ServeConfig(host="0.0.0.0").token == "from-env"


# ---- filters, pages, batches ---------------------------------------------------------------------------------
def matching_rows(idx: actindex.Index, where: dict) -> np.ndarray:
    """The searchable rows whose records match ``where`` (every record read: the ground truth)."""
    rows = idx.reader.table.searchable
    return np.array([r for r, rec in zip(rows, idx.reader.records(rows))
                     if all(rec.get(f) in (v if isinstance(v, list) else [v]) for f, v in where.items())])


@pytest.mark.parametrize("where, k, offset, bottom", [
    ({"label": "a"}, 5, 0, False), ({"label": ["a", "b"]}, 4, 3, False), ({"label": "b"}, 6, 2, True)])
def test_search_with_where_and_offset_is_brute_force_over_the_matching_rows(client, server, where, k, offset, bottom):
    idx = server[1]
    vector = idx.reader.vectors("residual_change/2", [7])[0]
    got = client.post("/search", json={"vector": vector.tolist(), "family": "residual_change/2", "k": k,
                                       "offset": offset, "bottom": bottom, "where": where})
    assert got.status_code == 200, got.text
    rows = matching_rows(idx, where)
    scores = normalise(idx.reader.vectors("residual_change/2", rows)) @ normalise(vector)[0]
    order = np.argsort(scores if bottom else -scores, kind="stable")[offset : offset + k]
    np.testing.assert_allclose(got.json()["scores"], scores[order], atol=1e-5)
    assert set(got.json()["rows"]) <= set(rows.tolist()) and len(got.json()["rows"]) == k


def test_query_with_where_and_pages(client, server):
    idx = server[1]
    body = {"behavior": BEHAVIOR, "k": 6, "bottom_k": 2, "where": {"label": "a"}}
    got = client.post("/query", json=body).json()
    same(got, idx.query(BEHAVIOR, k=6, bottom_k=2, where={"label": "a"}).to_dict())
    assert all(h["record"]["label"] == "a" for h in got["top"] + got["bottom"]) and len(got["top"]) == 6
    whole = client.post("/query", json={"behavior": BEHAVIOR, "k": 12}).json()
    pages = [client.post("/query", json={"behavior": BEHAVIOR, "k": 4, "offset": at}).json() for at in (0, 4, 8)]
    assert [h["id"] for p in pages for h in p["top"]] == [h["id"] for h in whole["top"]]
    assert [h["rank"] for p in pages for h in p["top"]] == list(range(1, 13))


def test_rows_in_batches(client, server):
    idx = server[1]
    ids = ["planted", "r3", "no-such", "r5"]
    posted = client.post("/rows", json={"ids": ids}).json()
    RowsOut.model_validate(posted)
    assert client.get("/rows", params={"ids": ids}).json() == posted
    assert [r["id"] for r in posted["rows"]] == ["planted", "r3", "r5"] and posted["missing"] == ["no-such"]
    assert [r["record"] for r in posted["rows"]] == idx.reader.records([r["row"] for r in posted["rows"]])
    assert posted["rows"][0] == client.get("/rows/planted").json()


# ---- the schema and the docs ---------------------------------------------------------------------------------
def test_the_schema_names_every_answer_and_error_in_http_words(client):
    schema = client.get("/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert "$ref" in json.dumps(responses["200"]), (method, path)  # a model
            errors = {status: r for status, r in responses.items() if status != "200"}
            assert set(errors) >= ({"500"} if path == "/health" else {"400", "422", "500"}), (method, path)
            for r in errors.values():
                assert r["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut") and r["description"]
    assert schema["paths"]["/rows/{row_id}"]["get"]["responses"]["404"]
    words = json.dumps([p.get("description", "") for model in schema["components"]["schemas"].values()
                        for p in model.get("properties", {}).values()])
    assert not re.search(r"--[a-z]|`actindex ", words), re.findall(r".{40}--[a-z].{20}", words)


def test_the_docs_name_no_network_address(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert not re.search(r"""(?:src|href|url)\s*[=:]\s*["']?(?:https?:)?//""", html), html
        for asset in re.findall(r"""(?:src|href)="([^"]+)\"""", html):
            assert client.get(asset).status_code == 200, asset


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (`chromium` not on PATH)")
@pytest.mark.parametrize("page, shows", [("docs", r'data-path="/query"'), ("redoc", r"Rank the training rows")])
def test_the_docs_render_with_the_network_cut(server, tmp_path, page, shows):
    dom = chromium(tmp_path, server[0] + page)
    assert re.search(shows, dom), dom[-3000:]


# ---- access: token, CORS, root path ----------------------------------------------------------------------------
TOKEN, ORIGIN = "s3cret-token", "https://app.example.org"
GUARDED = [("get", "info", None), ("get", "behaviors", None), ("get", "cache", None),
           ("post", "query", {"behavior": BEHAVIOR, "k": 2}),
           ("post", "search", {"vector": [1.0] * 32, "k": 2}), ("get", "rows/planted", None),
           ("get", "rows?ids=planted", None), ("post", "rows", {"ids": ["planted"]})]


@pytest.fixture(scope="module")
def guarded(index_dir, model_dir):
    """A server with a token, one CORS origin and the root path /actindex (as a reverse proxy that strips it sees
    the server)."""
    idx = actindex.Index.open(index_dir).use_model(load_model(str(model_dir)))
    config = ServeConfig(port=0, workers=4, token=TOKEN, cors_origins=[ORIGIN], root_path="/actindex", preload=False)
    with live(create_app(idx, config), config) as url:
        yield url


@pytest.mark.parametrize("method, path, body", GUARDED)
def test_a_token_guards_every_endpoint_that_reads_the_index(guarded, method, path, body):
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": TOKEN}, 401),
                            ({"Authorization": f"Bearer {TOKEN}"}, 200)):
        response = httpx.request(method.upper(), guarded + path, json=body, headers=headers, timeout=120)
        assert response.status_code == status, (headers, response.text)
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer" and "token" in response.json()["detail"]


def test_health_the_page_and_the_docs_need_no_token(guarded):
    for path in ("health", "", "docs", "redoc", "openapi.json", "static/app.js", "static/docs/redoc.standalone.js"):
        assert httpx.get(guarded + path).status_code == 200, path


def test_the_schema_of_a_server_with_a_token_names_its_401(guarded):
    schema = httpx.get(guarded + "openapi.json").json()
    for path, methods in schema["paths"].items():
        for operation in methods.values():
            assert ("401" in operation["responses"]) == (path != "/health"), path
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_cors_preflights_pass_for_the_origins_allowed(guarded, client):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    ok = httpx.options(guarded + "query", headers={"Origin": ORIGIN, **ask})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert {"authorization", "content-type"} <= set(ok.headers["access-control-allow-headers"].lower().split(", "))
    other = httpx.options(guarded + "query", headers={"Origin": "https://elsewhere.example", **ask})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    real = httpx.get(guarded + "info", headers={"Origin": ORIGIN, "Authorization": f"Bearer {TOKEN}"})
    assert real.headers["access-control-allow-origin"] == ORIGIN
    plain = client.options("/query", headers={"Origin": ORIGIN, **ask})  # no origin allowed: no CORS at all
    assert "access-control-allow-origin" not in plain.headers


def test_a_root_path_prefixes_every_link(guarded):
    docs = httpx.get(guarded + "docs").text
    assert "url: '/actindex/openapi.json'" in docs and 'src="/actindex/static/docs/swagger-ui-bundle.js"' in docs
    assert 'spec-url="/actindex/openapi.json"' in httpx.get(guarded + "redoc").text
    assert httpx.get(guarded + "openapi.json").json()["servers"] == [{"url": "/actindex"}]
    for link in re.findall(r'(?:src|href)="(/actindex/[^"]+)"', docs):  # through the proxy, which strips it
        assert httpx.get(guarded + link.removeprefix("/actindex/")).status_code == 200, link
    page = httpx.get(guarded).text
    assert 'src="static/app.js"' in page and 'href="static/style.css"' in page  # relative: under the prefix


def test_the_cli_refuses_other_machines_without_a_token(index_dir):
    env = {k: v for k, v in os.environ.items() if k != "ACTINDEX_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "actindex", "serve", "--index", str(index_dir), "--host", "0.0.0.0",
                          "--port", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: --host 0.0.0.0 answers other machines: give --token (or set ACTINDEX_TOKEN)")


# ---- the model's answers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def talker_server(tmp_path_factory, tokenizer):
    """A server over a tiny Llama that answers in words (special and unused tokens never win the greedy choice)."""
    import torch

    from actindex.core.models import wrap_model

    model = tiny_llama(seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight[:8] = 0
        model.model.embed_tokens.weight[len(tokenizer):] = 0
    talker = wrap_model(model, tokenizer, "tiny-talker")
    tmp = tmp_path_factory.mktemp("talker")
    actindex.build(data=str(write_jsonl(tmp / "train.jsonl", chat_rows(20, seed=2))), out=str(tmp / "idx"),
                   layers=[1, 2], model=talker, progress=False)
    idx = actindex.Index.open(tmp / "idx").use_model(talker)
    config = ServeConfig(port=0, workers=4)
    with live(create_app(idx, config), config) as url:
        yield url, idx


def test_the_models_answer_is_in_every_answer_and_on_the_page(talker_server, tmp_path):
    url, idx = talker_server
    prompt = "why is it ?"
    local = actindex.Index.open(idx.root, cache=False).use_model(idx.model()).query(generate=prompt, k=3)
    (answer,) = local.answers
    assert answer["prompt"] == prompt and answer["answer"].strip()
    for _ in range(2):  # formed with the model, then from the behaviour cache: the answer is the same
        got = httpx.post(url + "query", json={"generate": prompt, "k": 3}, timeout=300).json()
        assert got["answers"] == [answer]
    listed = [e for e in httpx.get(url + "cache").json() if e["behavior"] == "generate"]
    assert [e["answers"] for e in listed] == [[answer]], listed
    assert [e.answers for e in idx.session.behavior_cache.entries() if e.behavior == "generate"] == [[answer]]
    shown = CliRunner().invoke(main, ["cache", "list", str(idx.root)])
    assert shown.exit_code == 0 and f"  the model's answer to {prompt!r}: {answer['answer']!r}\n" in shown.output, \
        shown.output
    if CHROMIUM is not None:
        dom = chromium(tmp_path, f"{url}?generate={prompt}&k=3")
        shown = re.search(r'<p class="answer">.*?<q>(.*?)</q></p>', dom, re.S)
        assert shown and unescape(shown.group(1)) == answer["answer"], dom[-2000:]


# ---- the page, clicked through ----------------------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (`chromium` not on PATH)")
def test_the_page_filters_and_clears_the_rows_of_an_earlier_query_on_an_error(client, server, tmp_path):
    want = client.post("/query", json={"behavior": BEHAVIOR, "k": 4, "where": {"label": "b"}}).json()
    browser = Browser(tmp_path)
    try:
        where = quote(json.dumps({"label": "b"}))
        browser.open(f"{server[0]}?behavior={BEHAVIOR}&k=4&where={where}")
        first = browser.run(UNTIL + """
            await until(() => document.querySelectorAll("tr.hit").length);
            return [...document.querySelectorAll("tr.hit")].map((tr) => tr.dataset.id);""")
        assert first == [h["id"] for h in want["top"]]
        after = browser.run(UNTIL + """
            document.getElementById("opt-layer").value = "7";
            document.getElementById("run").click();
            await until(() => document.querySelector("#status .error"));
            return [document.querySelectorAll("tr.hit").length, document.querySelector("#status").textContent];""")
        assert after[0] == 0 and "has no vectors for layer 7" in after[1], after
    finally:
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (`chromium` not on PATH)")
def test_the_page_asks_for_the_token_and_then_answers(guarded, tmp_path):
    browser = Browser(tmp_path)
    try:
        browser.open(f"{guarded}?behavior={BEHAVIOR}&k=3")
        asked = browser.run(UNTIL + """
            await until(() => !document.getElementById("token-form").hidden);
            return document.querySelector("#status").textContent;""")
        assert "needs a token" in asked
        rows = browser.run(UNTIL + f"""
            document.getElementById("token").value = "{TOKEN}";
            document.querySelector("#token-form button").click();
            await until(() => document.querySelectorAll("tr.hit").length);
            return [...document.querySelectorAll("tr.hit")].map((tr) => tr.dataset.id);""")
        assert len(rows) == 3
    finally:
        browser.close()


def test_a_wheel_ships_the_page_and_the_docs_assets(tmp_path):
    """/docs and /redoc render offline from files in the package: a wheel built from the project holds every one."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "src", tmp_path / "project" / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / "project" / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheel"), str(tmp_path / "project")], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("actindex-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    static = root / "src" / "actindex" / "serve" / "static"
    wanted = {str(p.relative_to(root / "src")) for p in static.rglob("*") if p.is_file()}
    assert {"actindex/serve/static/docs/swagger-ui-bundle.js", "actindex/serve/static/docs/redoc.standalone.js",
            "actindex/serve/static/index.html"} <= wanted
    assert wanted <= shipped, sorted(wanted - shipped)
