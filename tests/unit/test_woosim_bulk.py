"""The simulator's bulk store: a large store cycled from a small generated base, served in id
order with distinct ids and account emails, and refusing what it cannot answer."""

from __future__ import annotations

import json

import pytest

from tools.woosim import data
from tools.woosim.bulk import BulkStore
from tools.woosim.store import ListQuery, StoreError


def bulk(count: int, base: int = 40) -> BulkStore:
    return BulkStore(count, data.iter_users(base, seed=3))


def every_page(store: BulkStore, per_page: int = 7, order: str = "asc") -> list[dict]:
    out: list[dict] = []
    offset = 0
    while True:
        records, total = store.page(
            ListQuery(role="all", orderby="id", order=order, offset=offset, number=per_page)
        )
        assert total == len(store)
        if not records:
            return out
        out += [json.loads(r.json_open + "}") for r in records]
        offset += per_page


def test_a_bulk_store_serves_count_users_in_id_order_with_distinct_emails() -> None:
    store = bulk(130)
    customers = every_page(store)
    ids = [c["id"] for c in customers]
    assert len(store) == len(ids) == 130
    assert ids == sorted(set(ids))
    assert len({c["email"].lower() for c in customers}) == 130
    assert [c["id"] for c in every_page(store, per_page=9, order="desc")] == ids[::-1]
    base = {c["id"]: c for c in customers[:40]}
    for customer in customers[40:]:  # a copy of a base user but for its id and email
        record = store.get(customer["id"])
        assert record is not None and json.loads(record.json_open + "}") == customer
        original = base[(customer["id"] - 1) % max(base) + 1]
        assert customer["last_name"] == original["last_name"]
        assert customer["billing"]["city"] == original["billing"]["city"]
    assert store.get(ids[-1] + 1) is None and store.get(0) is None


def test_a_bulk_store_smaller_than_its_base_is_the_base() -> None:
    assert len(bulk(25, base=25)) == 25
    assert [c["id"] for c in every_page(bulk(25, base=25))] == [
        u.customer["id"] for u in data.iter_users(25, seed=3)
    ]


def test_a_bulk_store_refuses_writes_filters_and_whole_listings() -> None:
    store = bulk(100)
    with pytest.raises(StoreError):
        store.page(ListQuery(role="customer", orderby="id"))
    with pytest.raises(StoreError):
        store.create({"email": "x@example.com"})
    with pytest.raises(StoreError):
        store.update(1, {"first_name": "x"})
    with pytest.raises(StoreError):
        store.delete(1)
    with pytest.raises(StoreError):
        store.customers_json()
