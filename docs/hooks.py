"""MkDocs hooks.

The Python API page names the public objects as users import them (``::: actindex.Index``); they are lazy exports
of ``actindex`` (PEP 562), which mkdocstrings cannot follow statically, so each such line is rewritten to the module
that defines the object (``::: actindex.api.Index``), read from the object itself.

The HTTP API page (``http-api.md``) is rendered from ``docs/openapi.json``, the schema of
``actindex serve`` (written by ``docs/openapi.py``, kept current by ``tests/test_docs.py``): the marker
``<!-- openapi -->`` becomes one section per endpoint with its request fields (type, default, meaning) and
responses, so the page cannot disagree with the server."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).with_name("openapi.json")
MARKER = "<!-- openapi -->"
PUBLIC = re.compile(r"^::: actindex\.(\w+)$", re.MULTILINE)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    markdown = PUBLIC.sub(lambda m: f"::: {defined_in(m.group(1))}.{m.group(1)}", markdown)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render(json.loads(SCHEMA.read_text())))
    return markdown


def defined_in(name: str) -> str:
    """The module that defines ``actindex.<name>``."""
    return getattr(importlib.import_module("actindex"), name).__module__


def render(spec: dict[str, Any]) -> str:
    """Markdown of every path and method of ``spec``, in the schema's order."""
    out: list[str] = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            out += [f"### `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | meaning |", "|---|---|---|---|"]
                out += [f"| `{p['name']}` | {p['in']} | {type_of(p.get('schema', {}), spec)} | "
                        f"{cell(p.get('description', ''))} |" for p in params]
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out += fields(resolve(body, spec), spec)
            codes = ", ".join(f"{code} ({r.get('description', '')})" for code, r in op.get("responses", {}).items())
            out += [f"Responses: {codes}.", ""]
    return "\n".join(out)


def resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def fields(schema: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The request body as a table: one row per property."""
    lines = [f"Request body ({schema.get('title', 'JSON')}): {schema.get('description', '')}", "",
             "| field | type | default | meaning |", "|---|---|---|---|"]
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        default = "required" if name in required else f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        lines.append(f"| `{name}` | {type_of(prop, spec)} | {default} | {cell(prop.get('description', ''))} |")
    return lines + [""]


def type_of(prop: dict[str, Any], spec: dict[str, Any]) -> str:
    """A short type: ``string``, ``integer >= 0``, ``one of a, b``, ``array of PairIn``, alternatives joined by or."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(type_of(p, spec) for p in prop["anyOf"] if p.get("type") != "null")
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"array of {type_of(prop.get('items', {}), spec)}"
    if "minimum" in prop:
        kind += f" >= {prop['minimum']:g}"
    if "maximum" in prop:
        kind += f" <= {prop['maximum']:g}"
    return kind


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
