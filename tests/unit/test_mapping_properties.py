"""Property: whatever a store sends, map_customer returns a row the table accepts or a MappingError.

Every field may be missing, null, of the wrong type, absurdly long, or hold characters PostgreSQL
refuses (NUL, which is removed; lone surrogates and NaN, which fail the customer). No other
exception may escape: one bad customer must never take a whole batch down with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.mapping import (
    MAX_EMAIL,
    MappingError,
    canonical_json,
    jsonb_storable,
    map_customer,
)
from tests.strategies import customers, json_value, wrong

ORG = UUID("00000000-0000-4000-8000-00000000000a")
CONN = UUID("00000000-0000-4000-8000-00000000000b")

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


@settings(max_examples=400)
@given(st.one_of(json_value, customers()))
def test_canonical_json_is_exactly_what_json_writes(value: Any) -> None:
    """orjson writes the hashed text only where it is byte for byte json's, so source hashes do
    not depend on which library wrote them; what json refuses is refused."""
    try:
        expected = json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except (ValueError, TypeError, RecursionError):
        with pytest.raises((ValueError, TypeError, RecursionError)):
            canonical_json(value)
        return
    assert canonical_json(value) == expected
