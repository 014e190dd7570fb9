"""map_customer: every field, the null and missing cases, dates, the hash, and each refusal."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from shared.mapping import (
    CUSTOMER_COLUMNS,
    MAX_JSON_DEPTH,
    CustomerRow,
    MappingError,
    canonical_json,
    jsonb_storable,
    map_customer,
    source_hash,
)

ORG = UUID("00000000-0000-4000-8000-000000000001")
CONN = UUID("00000000-0000-4000-8000-000000000002")


def woo_customer(**overrides: Any) -> dict[str, Any]:
    """A customer exactly as WooCommerce v3 emits it (field order as in the controller)."""
    customer: dict[str, Any] = {
        "id": 25,
        "date_created": "2017-03-21T16:09:28",
        "date_created_gmt": "2017-03-21T19:09:28",
        "date_modified": "2017-03-21T16:09:30",
        "date_modified_gmt": "2017-03-21T19:09:30",
        "email": "john.doe@example.com",
        "first_name": "John",
        "last_name": "Doe",
        "role": "customer",
        "username": "john.doe",
        "billing": {
            "first_name": "John",
            "last_name": "Doe",
            "company": "ACME",
            "address_1": "969 Market",
            "address_2": "",
            "city": "San Francisco",
            "postcode": "94103",
            "country": "US",
            "state": "CA",
            "email": "john.doe@example.com",
            "phone": "(555) 555-5555",
        },
        "shipping": {
            "first_name": "John",
            "last_name": "Doe",
            "company": "",
            "address_1": "969 Market",
            "address_2": "",
            "city": "San Francisco",
            "postcode": "94103",
            "country": "US",
            "state": "CA",
            "phone": "",
        },
        "is_paying_customer": False,
        "avatar_url": "https://secure.gravatar.com/avatar/8eb1b5?s=96&d=mm&r=g",
        "meta_data": [{"id": 7, "key": "loyalty", "value": {"tier": "gold"}}],
        "_links": {
            "self": [{"href": "https://example.com/wp-json/wc/v3/customers/25"}],
            "collection": [{"href": "https://example.com/wp-json/wc/v3/customers"}],
        },
    }
    customer.update(overrides)
    return customer


def mapped(raw: dict[str, Any]) -> CustomerRow:
    return map_customer(raw, org_id=ORG, connection_id=CONN)


def refused(raw: Any) -> MappingError:
    with pytest.raises(MappingError) as info:
        map_customer(raw, org_id=ORG, connection_id=CONN)
    return info.value


# -- the happy path, field by field --------------------------------------------------------------


def test_every_field_of_a_full_customer() -> None:
    raw = woo_customer()
    row = mapped(raw)
    assert row.org_id == ORG and row.connection_id == CONN
    assert row.woo_id == 25
    assert row.email == "john.doe@example.com"
    assert (row.first_name, row.last_name, row.username) == ("John", "Doe", "john.doe")
    assert row.role == "customer"
    assert row.company == "ACME"
    assert row.phone == "(555) 555-5555"
    assert row.billing == raw["billing"]
    assert row.shipping == raw["shipping"]
    assert row.meta_data == raw["meta_data"]
    assert row.is_paying_customer is False
    assert row.avatar_url == raw["avatar_url"]
    assert row.woo_date_created == datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)
    assert row.woo_date_modified == datetime(2017, 3, 21, 19, 9, 30, tzinfo=UTC)
    without_links = {k: v for k, v in raw.items() if k != "_links"}
    assert row.raw == without_links
    assert row.source_hash == source_hash(without_links)


def test_columns_follow_the_table_minus_database_timestamps() -> None:
    assert CUSTOMER_COLUMNS == (
        "org_id", "connection_id", "woo_id", "email", "first_name", "last_name", "username",
        "role", "company", "phone", "billing", "shipping", "meta_data", "is_paying_customer",
        "avatar_url", "woo_date_created", "woo_date_modified", "raw", "source_hash", "kind",
        "guest_key",
    )  # fmt: skip


def test_input_is_not_mutated_and_links_are_stripped() -> None:
    raw = woo_customer()
    before = copy.deepcopy(raw)
    row = mapped(raw)
    assert raw == before
    assert "_links" not in row.raw
    assert "_links" in raw


def test_billing_shipping_and_meta_kept_exactly_including_unknown_keys() -> None:
    billing = {"phone": "1", "company": "X", "vat": {"nested": [1, 2.5, None, True]}}
    shipping = {"phone": "42", "extra": "kept"}
    meta = [{"id": 1, "key": "k", "value": None}, "not-a-dict-but-kept"]
    row = mapped(woo_customer(billing=billing, shipping=shipping, meta_data=meta))
    assert row.billing == billing
    assert row.shipping == shipping
    assert row.meta_data == meta


def test_minimal_customer_gets_defaults() -> None:
    row = mapped({"id": 1, "email": "a@b"})
    assert (row.first_name, row.last_name, row.username, row.role) == ("", "", "", "")
    assert (row.company, row.phone, row.avatar_url) == ("", "", "")
    assert (row.billing, row.shipping, row.meta_data) == ({}, {}, [])
    assert row.is_paying_customer is False
    assert row.woo_date_created is None and row.woo_date_modified is None
    assert row.raw == {"id": 1, "email": "a@b"}


@pytest.mark.parametrize("field", ["first_name", "last_name", "username", "role", "avatar_url"])
def test_null_strings_become_empty(field: str) -> None:
    assert getattr(mapped(woo_customer(**{field: None})), field) == ""


def test_null_containers_become_empty() -> None:
    row = mapped(woo_customer(billing=None, shipping=None, meta_data=None))
    assert (row.billing, row.shipping, row.meta_data) == ({}, {}, [])
    assert (row.company, row.phone) == ("", "")
    assert row.raw["billing"] is None  # raw keeps exactly what was sent


def test_null_company_and_phone_inside_billing() -> None:
    row = mapped(woo_customer(billing={"company": None, "phone": None}))
    assert (row.company, row.phone) == ("", "")


def test_numbers_become_strings() -> None:
    row = mapped(woo_customer(first_name=42, last_name=1.5, billing={"phone": 5551234}))
    assert (row.first_name, row.last_name, row.phone) == ("42", "1.5", "5551234")


@pytest.mark.parametrize(
    "name",
    ["José Ñúñez", "Zoë 🦊🏳️‍🌈", "محمد العلي", "שָׁלוֹם", "山田太郎", "a\u200fb\u202ec", "🧑‍🚀" * 60],
)
def test_unicode_names_kept_verbatim(name: str) -> None:
    row = mapped(woo_customer(first_name=name, last_name=name, username=name))
    assert row.first_name == row.last_name == row.username == name
    assert name in canonical_json(row.raw)  # ensure_ascii=False: hashed as UTF-8, not escapes


def test_four_byte_and_right_to_left_text_kept_exactly() -> None:
    name = "🦊𝕏𠜎 שלום مرحبا \u200f👩🏽‍🚀"  # astral planes, RTL, a RTL mark, a ZWJ sequence
    row = mapped(woo_customer(first_name=name, billing={"company": name}, meta_data=[name]))
    assert row.first_name == row.company == name and row.meta_data == [name]
    assert row.raw["first_name"] == name and not row.warnings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True), (False, False), (None, False),
        ("1", True), ("0", False), ("true", True), ("false", False),
    ],
)  # fmt: skip
def test_is_paying_customer(value: Any, expected: bool) -> None:
    assert mapped(woo_customer(is_paying_customer=value)).is_paying_customer is expected


def test_is_paying_customer_missing() -> None:
    raw = woo_customer()
    del raw["is_paying_customer"]
    assert mapped(raw).is_paying_customer is False


# -- dates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-03-21T19:09:28", datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)),
        ("2017-03-21T19:09:28Z", datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)),
        ("2017-03-21T19:09:28.5", datetime(2017, 3, 21, 19, 9, 28, 500000, tzinfo=UTC)),
        ("2017-03-21T19:09:28.123456789", datetime(2017, 3, 21, 19, 9, 28, 123456, tzinfo=UTC)),
        ("2017-03-21T22:09:28+03:00", datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)),
        ("2017-03-21T16:09:28-0300", datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)),
        ("2017-03-22T01:09:28.25+06:00", datetime(2017, 3, 21, 19, 9, 28, 250000, tzinfo=UTC)),
    ],
)
def test_gmt_dates_become_aware_utc(text: str, expected: datetime) -> None:
    row = mapped(woo_customer(date_created_gmt=text, date_modified_gmt=text))
    assert row.woo_date_created == expected
    assert row.woo_date_modified == expected
    assert row.woo_date_created is not None
    assert row.woo_date_created.utcoffset() == timedelta(0)


def test_local_date_is_used_as_utc_only_without_gmt() -> None:
    raw = woo_customer()
    del raw["date_created_gmt"]
    raw["date_modified_gmt"] = None
    row = mapped(raw)
    assert row.woo_date_created == datetime(2017, 3, 21, 16, 9, 28, tzinfo=UTC)
    assert row.woo_date_modified == datetime(2017, 3, 21, 16, 9, 30, tzinfo=UTC)


def test_gmt_wins_over_local() -> None:
    row = mapped(woo_customer(date_created="1999-01-01T00:00:00"))
    assert row.woo_date_created == datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)


def test_never_modified_customer_has_null_modified_date() -> None:
    row = mapped(woo_customer(date_modified=None, date_modified_gmt=None))
    assert row.woo_date_modified is None
    assert row.woo_date_created is not None


def test_both_created_dates_null() -> None:
    assert mapped(woo_customer(date_created=None, date_created_gmt=None)).woo_date_created is None


@pytest.mark.parametrize(
    "text",
    [
        "2017-03-21", "2017-03-21 19:09:28", "21/03/2017", "2017-3-21T19:09:28",
        "2017-13-01T00:00:00", "2017-02-30T00:00:00", "2017-03-21T24:00:00",
        "2017-03-21T19:09:28+25:00", "0000-01-01T00:00:00", "0001-01-01T00:00:00+01:00",
        "2017-03-21T19:09:28.", "2017-03-21T19:09:28 ", "", "٢٠١٧-03-21T19:09:28",
    ],
)  # fmt: skip
def test_bad_dates_are_refused_naming_the_field(text: str) -> None:
    error = refused(woo_customer(date_created_gmt=text))
    assert error.woo_id == 25
    assert "date_created_gmt" in error.message


def test_bad_local_date_refused_when_it_is_used() -> None:
    raw = woo_customer(date_modified="yesterday")
    del raw["date_modified_gmt"]
    assert "date_modified" in refused(raw).message


@pytest.mark.parametrize("value", [1490123368, True, ["2017-03-21T19:09:28"], {"d": 1}])
def test_non_string_dates_refused(value: Any) -> None:
    assert "date_modified_gmt" in refused(woo_customer(date_modified_gmt=value)).message


# -- the hash ------------------------------------------------------------------------------------


def test_hash_is_sha256_of_canonical_json() -> None:

    row = mapped(woo_customer())
    expected = hashlib.sha256(canonical_json(row.raw).encode()).hexdigest()
    assert row.source_hash == expected
    assert len(row.source_hash) == 64


def test_hash_ignores_key_order_and_links() -> None:
    raw = woo_customer()
    reordered = dict(reversed(list(raw.items())))
    reordered["billing"] = dict(reversed(list(raw["billing"].items())))
    reordered["_links"] = {"self": [{"href": "https://elsewhere.example/"}]}
    assert mapped(reordered).source_hash == mapped(raw).source_hash


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaf_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaf_paths(v, (*path, i))]
    return [path]


def test_hash_changes_when_any_field_changes() -> None:
    base = woo_customer()
    del base["_links"]
    seen = {mapped(base).source_hash}
    paths = _leaf_paths(base)
    assert len(paths) > 30
    for path in paths:
        changed = copy.deepcopy(base)
        target = changed
        for step in path[:-1]:
            target = target[step]
        old = target[path[-1]]
        if path == ("id",):
            target[path[-1]] = old + 1
        elif path[-1] == "email" and path[0] == "email":
            target[path[-1]] = "x" + old
        elif isinstance(old, bool):
            target[path[-1]] = not old
        elif isinstance(old, int):
            target[path[-1]] = old + 1
        elif isinstance(old, str) and old.endswith(("28", "30")) and "date" in path[0]:
            target[path[-1]] = old[:-1] + "9"
        else:
            target[path[-1]] = f"{old}!"
        digest = mapped(changed).source_hash
        assert digest not in seen, path
        seen.add(digest)


def test_hash_distinguishes_types_and_added_keys() -> None:
    base = mapped(woo_customer()).source_hash
    assert (
        mapped(woo_customer(first_name=42)).source_hash
        != mapped(woo_customer(first_name="42")).source_hash
    )
    assert mapped(woo_customer(extra=None)).source_hash != base
    assert mapped(woo_customer(meta_data=[])).source_hash != base


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, 0, -3, 1.0, "25", [25], 2**63])
def test_bad_ids(value: Any) -> None:
    error = refused(woo_customer(id=value))
    assert error.woo_id is None
    assert "id" in error.message


def test_missing_id() -> None:
    raw = woo_customer()
    del raw["id"]
    assert "id" in refused(raw).message


def test_largest_bigint_id_is_fine() -> None:
    assert mapped(woo_customer(id=2**63 - 1)).woo_id == 2**63 - 1


@pytest.mark.parametrize("raw", [None, [], "customer", 5])
def test_non_object_customer(raw: Any) -> None:
    assert "object" in refused(raw).message


@pytest.mark.parametrize(
    "email",
    [
        None, 5, True, "", "plain", "@example.com", "john@", "a@b@c", "john doe@example.com",
        "john@exa mple.com", "john@example.com\n", "\tjohn@example.com",
        "a" * 310 + "@example.com",
    ],
)  # fmt: skip
def test_bad_emails(email: Any) -> None:
    error = refused(woo_customer(email=email))
    assert error.woo_id == 25
    assert error.message.startswith("email")


def test_missing_email() -> None:
    raw = woo_customer()
    del raw["email"]
    assert refused(raw).message.startswith("email")


def test_email_at_limit() -> None:
    email = "a" * 308 + "@example.com"
    assert len(email) == 320
    assert mapped(woo_customer(email=email)).email == email


def test_unicode_email_is_kept() -> None:
    assert mapped(woo_customer(email="josé@exämple.com")).email == "josé@exämple.com"


@pytest.mark.parametrize("field", ["first_name", "last_name", "username", "role", "avatar_url"])
def test_long_text_is_kept_whole(field: str) -> None:
    # The columns are text (migration 0007): no length limit but the e-mail's.
    text = "x" * 70_000
    row = mapped(woo_customer(**{field: text}))
    assert getattr(row, field) == text and row.raw[field] == text and not row.warnings


@pytest.mark.parametrize("field", ["company", "phone"])
def test_long_billing_text_is_kept_whole(field: str) -> None:
    assert getattr(mapped(woo_customer(billing={field: "9" * 5000})), field) == "9" * 5000


def test_number_too_long_to_print() -> None:
    assert "billing.phone" in refused(woo_customer(billing={"phone": 10**5000})).message


@pytest.mark.parametrize("value", [True, ["John"], {"given": "John"}])
def test_non_scalar_strings_refused(value: Any) -> None:
    assert "first_name" in refused(woo_customer(first_name=value)).message


def test_non_finite_number_as_string_refused() -> None:
    assert "first_name" in refused(woo_customer(first_name=float("inf"))).message


@pytest.mark.parametrize("field", ["billing", "shipping"])
@pytest.mark.parametrize("value", ["", "none", 0, [], [{"phone": "1"}], True])
def test_address_must_be_object(field: str, value: Any) -> None:
    assert field in refused(woo_customer(**{field: value})).message


@pytest.mark.parametrize("value", [{}, "", 0, {"id": 1}, True])
def test_meta_data_must_be_list(value: Any) -> None:
    assert "meta_data" in refused(woo_customer(meta_data=value)).message


@pytest.mark.parametrize("value", ["yes", "", "2", 1, 0, 1.0, [], {}])
def test_bad_is_paying_customer(value: Any) -> None:
    assert "is_paying_customer" in refused(woo_customer(is_paying_customer=value)).message


def test_nul_in_a_string_field_is_removed_with_a_warning() -> None:
    raw = woo_customer(first_name="Jo\x00hn")
    row = mapped(raw)
    assert row.first_name == "John"
    assert row.warnings == ("NUL characters removed from first_name",)
    # raw keeps what the store sent, the NUL written as the six characters \u0000
    assert row.raw["first_name"] == "Jo\\u0000hn"
    assert json.loads(row.raw_json)["first_name"] == "Jo\\u0000hn"
    assert "\x00" not in row.raw_json
    # the hash is of the customer as sent: NUL included, so it differs from "John"'s
    assert row.source_hash == source_hash({k: v for k, v in raw.items() if k != "_links"})
    assert row.source_hash != mapped(woo_customer(first_name="John")).source_hash


def test_nul_deep_inside_jsonb_is_removed_from_the_columns() -> None:
    meta = [{"id": 1, "key": "k", "value": {"deep": ["ok", "b\x00d"]}}]
    row = mapped(woo_customer(meta_data=meta))
    assert row.meta_data == [{"id": 1, "key": "k", "value": {"deep": ["ok", "bd"]}}]
    assert json.loads(row.clean_json)["meta_data"] == row.meta_data
    assert row.raw["meta_data"][0]["value"]["deep"][1] == "b\\u0000d"
    assert row.warnings == ("NUL characters removed from meta_data[0].value.deep[1]",)


def test_nul_in_a_key() -> None:
    row = mapped(woo_customer(billing={"ph\x00ne": "1"}))
    assert row.billing == {"phne": "1"} and row.raw["billing"] == {"ph\\u0000ne": "1"}
    assert "\x00" not in row.warnings[0] and "billing" in row.warnings[0]


def test_nul_in_email_is_removed_before_the_address_is_checked() -> None:
    assert mapped(woo_customer(email="jo\x00hn@example.com")).email == "john@example.com"


def test_many_nul_fields_are_summarised() -> None:
    row = mapped(woo_customer(meta_data=[f"v{i}\x00" for i in range(8)]))
    assert row.warnings[0].endswith("and 3 more")


def test_text_spelling_backslash_u0000_is_not_a_nul() -> None:
    row = mapped(woo_customer(first_name="a\\u0000b"))
    assert row.first_name == "a\\u0000b" and not row.warnings and row.clean_json is None


def test_customer_without_nul_sends_no_clean_copy() -> None:
    row = mapped(woo_customer())
    assert row.clean_json is None and row.warnings == ()


def test_nul_in_links_is_irrelevant() -> None:
    row = mapped(woo_customer(_links={"self": [{"href": "\x00"}]}))
    assert row.woo_id == 25 and not row.warnings


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_meta_data_nested_to_the_limit_is_kept_exactly() -> None:
    # customer (1) -> meta_data list (2) -> entry object (3) -> value: 509 more levels = 512
    meta = [{"id": 1, "key": "_serialized", "value": nested(MAX_JSON_DEPTH - 3)}]
    row = mapped(woo_customer(meta_data=meta))
    assert row.meta_data == meta and json.loads(row.raw_json)["meta_data"] == meta


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 2, 2000, 20_000])
def test_meta_data_nested_past_the_limit_fails_the_customer(depth: int) -> None:
    error = refused(woo_customer(meta_data=[{"id": 1, "key": "k", "value": nested(depth)}]))
    assert error.woo_id == 25
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error.message
    assert error.message.startswith("meta_data[0].value") and len(error.message) < 200


def test_lone_surrogate_refused() -> None:
    error = refused(woo_customer(last_name="D\udc80e"))
    assert "last_name" in error.message
    error.message.encode("utf-8")  # the error text itself is storable


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_refused_anywhere(value: float) -> None:
    assert "shipping.lat" in refused(woo_customer(shipping={"lat": value})).message


class _Dict(dict):  # type: ignore[type-arg]
    """A mapping that is not a plain dict: json decides how it is written."""


@pytest.mark.parametrize(
    "value",
    [
        {"a": None, "b": 1.5},
        [2.5e-05, 1e-05, 0.0001],
        {"x": 1e-07, "y": 1e-10, "z": 1.5e-300},
        {"t": "null 0.00001 e-7"},  # text that reads like them: the slow path, the same text
        [float("nan"), None],
        {"k": float("-inf")},
        {"a": None, "deep": [[{"x": float("nan")}], 1.5]},
        _Dict(a=None, b=float("inf")),
        {"a": None, "b": (1.5, float("nan"))},
        {"a": None, "b": [True, 2, "x", 0.5, {"c": None}]},
    ],
)
def test_canonical_json_where_orjson_writes_otherwise(value: object) -> None:
    try:
        expected = json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except ValueError:
        with pytest.raises(ValueError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


def test_a_customer_holding_null_is_written_by_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real null (a date never modified) is no NaN written by orjson: no slow path for it."""
    customer = woo_customer(date_modified=None, date_modified_gmt=None, meta_data=[{"v": 2.5}])
    expected = json.dumps(
        customer, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )

    def slow(*args: object, **kwargs: object) -> str:
        raise AssertionError("json.dumps called")

    monkeypatch.setattr(json, "dumps", slow)
    assert canonical_json(customer) == expected
    nested_nan = [{"a": None, "b": [[float("nan")]]}]
    with pytest.raises(AssertionError, match="json.dumps called"):
        canonical_json(nested_nan)


def deep_list(depth: int, leaf: object) -> object:
    value: object = [leaf, None]
    for _ in range(depth):
        value = [value]
    return value


def test_a_null_beside_a_deep_nan_is_refused() -> None:
    # 200 levels: as deep as orjson writes (past 255 it refuses, and json decides anyway).
    with pytest.raises(ValueError):
        canonical_json(deep_list(200, float("nan")))
    finite = deep_list(200, 0.5)
    assert canonical_json(finite) == json.dumps(finite, separators=(",", ":"))


def test_non_json_values_refused() -> None:
    assert "meta_data[0]" in refused(woo_customer(meta_data=[{1, 2}])).message
    # Mixed key types cannot be put in canonical order (all-int keys are plain JSON text).
    assert "non-string key" in refused(woo_customer(billing={1: "x", "a": "y"})).message


def test_error_str_names_the_customer() -> None:
    error = refused(woo_customer(email="nope"))
    assert str(error).startswith("customer 25: email")


# -- helpers for the SQL layer ---------------------------------------------------------------------


def test_raw_json_is_the_hashed_canonical_text_of_raw() -> None:
    row = mapped(woo_customer())
    assert row.raw_json == canonical_json(row.raw)
    assert json.loads(row.raw_json) == row.raw
    assert hashlib.sha256(row.raw_json.encode()).hexdigest() == row.source_hash
    assert "raw_json" not in CUSTOMER_COLUMNS  # travels, but is no column


def test_jsonb_storable() -> None:
    assert jsonb_storable({"a": [1, "b", None, 2.5]})
    assert not jsonb_storable({"a": "\x00"})  # storable only once the NUL is handled
    assert not jsonb_storable(nested(MAX_JSON_DEPTH + 1))
    assert not jsonb_storable({"a": float("nan")})
    assert not jsonb_storable({"a": "\ud800"})


def test_different_tenants_same_customer() -> None:
    raw = woo_customer()
    a = map_customer(raw, org_id=uuid4(), connection_id=CONN)
    b = map_customer(raw, org_id=uuid4(), connection_id=CONN)
    assert a.org_id != b.org_id
    assert a.source_hash == b.source_hash
