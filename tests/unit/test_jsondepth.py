"""JSON from stores at any depth: only the too-deep part is cut, so only its customer fails."""

from __future__ import annotations

import json
import math
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# -- the orjson fast path reads exactly what json reads ---------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),  # beyond 64 bits both ways
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),  # lone surrogates included
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _same(a: object, b: object) -> bool:
    """Equal as json reads them, NaN equal to NaN, and of the same types throughout."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b) and not (isinstance(a, float) and isinstance(b, float)):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[union-attr,index]
    return a == b


@given(_VALUES)
def test_parse_reads_what_json_reads(value: object) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        for data in (text, text.encode("utf-8", "surrogatepass")):
            try:
                expected = json.loads(data)
            except ValueError:
                with pytest.raises(ValueError):
                    jsondepth.parse(data)
                continue
            assert _same(jsondepth.parse(data), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"[123456789012345678901234567890]", [123456789012345678901234567890]),
        (b"[-9223372036854775809]", [-9223372036854775809]),
        (b'{"phone": "12345678901234567890", "n": 1}', {"phone": "12345678901234567890", "n": 1}),
        (b"\xef\xbb\xbf[1]", [1]),  # a BOM, which json accepts in bytes
    ],
)
def test_what_orjson_would_read_differently_is_read_by_json(text: bytes, expected: object) -> None:
    assert jsondepth.parse(text) == expected


_RUN = "1234567890123456789"  # 19 digits


@pytest.mark.parametrize(
    "text",
    [
        f"[{_RUN}]",
        f"{_RUN}",
        f'{{"a":{_RUN}}}',
        f'{{"a": -{_RUN}0}}',
        f'{{"a":\n\t{_RUN}}}',
        f"[1,{_RUN}]",
        f"[0.{_RUN}]",  # a float: read by json too, to be safe
        f"[1e+{_RUN}]",
        f'["avatar/ab", {_RUN}]',  # a string before the number does not hide it
        f'["ab{_RUN}", {_RUN}]',
        f'["{"e" * 80}{_RUN}"]',  # past the look-back: counted as a number, to be safe
        f'["x 1.5e+{_RUN}"]',  # text that reads like a number inside a string, too
    ],
)
def test_a_long_run_where_a_number_can_be_goes_to_json(text: str) -> None:
    assert jsondepth._has_long_digit_run(text)
    assert jsondepth._has_long_digit_run(text.encode())
    assert _same(jsondepth.parse(text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        f'{{"avatar_url": "https://secure.gravatar.com/avatar/ab{_RUN}cd?s=96"}}',
        f'["x{_RUN}", "/{_RUN}", "\\"{_RUN}"]',
        f'["{_RUN}"]',
        f'{{"{_RUN}{_RUN}": 1}}',
        f'["ü{_RUN}", 1234567890123456]',
        f'["a3e{_RUN}", "-{_RUN}"]',  # number bytes, but not opened as a value is
    ],
)
def test_a_long_run_inside_a_string_stays_on_the_fast_path(text: str) -> None:
    """The MD5 of a Gravatar URL sent about a quarter of all store pages to json."""
    assert not jsondepth._has_long_digit_run(text)
    assert _same(jsondepth.parse(text), json.loads(text))


def test_non_finite_numbers_are_kept_and_marked() -> None:
    value = jsondepth.parse(b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": 1.5}')
    assert all(isinstance(value[k], jsondepth.NonFiniteFloat) for k in "abcd")
    assert math.isnan(value["a"]) and value["b"] == math.inf and value["c"] == -math.inf
    assert value["d"] == math.inf and type(value["e"]) is float


@pytest.mark.parametrize("text", [b'["\xff"]', b"[1,]", b'{"a":1} x', b'["a\x01b"]', b"NaX", b""])
def test_invalid_json_is_refused_as_json_refuses_it(text: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsondepth.parse(text)
