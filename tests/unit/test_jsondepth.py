"""JSON from stores at any depth: only the too-deep part is cut, so only its customer fails."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest

from shared import jsondepth
from shared.mapping import MAX_JSON_DEPTH, MappingError, map_customer


def deep_text(depth: int) -> str:
    return "[" * depth + '"leaf \\" ] { \\\\"' + "]" * depth


def test_ordinary_json_is_parsed_as_json_would() -> None:
    text = '[{"id": 1, "a": [1, {"b": "] [ { \\" }"}]}]'
    assert jsondepth.loads(text) == json.loads(text)


def test_a_page_with_one_customer_nested_2000_deep_still_parses() -> None:
    page = (
        '[{"id": 1, "meta_data": []}, {"id": 2, "meta_data": [{"key": "k", "value": '
        + deep_text(2000)
        + '}]}, {"id": 3, "last_name": "x"}]'
    )
    with pytest.raises(RecursionError):
        json.loads(page)
    customers = jsondepth.loads(page.encode())
    assert [c["id"] for c in customers] == [1, 2, 3]
    assert customers[2] == {"id": 3, "last_name": "x"}
    org = uuid4()
    map_customer({**customers[0], "email": "a@b.c"}, org_id=org, connection_id=org)
    with pytest.raises(MappingError) as info:
        map_customer({**customers[1], "email": "a@b.c"}, org_id=org, connection_id=org)
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in info.value.message


def test_cut_keeps_the_shape_down_to_the_depth() -> None:
    value: Any = json.loads(jsondepth.cut(deep_text(50), 10))
    for _ in range(10):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == jsondepth.TOO_DEEP


def test_invalid_json_still_raises() -> None:
    with pytest.raises(ValueError):
        jsondepth.loads("[" * 5000 + "oops")
