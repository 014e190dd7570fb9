"""A misbehaving store, and customers that cannot be stored, with every service a real process.

- Transient faults of every kind (429 with ``Retry-After`` as seconds and as an HTTP date,
  500/502/503/504, timeouts, bodies cut short, invalid JSON) during a 2,000-customer sync: each
  retried, and the result is exact.
- Customers added and deleted while the crawl runs (``X-WP-TotalPages`` changes between
  requests): every customer that existed throughout, and every one added, is synced exactly.
- A store that keeps failing: the job fails within a bounded time with a clear ``last_error``;
  ``retry`` resumes the crawl where it stopped (the pages already read are not read again) and
  the job ends ``done``, exact.
- Odd customers (issue 8): a NUL character (stored without it, with a warning), a 70,000-character
  name, emoji and right-to-left text, meta_data nested 200 levels (all stored exactly); meta_data
  nested past the limit, a lone surrogate and a 333-character address fail alone on their first
  delivery, parked with the error in their headers; the rest of their batch is synced.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest

from services.syncer.handlers import NOT_RETRYABLE
from shared import jsondepth
from shared.mapping import MAX_JSON_DEPTH
from shared.messages import CustomerBatch
from shared.settings import Settings
from shared.topology import PARKED_ATTEMPTS_HEADER, PARKED_ERROR_HEADER, Topology
from tests.conftest import AMQP_URL
from tests.e2e.fault_stack import IMPATIENT_STORE, PATIENT_STORE, running
from tests.e2e.harness import (
    Stack,
    action,
    assert_exact,
    new_org,
    start_sync,
    wait_final,
)
from tests.e2e.processes import fetch, pages_recorded
from tests.helpers import wait_until
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e]
T = TypeVar("T")



def assert_no_secret(stack: Stack, sim: SimHandle, *texts: str) -> None:
    for text in (stack.logs(), *texts):
        assert sim.consumer_secret not in text


@pytest.mark.timeout(120)
async def test_transient_store_faults_are_retried_to_an_exact_result(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    # Every kind of fault at least once (the script is served first, one entry per request),
    # then a fifth of the requests fail at random.
    script = ["429", "ok", "500", "ok", "cut", "502", "ok", "bad_json", "503", "ok", "slow",
              "504", "ok", "429", "ok"]  # fmt: skip
    faults = {
        "rate_429": 0.05, "rate_5xx": 0.05, "rate_cut": 0.04, "rate_bad_json": 0.03,
        "rate_slow": 0.03, "slow_ms": 1500, "retry_after": 1, "retry_after_http_date": True,
        "seed": 7,
    }  # fmt: skip
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        with spawn_simulator(customers=2_000, seed=31) as sim:
            store = await sim.customers()
            await sim.set_faults(script=script, **faults)
            job = await start_sync(stack, org, sim)

            # Halfway, 429s start saying Retry-After in seconds instead of as a date.
            await wait_until(
                lambda: _at_least(pages_recorded(settings, job["job_id"]), 8), "halfway"
            )
            await sim.set_faults(retry_after_http_date=False)

            row = await wait_final(settings, job["job_id"], timeout_s=90)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job["job_id"], store)
            stats = await sim.stats()

    by_fault = stats["by_fault"]
    for kind in ("429", "5xx", "cut", "bad_json"):
        assert by_fault.get(kind, 0) >= 1, by_fault
    assert {429, 500, 502, 503, 504} <= {int(s) for s in stats["by_status"]}, stats["by_status"]
    logs = stack.logs()
    for kind in ("HTTP 429", "HTTP 503", "ReadTimeout", "invalid JSON"):
        assert kind in logs, f"no retry logged for {kind}"
    assert_no_secret(stack, sim)


async def gather_bounded(calls: Iterable[Awaitable[T]], limit: int = 8) -> list[T]:
    """Control-API calls, several at a time, so the store changes while the crawl runs."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with slots:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def _at_least(pages: Any, n: int) -> bool:
    return len(await pages) >= n


@pytest.mark.timeout(90)
async def test_customers_added_and_deleted_during_the_crawl(
    settings: Settings, tmp_path: Path
) -> None:
    """X-WP-TotalPages grows and shrinks between requests while the crawl reads."""
    org = await new_org(settings)
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        # Pages of 20, so a few dozen control-API calls move X-WP-TotalPages by pages.
        with spawn_simulator(customers=300, seed=32, latency_ms=400) as sim:
            before = {c["id"]: c for c in await sim.customers()}
            job = await start_sync(stack, org, sim, batch_size=20, concurrency=1)
            await wait_until(
                lambda: _at_least(pages_recorded(settings, job["job_id"]), 2), "a few pages"
            )
            ids = sorted(before)
            # A few already read, more still ahead of the crawl; then two pages of new ones.
            deleted = ids[5:8] + ids[-100::12]
            await gather_bounded(sim.delete_customer(woo_id) for woo_id in deleted)
            created = await gather_bounded(
                sim.add_customer(email=f"late{n}@shop.example", first_name=f"Late {n}")
                for n in range(40)
            )
            added = [c["id"] for c in created]
            after = {c["id"]: c for c in await sim.customers()}
            fetching = await fetch(
                settings,
                "SELECT 1 FROM woo_customer_sync_queue WHERE id = $1::uuid "
                "AND fetch_done_at IS NULL",
                job["job_id"],
            )
            assert fetching, "the crawl ended before the store changed; the test proves nothing"

            row = await wait_final(settings, job["job_id"], timeout_s=60)
            assert row["state"] == "done", row["last_error"]

    rows = await fetch(
        settings, "SELECT woo_id, raw FROM customer WHERE org_id = $1::uuid", org.org_id
    )
    synced = {r["woo_id"]: r["raw"] for r in rows}
    throughout = set(before) - set(deleted)
    assert throughout | set(added) <= set(synced), "a customer that existed was missed"
    assert set(synced) <= set(before) | set(added)
    for woo_id in throughout | set(added):
        assert synced[woo_id] == after[woo_id], f"customer {woo_id} differs from the store"
    lines = await fetch(
        settings,
        "SELECT state, count(*) AS n FROM woo_customer_sync_queue_line "
        "WHERE job_id = $1::uuid GROUP BY state",
        job["job_id"],
    )
    assert {r["state"]: r["n"] for r in lines} == {"done": len(synced)}
    assert (row["total"], row["done_count"], row["failed_count"]) == (len(synced), len(synced), 0)


@pytest.mark.timeout(120)
async def test_failing_store_fails_the_job_and_retry_resumes_where_it_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, IMPATIENT_STORE) as stack:
        with spawn_simulator(customers=2_000, seed=33, latency_ms=200) as sim:
            store = await sim.customers()
            job = await start_sync(stack, org, sim, concurrency=2)
            job_id = job["job_id"]
            await wait_until(lambda: _at_least(pages_recorded(settings, job_id), 5), "5 pages")
            await sim.set_faults(rate_5xx=1.0)
            failing_since = time.monotonic()

            failed = await wait_final(settings, job_id, timeout_s=60)
            failed_after_s = time.monotonic() - failing_since
            assert failed["state"] == "failed"
            error = failed["last_error"]
            assert "store unavailable" in error and "failed after 3 attempts" in error, error
            assert "HTTP 50" in error, error
            assert failed_after_s < 30, f"failing took {failed_after_s:.0f}s"
            read_before = await pages_recorded(settings, job_id)
            pages_total = (await fetch(
                settings, "SELECT pages_total FROM woo_customer_sync_queue WHERE id = $1::uuid",
                job_id,
            ))[0]["pages_total"]  # fmt: skip
            assert 5 <= len(read_before) < pages_total

            # The store recovers; retry picks the crawl up again.
            await sim.set_faults(rate_5xx=0.0)
            await sim.reset_stats()
            response = await action(stack, org, "retry", job_id)
            assert response.status_code == 202, response.text
            assert response.json()["fetch_resumed"] is True

            done = await wait_final(settings, job_id, timeout_s=60)
            assert done["state"] == "done", done["last_error"]
            await assert_exact(settings, org, job_id, store)
            requests = (await sim.stats())["requests"]
            assert_no_secret(stack, sim, error)

    # Page 1 (for the totals), the pages never read, the last page again for late arrivals.
    unread = pages_total - len(read_before)
    assert requests <= unread + 3, (requests, unread, pages_total)
    assert set(range(1, pages_total + 1)) <= await pages_recorded(settings, job_id)


# What no storage can hold: each fails alone, at once (issue 8).
POISON = {"email is 333 characters": {"email": "a" * 320 + "@shop.example"}}
ODD_STORED = ("nul", "long_name", "unicode", "deep_meta:200")
ODD_REFUSED = {
    f"deep_meta:{MAX_JSON_DEPTH + 88}": f"nested deeper than {MAX_JSON_DEPTH} levels",
    # Deeper than Python's json parses: the fetcher cuts it (shared.jsondepth), it fails alone.
    "deep_meta:2000": f"nested deeper than {MAX_JSON_DEPTH} levels",
    "lone_surrogate": "last_name is not valid Unicode",
}


@pytest.mark.timeout(90)
async def test_odd_customers_are_stored_and_the_unstorable_fail_alone_at_once(
    settings: Settings, clean_broker: Topology, tmp_path: Path
) -> None:
    """A NUL, a 70,000-character name, emoji and RTL text and meta_data nested 200 deep are
    stored; nesting past the limit, a lone surrogate and a 333-character address fail alone on
    their first delivery (no retry tier), parked with the reason; the job ends."""
    org = await new_org(settings)
    parking = clean_broker.parking(clean_broker.syncer_queue).name
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        with spawn_simulator(customers=480, seed=34) as sim:
            poison = {
                (await sim.add_customer(**fields))["id"]: reason
                for reason, fields in POISON.items()
            }
            odd = await sim.make_odd(*ODD_STORED, *ODD_REFUSED)
            poison |= {odd[kind]: reason for kind, reason in ODD_REFUSED.items()}
            async with httpx.AsyncClient(verify=sim.verify()) as client:
                listing = await client.get(f"{sim.url}/__sim/customers")
            store = jsondepth.loads(listing.content)  # json alone stops at ~990 levels
            started = time.monotonic()
            job = await start_sync(stack, org, sim)
            row = await wait_final(settings, job["job_id"], timeout_s=60)
            elapsed = time.monotonic() - started
            parked = await take_all(parking)

    good = [c for c in store if c["id"] not in poison]
    print(
        f"odd-content sync: {len(store)} customers, {len(good)} stored, {len(poison)} failed, "
        f"final '{row['state']}' after {elapsed:.1f}s; {len(parked)} parked message(s)"
    )
    assert row["state"] == "failed"  # because some customers failed; none is pending
    assert (row["total"], row["done_count"], row["failed_count"]) == (
        len(store), len(good), len(poison),
    )  # fmt: skip
    assert row["last_error"].startswith(f"{len(poison)} customers failed")
    rows = {
        r["woo_id"]: r
        for r in await fetch(
            settings, "SELECT * FROM customer WHERE org_id = $1::uuid", org.org_id
        )
    }
    assert set(rows) == {c["id"] for c in good}
    by_id = {c["id"]: c for c in store}
    for woo_id, stored in rows.items():
        sent = by_id[woo_id]
        if woo_id == odd["nul"]:
            continue
        assert stored["raw"] == sent, woo_id  # exactly as sent: long, 4-byte, RTL, deep
        assert stored["first_name"] == sent["first_name"]
        assert stored["last_name"] == sent["last_name"]
        assert stored["meta_data"] == sent["meta_data"]
    assert rows[odd["long_name"]]["last_name"] == "Ł" * 70_000
    assert rows[odd["unicode"]]["first_name"] == "👩🏽‍🚀 Zoë 𝕏"
    nul = rows[odd["nul"]]
    sent = by_id[odd["nul"]]
    assert nul["first_name"] == sent["first_name"].replace("\x00", "")
    assert nul["billing"]["address_1"] == sent["billing"]["address_1"].replace("\x00", "")
    assert nul["raw"]["first_name"] == sent["first_name"].replace("\x00", "\\u0000")

    lines = {
        r["woo_id"]: r
        for r in await fetch(
            settings,
            "SELECT woo_id, state, attempts, last_error, warning FROM "
            "woo_customer_sync_queue_line WHERE job_id = $1::uuid",
            job["job_id"],
        )
    }
    assert {w for w, ln in lines.items() if ln["state"] != "done"} == set(poison)
    for woo_id, reason in poison.items():
        line = lines[woo_id]
        assert (line["state"], line["attempts"]) == ("failed", 1), dict(line)  # not 4
        assert reason in line["last_error"] and NOT_RETRYABLE in line["last_error"], dict(line)
    assert lines[odd["nul"]]["warning"] == (
        "NUL characters removed from billing.address_1, first_name"
    )

    # Parked on their first delivery, every error in the header; no retry tier was used.
    assert parked, "nothing parked"
    header = " ".join(str(m.headers[PARKED_ERROR_HEADER]) for m in parked)
    for message in parked:
        assert message.headers[PARKED_ATTEMPTS_HEADER] == 1
        assert "retry-attempt" not in message.headers
    for woo_id, reason in poison.items():
        assert f"customer {woo_id}: " in header and reason in header, header
    parked_ids = [
        c["id"] for m in parked for c in CustomerBatch.model_validate(json.loads(m.body)).customers
    ]
    assert sorted(parked_ids) == sorted(poison)


async def take_all(queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        taken = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken
    finally:
        await connection.close()
