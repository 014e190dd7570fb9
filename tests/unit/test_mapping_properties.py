"""Property: whatever a store sends, map_customer returns a row the table accepts or a MappingError.

Every field may be missing, null, of the wrong type, absurdly long, or hold characters PostgreSQL
refuses (NUL, which is removed; lone surrogates and NaN, which fail the customer). No other
exception may escape: one bad customer must never take a whole batch down with it.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.mapping import (
    MAX_EMAIL,
    MappingError,
    canonical_json,
    jsonb_storable,
    map_customer,
)

ORG = UUID("00000000-0000-4000-8000-00000000000a")
CONN = UUID("00000000-0000-4000-8000-00000000000b")

# Any Unicode, surrogates and NUL included, sometimes far beyond every column limit.
any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=40),
    st.text(alphabet=st.sampled_from("ab\x00\ud800 @é🦊"), max_size=20),
    st.integers(0, 3000).map(lambda n: "x" * n),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**200), max_value=10**200),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_value = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
wrong = st.one_of(json_value, st.sets(st.integers(), max_size=2), st.just(object()))

emails = st.one_of(
    st.emails(),
    st.builds(lambda a, b: f"{a}@{b}", any_text, any_text),
    st.integers(300, 400).map(lambda n: "a" * n + "@example.com"),
    wrong,
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
DATE_LIKE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?"
good_dates = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat(timespec="microseconds")),
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds") + "Z"),
)
dates = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    st.from_regex(DATE_LIKE, fullmatch=True),
    wrong,
)
addresses = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "company": st.one_of(any_text, wrong),
            "phone": st.one_of(any_text, st.integers(), wrong),
            "email": any_text,
            "city": any_text,
        },
    ),
    wrong,
)
ids = st.one_of(st.integers(min_value=1, max_value=2**63 - 1), st.integers(), wrong)
paying = st.one_of(st.booleans(), st.sampled_from(["1", "0", "true", "false", "yes"]), wrong)

clean_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30
)


def near(limit: int) -> st.SearchStrategy[str]:
    """Strings right at a length, one either side, in multi-byte characters."""
    return st.integers(limit - 1, limit + 1).map(lambda n: "é" * n)


nasty_text = st.text(alphabet=st.sampled_from("ab é\x00\ud800"), min_size=1, max_size=5)


def text_field(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(clean_text, near(limit), st.integers(-(10**6), 10**6), nasty_text)


# What a sane store sends, and what a broken one might; each field picks one (or is missing).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(min_value=1, max_value=2**63 - 1),
    "email": st.one_of(st.emails(), near(MAX_EMAIL - 4).map(lambda s: s[:-4] + "@a.b")),
    "first_name": text_field(255),
    "last_name": text_field(255),
    "username": text_field(255),
    "role": text_field(100),
    "avatar_url": text_field(2048),
    "billing": st.fixed_dictionaries(
        {}, optional={"company": text_field(255), "phone": text_field(100)}
    ),
    "shipping": st.dictionaries(clean_text, st.one_of(clean_text, nasty_text), max_size=3),
    "meta_data": st.lists(
        st.fixed_dictionaries({"id": st.integers(), "key": clean_text, "value": clean_text}),
        max_size=2,
    ),
    "is_paying_customer": st.sampled_from([True, False, "1", "0", "true", "false"]),
    "date_created": st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    "date_created_gmt": good_dates,
    "date_modified": st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    "date_modified_gmt": good_dates,
    "_links": json_value,
}
CHAOS: dict[str, st.SearchStrategy[Any]] = {
    "id": ids,
    "email": emails,
    "first_name": st.one_of(any_text, wrong),
    "last_name": st.one_of(any_text, wrong),
    "username": st.one_of(any_text, wrong),
    "role": st.one_of(any_text, wrong),
    "avatar_url": st.one_of(any_text, wrong),
    "billing": addresses,
    "shipping": addresses,
    "meta_data": st.one_of(st.lists(json_value, max_size=3), wrong),
    "is_paying_customer": paying,
    "date_created": dates,
    "date_created_gmt": dates,
    "date_modified": dates,
    "date_modified_gmt": dates,
    "_links": wrong,
}
REQUIRED = ("id", "email")


@st.composite
def customers(draw: st.DrawFn) -> dict[Any, Any]:
    """Half tidy (only in-range or absent values), half messy (any field may be anything)."""
    messy = draw(st.booleans())
    customer: dict[Any, Any] = {}
    for name, valid in VALID.items():
        choices = ["valid"] * 6 + ["null", "missing"] + (["chaos"] if messy else [])
        choice = "valid" if name in REQUIRED and not messy else draw(st.sampled_from(choices))
        if choice == "valid":
            customer[name] = draw(valid)
        elif choice == "chaos":
            customer[name] = draw(CHAOS[name])
        elif choice == "null":
            customer[name] = None
    if messy:
        customer = {**draw(st.dictionaries(any_text, json_value, max_size=2)), **customer}
    return customer


# The text columns have no length limit (migration 0007); only an e-mail address has one.
LIMITS = {
    "email": MAX_EMAIL,
    "first_name": None,
    "last_name": None,
    "username": None,
    "company": None,
    "role": None,
    "phone": None,
    "avatar_url": None,
}


def _storable_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _all_text_storable(value: Any) -> bool:
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, dict):
        return all(_storable_text(k) and _all_text_storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_text_storable(v) for v in value)
    return not (isinstance(value, float) and not math.isfinite(value))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw=st.one_of(customers(), customers(), customers(), wrong))
def test_row_fits_the_table_or_mapping_error(raw: Any) -> None:
    try:
        row = map_customer(raw, org_id=ORG, connection_id=CONN)
    except MappingError as error:
        assert error.message
        assert _storable_text(str(error))  # error texts are stored in last_error and logged
        event("refused")
        return
    event("mapped")
    assert isinstance(row.woo_id, int) and not isinstance(row.woo_id, bool)
    assert 0 < row.woo_id < 2**63
    for column, limit in LIMITS.items():
        value = getattr(row, column)
        assert isinstance(value, str) and _storable_text(value), column
        assert limit is None or len(value) <= limit, column
    local, _, domain = row.email.partition("@")
    assert local and domain and "@" not in domain
    assert isinstance(row.billing, dict) and isinstance(row.shipping, dict)
    assert isinstance(row.meta_data, list)
    assert isinstance(row.is_paying_customer, bool)
    for stamp in (row.woo_date_created, row.woo_date_modified):
        assert stamp is None or (isinstance(stamp, datetime) and stamp.tzinfo == UTC)
    for document in (row.raw, row.billing, row.shipping, row.meta_data):
        assert jsonb_storable(document)
        assert _all_text_storable(document)
    assert bool(row.warnings) == (row.clean_json is not None)
    assert "_links" not in row.raw
    # The hash is of the customer as sent (NUL included), raw_json the text stored in raw.
    sent = {k: v for k, v in raw.items() if k != "_links"}
    assert row.source_hash == hashlib.sha256(canonical_json(sent).encode()).hexdigest()
    assert row.raw_json == canonical_json(row.raw)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
    when=st.datetimes(),
)
def test_valid_customers_always_map(name: str, when: datetime) -> None:
    raw = {
        "id": 7,
        "email": "someone@example.com",
        "first_name": name,
        "date_created_gmt": when.isoformat(timespec="seconds"),
        "meta_data": [{"id": 1, "key": name, "value": name}],
    }
    row = map_customer(raw, org_id=ORG, connection_id=CONN)
    assert row.first_name == name
    assert row.woo_date_created == when.replace(microsecond=0, tzinfo=UTC)
