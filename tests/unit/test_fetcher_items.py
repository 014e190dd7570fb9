"""What the fetcher accepts from a page: items with a usable id, the store's claimed totals, and
the client's parsing of a page whose items are not all customers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.fetcher import items, paging
from shared.woocommerce import RetryPolicy, StoreConfig, WooClient

FAST = RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_max_s=0.01, budget_s=5.0)
CONFIG = StoreConfig(
    url="https://shop.example",
    consumer_key="ck_" + "1" * 40,
    consumer_secret=SecretStr("cs_" + "2" * 40),
    auth="basic",
)


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"id": 2**63}, "above the largest storable id"),
        ({"id": 10**40}, "above the largest storable id"),
        ({"id": "abc"}, "is a JSON string"),
        ({"id": "12"}, "is a JSON string"),
        ({"id": None}, "is a JSON null"),
        ({"id": True}, "is a JSON boolean"),
        ({"id": 1.0}, "is a JSON number"),
        ({"id": 0}, "is not positive"),
        ({"id": -3}, "is not positive"),
        ({"email": "a@example.com"}, "has no id"),
        ("customer 5", "is a JSON string, not an object"),
        (None, "is a JSON null, not an object"),
        ([1, 2], "is a JSON array, not an object"),
    ],
)
def test_items_without_a_usable_id_are_named(item: Any, problem: str) -> None:
    found = items.id_problem(item)
    assert found is not None and problem in found


@pytest.mark.parametrize("woo_id", [1, 2**63 - 1, 123456])
def test_usable_ids_pass(woo_id: int) -> None:
    assert items.id_problem({"id": woo_id}) is None


def test_split_keeps_customers_in_order_and_rejects_with_stable_negative_ids() -> None:
    page = [{"id": 3}, {"id": "x", "email": "e\x00@example.com"}, {"id": 5}, "junk", {"id": "x"}]
    customers, rejected = items.split(page)
    assert customers == [{"id": 3}, {"id": 5}]
    assert len(rejected) == 3 and all(r.woo_id < 0 for r in rejected)
    assert len({r.woo_id for r in rejected}) == 3  # different items, different ids
    again = items.split(page)[1]
    assert [r.woo_id for r in again] == [r.woo_id for r in rejected]  # the same item, same id
    assert "\x00" not in rejected[0].error and "\\u0000" in rejected[0].error
    assert "not synced" in rejected[0].error


def test_a_huge_rejected_item_is_shown_cut_short() -> None:
    _, (rejected,) = items.split([{"id": "x", "bio": "y" * 100_000}])
    assert len(rejected.error) < 600 and rejected.error.endswith("…")


def test_order_checks() -> None:
    assert items.out_of_order([1, 2, 9]) is None
    assert items.out_of_order([1, 9, 4]) == (9, 4)
    assert items.out_of_order([1, 1]) == (1, 1)  # the same id twice is no order either


def test_claimed_totals_above_the_limit_are_refused_with_the_header_and_limit() -> None:
    assert items.total_problem("X-WP-Total", 10_000_000, 10_000_000) is None
    assert items.total_problem("X-WP-Total", None, 10) is None
    problem = items.total_problem("X-WP-Total", 10**9, 10_000_000)
    assert problem and "X-WP-Total: 1,000,000,000" in problem and "10,000,000" in problem
    assert "WOOSYNC_MAX_STORE_CUSTOMERS" in problem
    huge = items.total_problem("X-WP-TotalPages", 10**30, 2**31 - 1)
    assert huge and "more than 30 digits" in huge and "2,147,483,647" in huge


def test_a_short_page_ends_the_crawl_only_when_its_total_agrees() -> None:
    assert not paging.short_page_contradicts(0, 100, 100, 5_000)  # a full page
    assert not paging.short_page_contradicts(950, 50, 100, 1_000)  # the end, as claimed
    assert not paging.short_page_contradicts(950, 50, 100, None)  # no claim to check
    assert paging.short_page_contradicts(0, 50, 100, 3_000)  # a cap
    assert paging.short_page_contradicts(950, 10, 100, 1_000)  # a total that lies


def test_the_tail_bound_follows_the_limit_and_page_size() -> None:
    assert paging.max_pages(1_000, 100) == paging.pages_for(1_000, 100) + 1
    assert paging.max_pages(10_000_000, 1) == 10_000_001


def test_a_window_counts_rejected_items_in_its_size() -> None:
    window = paging.Window.of(0, [4, 2], count=3)
    assert (window.count, window.first_id, window.last_id) == (3, 2, 4)
    assert window.span(3) == (paging.LOWEST, 4)  # full: proves no more than its last id


def _store(body: bytes, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers=headers or {})

    return httpx.MockTransport(answer)


async def test_the_client_hands_over_items_without_a_usable_id() -> None:
    body = b'[{"id": 1, "_links": {}}, {"id": 9223372036854775808}, "x", {"email": "a"}]'
    async with WooClient(CONFIG, policy=FAST, transport=_store(body)) as client:
        page = await client.list_customers(page=1, per_page=10)
    assert page.customers == [{"id": 1}, {"id": 2**63}, "x", {"email": "a"}]


async def test_json_nested_deeper_than_python_parses_keeps_its_page() -> None:
    """The too-deep part is cut (shared.jsondepth), so the item stays one customer, for the
    syncer to refuse alone; the page is read once."""
    calls = 0
    deep = b'[{"id":7,"meta_data":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}]"

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, content=deep)

    async with WooClient(CONFIG, policy=FAST, transport=httpx.MockTransport(answer)) as client:
        page = await client.list_customers(page=1, per_page=10)
    assert calls == 1
    assert [c["id"] for c in page.customers] == [7]


async def test_a_total_of_thousands_of_digits_stays_absurd() -> None:
    headers = [(b"X-WP-Total", b"9" * 5000), (b"X-WP-TotalPages", "١٢".encode())]  # Arabic digits

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[]", headers=headers)

    async with WooClient(CONFIG, policy=FAST, transport=httpx.MockTransport(answer)) as client:
        page = await client.list_customers(page=1, per_page=10)
    assert page.total == 10**30 and page.total_pages is None


