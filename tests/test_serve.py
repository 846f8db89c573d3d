"""actindex serve: a live server on 127.0.0.1 driven over HTTP (httpx). /query answers what Index.query answers;
errors are 4xx with one line; a concurrent burst has no errors and /health (and cached queries, and searches)
answer while a model pass runs; nothing but the behaviour cache is written; the CLI says where it listens; the
browser page, rendered by headless Chromium, runs a query from its URL and shows the ranked rows."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import chat_rows, write_jsonl

import actindex
from actindex.core.models import load_model
from actindex.query.cache import BehaviorCache
from actindex.serve.app import create_app, listen, url_of
from actindex.serve.config import ServeConfig
from actindex.serve.memo import NOTE

BEHAVIOR = "sycophancy"
PAIRS = [{"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
         {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"}]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    rows = chat_rows(40, seed=6)
    rows[13] = {"id": "planted", "prompt": PAIRS[0]["prompt"], "response": PAIRS[0]["treatment"]}
    actindex.build(data=str(write_jsonl(tmp / "train.jsonl", rows)), out=str(tmp / "idx"), layers=[1, 2],
                   model=load_model(str(model_dir)), progress=False)
    return tmp / "idx"


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file of the index but its behaviour cache."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "cache"}


@pytest.fixture(scope="module")
def server(index_dir, model_dir):
    """A live server in a background thread on a free port of 127.0.0.1; checks at the end that the index's own
    files were not written."""
    before = digests(index_dir)
    idx = actindex.Index.open(index_dir).use_model(load_model(str(model_dir)))
    config = ServeConfig(port=0, workers=8)
    sock = listen(config)
    server = uvicorn.Server(uvicorn.Config(create_app(idx, config), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    for _ in range(200):
        try:
            if httpx.get(url + "health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    assert url.startswith("http://127.0.0.1:")
    yield url, idx
    server.should_exit = True
    thread.join(timeout=30)
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
    scores, rows = idx.search(vector, 3, "residual_change/2")
    assert found["rows"] == rows.tolist() and found["ids"][0] == "planted"
    np.testing.assert_allclose(found["scores"], scores, rtol=1e-6)
    row = client.get("/rows/planted").json()
    assert row["record"]["response"] == PAIRS[0]["treatment"] and row["row"] == 13 and row["line"] == 14
    assert row["n_tokens"] == int(idx.reader.table.n_tokens[13]) and row["file"].endswith("train.jsonl")
    assert client.get("/info").json() == idx.manifest.to_dict()
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
                           match.group(1).rsplit(":", 1)[1].strip("/"), "--host", "no.such.host.invalid"],
                          capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and busy.stderr.startswith("error: --host 'no.such.host.invalid': cannot resolve")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path: Path, url: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


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


def test_serve_settings_are_checked():
    assert ServeConfig().local_only and ServeConfig(host="localhost").local_only and ServeConfig(host="::1").local_only
    assert not ServeConfig(host="0.0.0.0").local_only and ServeConfig(workers=3).threads == 3
    for bad, message in (({"port": 70000}, "--port must be at most 65535"), ({"port": -1}, "--port must be at least 0"),
                         ({"workers": 0}, "--workers must be at least 1"), ({"host": " "}, "--host needs an address")):
        with pytest.raises(actindex.ActindexError, match=message):
            ServeConfig(**bad)
