"""The face of the package: ``Index`` is a small facade whose query options are explicit keywords (generated
from the config they fill), ``dir(actindex)`` lists each name once, and a result comes out as pandas, Arrow,
JSON text and notebook HTML holding the same rows."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
from conftest import SILVER, write_jsonl

import actindex
from actindex.api import Index
from actindex.query.curvature.config import CurvatureConfig
from actindex.query.pipeline import QueryConfig


def test_index_is_a_small_facade():
    public = [n for n in dir(Index) if not n.startswith("_")]
    assert len(public) <= 20, public
    for name in public:
        member = getattr(Index, name)
        if callable(member):  # every option named: no **options hides them
            kinds = {p.kind for p in inspect.signature(member).parameters.values()}
            assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds, name


@pytest.mark.parametrize("verb,config", [("query", QueryConfig), ("fit_curvature", CurvatureConfig)])
def test_every_config_field_is_a_keyword_with_the_configs_default(verb, config):
    params = inspect.signature(getattr(Index, verb)).parameters
    for f in dataclasses.fields(config):
        assert f.name in params, (verb, f.name)
        assert params[f.name].default == f.default, (verb, f.name)


def test_the_docstring_names_the_default_method():
    assert QueryConfig().resolved_method() == "adaptive"
    assert "default ``adaptive``" in Index.query.__doc__


def test_dir_lists_each_name_once():
    _ = actindex.Index, actindex.export  # imported on first use: still listed once
    names = dir(actindex)
    assert len(names) == len(set(names)) and {"Index", "export"} <= set(names)


def test_a_result_as_pandas_arrow_json_and_html(planted_index, tmp_path):
    idx = planted_index(12, seed=2, at=5, layers=[1])
    assert len([n for n in dir(idx) if not n.startswith("_")]) <= 20
    res = idx.query(str(write_jsonl(tmp_path / "b.jsonl", [SILVER])), method="residual-change", k=4, bottom_k=2)
    assert len(res) == 6 and [h.row for h in res] == [h.row for h in [*res.top, *res.bottom]]
    text = res.to_json()
    assert isinstance(text, str) and json.loads(text) == json.loads(json.dumps(res.to_dict()))
    frame = res.to_pandas()
    assert list(frame["row"]) == [h.row for h in res] and list(frame["side"]) == ["top"] * 4 + ["bottom"] * 2
    assert list(frame["score"]) == [h.score for h in res] and list(frame["cosine"]) == [h.cosine for h in res]
    assert "record.messages" in frame.columns
    table = res.to_arrow()
    assert table.num_rows == 6 and table.column("id").to_pylist() == [h.id for h in res]
    assert [json.loads(r) for r in table.column("record").to_pylist()] == [h.record for h in res]
    page = res._repr_html_()
    assert page.count("<tr>") == 1 + 6 and "planted" in page and res.top[0].id == "planted"
