"""Guest buyers: e-mail keys, dedup of orders into guests, and their mapping to rows."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from shared.guests import GUEST_MARK, GuestBook, guest_woo_id, is_guest_order, normalize_email
from shared.mapping import MappingError, map_customer


def order(oid: int, email: Any, *, customer_id: Any = 0, first: str = "Ann", **extra: Any) -> dict:
    return {
        "id": oid,
        "customer_id": customer_id,
        "billing": {"email": email, "first_name": first, "last_name": "Lee", "phone": f"p{oid}"},
        "shipping": {"city": f"city{oid}"},
        "date_created_gmt": f"2024-01-{oid:02d}T10:00:00",
        **extra,
    }


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann@Example.COM \t", "ann@example.com"),
        ("\u00c9mile@b\u00fccher.de", "\u00e9mile@b\u00fccher.de"),
        ("E\u0301mile@example.com", "\u00e9mile@example.com"),  # NFC: one guest, two spellings
    ],
)
def test_normalize_email_keys(raw: str, key: str) -> None:
    assert normalize_email(raw) == key


@pytest.mark.parametrize(
    "raw", [None, "", "   ", "no-at-sign", "@example.com", "a@", "a b@example.com", "a@b@c", 42]
)
def test_no_usable_email_has_no_key(raw: Any) -> None:
    assert normalize_email(raw) is None


def test_guest_ids_are_negative_stable_and_distinct() -> None:
    a, b = guest_woo_id("a@example.com"), guest_woo_id("b@example.com")
    assert a < 0 and b < 0 and a != b
    assert guest_woo_id("a@example.com") == a


def test_only_customer_id_zero_is_a_guest_order() -> None:
    assert is_guest_order(order(1, "a@x.io"))
    assert not is_guest_order(order(1, "a@x.io", customer_id=7))
    assert not is_guest_order(order(1, "a@x.io", customer_id=False))
    assert not is_guest_order(order(1, "a@x.io", customer_id="0"))


def test_book_dedups_by_key_and_newest_order_wins() -> None:
    book = GuestBook()
    for item in [
        order(1, "Ann@Example.com", first="Old"),
        order(3, "  ann@example.COM ", first="New"),
        order(2, "bob@example.com"),
        order(3, "ann@example.com", first="Repeat"),  # a window overlap: counted once
        order(4, "", first="Nobody"),
        order(5, None),
        order(6, "carl@example.com", customer_id=9),
    ]:
        book.add(item)
    guests = {doc[GUEST_MARK]["key"]: doc for doc in book.customers()}
    assert set(guests) == {"ann@example.com", "bob@example.com"}
    ann = guests["ann@example.com"]
    assert ann["first_name"] == "New"
    assert ann["email"] == "ann@example.COM"  # as the newest order spelled it, trimmed
    assert ann["billing"]["phone"] == "p3"
    assert ann["shipping"] == {"city": "city3"}
    assert ann["date_created_gmt"] == "2024-01-01T10:00:00"
    assert ann["date_modified_gmt"] == "2024-01-03T10:00:00"
    assert ann[GUEST_MARK] == {
        "key": "ann@example.com",
        "orders": 2,
        "first_order_id": 1,
        "last_order_id": 3,
    }
    assert ann["id"] == guest_woo_id("ann@example.com")
    assert book.skipped == [4, 5]
    assert book.account_orders == 1
    assert book.orders_read == 6


def test_order_of_reading_does_not_change_the_guest() -> None:
    items = [order(1, "a@x.io", first="One"), order(2, "A@x.io", first="Two")]
    forward, backward = GuestBook(), GuestBook()
    for item in items:
        forward.add(item)
    for item in reversed(items):
        backward.add(item)
    assert forward.customers() == backward.customers()


def test_guest_document_maps_to_a_guest_row() -> None:
    book = GuestBook()
    book.add(order(1, " Ann@Example.com"))
    doc = book.customers()[0]
    row = map_customer(doc, org_id=uuid4(), connection_id=uuid4())
    assert row.kind == "guest"
    assert row.guest_key == "ann@example.com"
    assert row.woo_id == guest_woo_id("ann@example.com") < 0
    assert row.email == "Ann@Example.com"
    assert row.role == "guest"
    assert row.phone == "p1"


def test_account_customer_maps_to_an_account_row() -> None:
    row = map_customer(
        {"id": 5, "email": "a@x.io", "role": "customer"}, org_id=uuid4(), connection_id=uuid4()
    )
    assert (row.kind, row.guest_key) == ("account", None)


@pytest.mark.parametrize(
    "doc",
    [
        # a store's customer claiming to be a guest keeps a positive id: refused
        {"id": 5, "email": "a@x.io", GUEST_MARK: {"key": "a@x.io"}},
        # an id that is not the key's
        {"id": -5, "email": "a@x.io", GUEST_MARK: {"key": "a@x.io"}},
        # a key that is not normalized
        {"id": guest_woo_id("A@x.io"), "email": "a@x.io", GUEST_MARK: {"key": "A@x.io"}},
        {"id": -5, "email": "a@x.io", GUEST_MARK: "a@x.io"},
    ],
)
def test_forged_guest_documents_fail(doc: dict) -> None:
    with pytest.raises(MappingError):
        map_customer(doc, org_id=uuid4(), connection_id=uuid4())
