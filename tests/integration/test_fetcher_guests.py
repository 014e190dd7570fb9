"""The fetcher's guest buyers phase against a real simulated store (with orders) and database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import asyncpg

from services.fetcher.handlers import handle_sync_requested
from shared.guests import GUEST_MARK, guest_woo_id
from shared.messages import CustomerBatch, FetchCompleted, FetchFailed
from tests.helpers import Recorder, fetcher_deps, queue_new_org_sync
from tools.woosim.testing import running_simulator


def guest_order(email: Any, first: str = "G", customer_id: int = 0) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "billing": {"email": email, "first_name": first, "last_name": "Buyer"},
        "shipping": {"city": first},
        "date_created_gmt": "2024-05-01T12:00:00",
    }


ORDERS = [
    guest_order("Ann@Example.com", "Ann1"),
    guest_order(" ann@example.com ", "Ann2"),
    guest_order("bob@example.com", "Bob"),
    guest_order("", "NoMail"),
    guest_order(None, "NullMail"),
    guest_order("carl@example.com", "Carl", customer_id=3),  # an account customer's order
    guest_order("ANN@EXAMPLE.COM\t", "Ann3"),
] + [guest_order(f"g{n}@example.com", f"G{n}") for n in range(20)]
GUEST_KEYS = {"ann@example.com", "bob@example.com"} | {f"g{n}@example.com" for n in range(20)}


async def _with_guests(pool: asyncpg.Pool, job_id: Any) -> None:
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET include_guests = true WHERE id = $1", job_id
    )


def _guests(recorder: Recorder) -> dict[str, dict[str, Any]]:
    return {
        c[GUEST_MARK]["key"]: c
        for b in recorder.of(CustomerBatch)
        for c in b.customers
        if GUEST_MARK in c
    }


async def test_guests_are_read_deduplicated_and_published_after_the_customers(
    pool: asyncpg.Pool,
) -> None:
    async with running_simulator(customers=30, seed=11) as sim:
        await sim.add_orders(*ORDERS)
        request = await queue_new_org_sync(pool, sim, batch_size=10, concurrency=2)
        await _with_guests(pool, request.job_id)
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))
        paths = [r.get("path", "") for r in await sim.requests()]

    guests = _guests(recorder)
    assert set(guests) == GUEST_KEYS
    assert guests["ann@example.com"]["first_name"] == "Ann3"  # the newest order's billing
    assert guests["ann@example.com"][GUEST_MARK]["orders"] == 3
    account_ids = [i for i in recorder.customer_ids() if i > 0]
    assert len(account_ids) == len(set(account_ids)) == 30
    lines = await pool.fetch(
        "SELECT woo_id, kind FROM woo_customer_sync_queue_line WHERE job_id = $1", request.job_id
    )
    assert sorted(r["woo_id"] for r in lines if r["kind"] == "guest") == sorted(
        guest_woo_id(k) for k in GUEST_KEYS
    )
    (completed,) = recorder.of(FetchCompleted)
    assert completed.customers == 30 + len(GUEST_KEYS)
    assert recorder.messages[-1] is completed
    event = await pool.fetchrow(
        "SELECT level, details FROM woo_sync_activity WHERE job_id = $1 AND event = 'fetch.guests'",
        request.job_id,
    )
    assert event["level"] == "warning"
    assert event["details"]["skipped_no_email"] == 2
    assert event["details"]["orders"] == len(ORDERS) - 1  # the store sent guests' orders only
    assert any("/orders" in p for p in paths)


async def test_a_store_ignoring_the_guest_filter_still_gives_only_guests(
    pool: asyncpg.Pool,
) -> None:
    async with running_simulator(customers=5, seed=12) as sim:
        await sim.add_orders(*ORDERS)
        await sim.set_faults(ignore_customer_filter=True)
        request = await queue_new_org_sync(pool, sim, batch_size=10)
        await _with_guests(pool, request.job_id)
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))

    assert set(_guests(recorder)) == GUEST_KEYS  # carl's order is an account's: no guest
    assert not recorder.of(FetchFailed)


async def test_redelivery_publishes_no_guest_twice(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=5, seed=13) as sim:
        await sim.add_orders(*ORDERS)
        request = await queue_new_org_sync(pool, sim, batch_size=10)
        await _with_guests(pool, request.job_id)
        first, again = Recorder(), Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, first))
        await pool.execute(
            "UPDATE woo_customer_sync_queue SET fetch_done_at = NULL WHERE id = $1", request.job_id
        )
        await handle_sync_requested(request, fetcher_deps(pool, again))

    assert len(_guests(first)) == len(GUEST_KEYS)
    assert _guests(again) == {}
    assert [m.customers for m in again.of(FetchCompleted)] == [5 + len(GUEST_KEYS)]


async def test_without_the_option_no_order_is_read(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=5, seed=14) as sim:
        await sim.add_orders(*ORDERS)
        request = await queue_new_org_sync(pool, sim, batch_size=10)
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))
        paths = [r.get("path", "") for r in await sim.requests()]

    assert _guests(recorder) == {}
    assert all(i > 0 for i in recorder.customer_ids())
    assert not any("/orders" in p for p in paths)
    assert [m.customers for m in recorder.of(FetchCompleted)] == [5]


async def test_orders_deleted_during_the_crawl_do_not_hide_guests(pool: asyncpg.Pool) -> None:
    """Ten orders of the first window are deleted right after it is read: every later order
    moves ten places down, past the next window's start. The windows do not join, the crawl
    reads that spot again, and every guest still in the store is found."""
    async with running_simulator(customers=3, seed=15) as sim:
        added = await sim.add_orders(*[guest_order(f"b{n}@example.com") for n in range(60)])
        request = await queue_new_org_sync(pool, sim, batch_size=20)
        await _with_guests(pool, request.job_id)
        recorder = Recorder()
        deps = fetcher_deps(pool, recorder)
        deleted: list[int] = []

        @asynccontextmanager
        async def open_client(
            config: Any, concurrency: int, gate: Any = None
        ) -> AsyncIterator[Any]:
            async with deps.open_client(config, concurrency, gate) as client:
                read = client.list_guest_orders

                async def then_delete(*args: Any, **kwargs: Any) -> Any:
                    result = await read(*args, **kwargs)
                    if not deleted:
                        deleted.extend(o["id"] for o in added[5:15])
                        await sim.delete_orders(*deleted)
                    return result

                client.list_guest_orders = then_delete  # type: ignore[method-assign]
                yield client

        await handle_sync_requested(request, replace(deps, open_client=open_client))

    kept = {f"b{n}@example.com" for n in range(60)} - {f"b{n}@example.com" for n in range(5, 15)}
    assert len(deleted) == 10
    assert kept <= set(_guests(recorder))  # the deleted ones were read before they went
    assert not recorder.of(FetchFailed)
