"""The documentation stands alone and stays true: the HTTP API page's schema is the server's, every
``docs/<page>.md#anchor`` the code cites exists, the README is short, and no file of the project cites a path
outside the repository. (`make docs` builds the site with ``mkdocs build --strict``.)"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CITATION = re.compile(r"docs/([\w/-]+\.md)#([\w-]+)")


def load_docs_module(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openapi_schema_is_the_servers():
    """docs/openapi.json (rendered as the HTTP API page) equals the schema of the app ``actindex serve`` runs;
    after a change to the HTTP API, ``python docs/openapi.py`` rewrites it."""
    pytest.importorskip("fastapi")
    openapi = load_docs_module("openapi")
    stale = "docs/openapi.json is stale: run python docs/openapi.py"
    assert openapi.dump(openapi.schema()) == openapi.OUT.read_text(), stale


def test_http_api_page_renders_every_endpoint():
    """The hook turns the schema into one section per endpoint, with the request fields of the bodies."""
    hooks = load_docs_module("hooks")
    spec = json.loads(hooks.SCHEMA.read_text())
    page = hooks.on_page_markdown((DOCS / "http-api.md").read_text(), page=None)
    assert hooks.MARKER not in page
    for path, methods in spec["paths"].items():
        for method in methods:
            assert f"### `{method.upper()} {path}`" in page
    for field in spec["components"]["schemas"]["QueryRequest"]["properties"]:
        assert f"| `{field}` |" in page


def heading_ids(page: Path) -> set[str]:
    """The anchors of a Markdown page as mkdocs makes them: an explicit ``{#id}`` or the heading's slug."""
    from markdown.extensions.toc import slugify

    ids = set()
    for line in page.read_text().splitlines():
        m = re.match(r"#+ (.*?)(?:\s*\{#([\w-]+)\})?\s*$", line)
        if m:
            ids.add(m.group(2) or slugify(m.group(1), "-"))
    return ids


def cited() -> list[tuple[str, str, str]]:
    """Every ``docs/<page>.md#<anchor>`` cited in src, tests and bench: (citing file, page, anchor)."""
    found = []
    for folder in ("src", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for page, anchor in CITATION.findall(path.read_text()):
                found.append((str(path.relative_to(ROOT)), page, anchor))
    return found


def test_code_cites_docs():
    assert len(cited()) >= 40  # the design references of the code


@pytest.mark.parametrize(("source", "page", "anchor"), cited())
def test_cited_docs_anchor_exists(source, page, anchor):
    pytest.importorskip("markdown")
    target = DOCS / page
    assert target.is_file(), f"{source} cites docs/{page}, which does not exist"
    assert anchor in heading_ids(target), f"{source} cites docs/{page}#{anchor}: no such heading"


def test_readme_reads_in_five_minutes():
    words = len((ROOT / "README.md").read_text().split())
    assert words <= 1500, f"README.md has {words} words (at most 1,500: the rest belongs in docs/)"


#: the files a reader or the code opens; none may send the reader outside the repository
STANDALONE = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted(DOCS.rglob("*.md")),
              *sorted((ROOT / "src").rglob("*.py"))]
OUTSIDE = re.compile(r"\.\./shared|DESIGN\.md|\bDESIGN \d|DESIGN section|/work/")


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: str(p.relative_to(ROOT)))
def test_cites_nothing_outside_the_repository(path):
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, f"{path.relative_to(ROOT)} cites a path outside the repository:\n" + "\n".join(hits)
