"""Hostile and broken stores against the crawl, with every service a real process.

- A caching plugin caps ``per_page`` at 50 while woosync asks for 100: every customer is read,
  with the store's page size, and the job is done and exact.
- A store claims 10^9 customers: its job fails at once saying so, the fetcher's memory stays
  small, and another org's sync running beside it is done and exact.
- Customers whose ids cannot be stored (2^63, a string, none, not an object) in the first page:
  they fail alone, counted and explained; every other customer is synced and the job ends.
- ``force-done`` on a running crawl of a slow store: the store gets no request after the crawl
  notices (measured: time from force-done to the last request).
- A crawl longer than its slice hands itself on and still ends done and exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from shared.settings import Settings
from tests.e2e.fault_stack import PATIENT_STORE, running
from tests.e2e.harness import (
    Stack,
    action,
    assert_exact,
    assert_good_synced,
    new_org,
    start_sync,
    wait_final,
)
from tests.e2e.processes import fetch, pages_recorded
from tests.helpers import store_settled, wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e]


@pytest.mark.timeout(120)
async def test_a_store_capping_per_page_is_read_completely(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        with spawn_simulator(customers=3_000, seed=41, faults={"per_page_cap": 50}) as sim:
            store = await sim.customers()
            job = await start_sync(stack, org, sim, batch_size=100)
            row = await wait_final(settings, job["job_id"], timeout_s=90)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job["job_id"], store)
    assert row["batch_size"] == 50  # the store's page size, recorded


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[int]]:
    """Samples the process's resident memory every 50 ms; yields [peak bytes]."""
    process = psutil.Process(pid)
    peak = [process.memory_info().rss]

    async def sample() -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], process.memory_info().rss)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()


def fetcher_pid(stack: Stack) -> int:
    return stack.processes[("fetcher", 0)].pid


@pytest.mark.timeout(120)
async def test_a_store_claiming_a_billion_customers_fails_at_once_and_hurts_no_one(
    settings: Settings, tmp_path: Path
) -> None:
    liar_org, other_org = await new_org(settings, "liar"), await new_org(settings, "other")
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        with (
            spawn_simulator(customers=2_000, seed=42, faults={"claimed_total": 10**9}) as liar,
            spawn_simulator(customers=2_000, seed=43) as honest,
        ):
            store = await honest.customers()
            baseline = psutil.Process(fetcher_pid(stack)).memory_info().rss
            async with peak_rss(fetcher_pid(stack)) as peak:
                started = time.monotonic()
                lying = await start_sync(stack, liar_org, liar)
                normal = await start_sync(stack, other_org, honest)
                failed = await wait_final(settings, lying["job_id"], timeout_s=60)
                failed_after_s = time.monotonic() - started
                done = await wait_final(settings, normal["job_id"], timeout_s=60)
                done_after_s = time.monotonic() - started
            liar_requests = (await liar.stats())["received"]

    print(
        f"\nfetcher RSS with a store claiming 10^9 customers: baseline "
        f"{baseline / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f} MiB; the lying job failed "
        f"after {failed_after_s:.2f}s ({liar_requests} store requests incl. the api's check); "
        f"the other org's 2,000 customers done after {done_after_s:.2f}s"
    )
    assert failed["state"] == "failed"
    error = failed["last_error"]
    assert "X-WP-Total: 1,000,000,000" in error and "WOOSYNC_MAX_STORE_CUSTOMERS" in error, error
    assert liar_requests <= 2  # the api's connection check and page 1: nothing more
    assert peak[0] < baseline + 50 * 2**20  # nothing grows with the claim
    assert done["state"] == "done", done["last_error"]
    await assert_exact(settings, other_org, normal["job_id"], store)


BAD_IDS = ["2^63", "abc", "missing", "non_object"]


@pytest.mark.timeout(120)
async def test_customers_without_a_usable_id_fail_alone(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        with spawn_simulator(customers=500, seed=44, faults={"bad_ids": BAD_IDS}) as sim:
            store = await sim.customers()  # the control API shows the true ids
            job = await start_sync(stack, org, sim)
            row = await wait_final(settings, job["job_id"], timeout_s=60)
            status = (await action(stack, org, "status", job["job_id"])).json()

    good = store[len(BAD_IDS) :]  # the lowest ids are the broken ones
    assert row["state"] == "failed"
    assert (row["total"], row["done_count"], row["failed_count"]) == (
        len(store), len(good), len(BAD_IDS),
    )  # fmt: skip
    assert row["last_error"].startswith(f"{len(BAD_IDS)} customers failed"), row["last_error"]
    assert (status["failed"], status["done"], status["pending"]) == (len(BAD_IDS), len(good), 0)
    await assert_good_synced(settings, org, good)
    lines = await fetch(
        settings,
        "SELECT woo_id, state, last_error FROM woo_customer_sync_queue_line "
        "WHERE job_id = $1::uuid AND state <> 'done'",
        job["job_id"],
    )
    assert len(lines) == len(BAD_IDS) and all(r["woo_id"] < 0 for r in lines)
    errors = " | ".join(r["last_error"] for r in lines)
    for text in ("above the largest storable id", "is a JSON string", "has no id",
                 "not an object"):  # fmt: skip
        assert text in errors, errors
    assert "parking message" not in stack.logs()  # nothing parked, nothing looped


@pytest.mark.timeout(120)
async def test_force_done_stops_the_crawl_within_a_page(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    concurrency = 4
    async with running(settings, tmp_path, PATIENT_STORE) as stack:
        with spawn_simulator(customers=3_000, seed=45, latency_ms=300) as sim:
            job = await start_sync(stack, org, sim, batch_size=20, concurrency=concurrency)
            job_id = job["job_id"]
            await wait_until(lambda: _at_least(settings, job_id, 6), "6 pages")
            sent_before = (await sim.stats())["received"]
            response = await action(stack, org, "force-done", job_id, reason="test")
            forced_at = time.time()
            assert response.status_code == 200, response.text
            sent_at_force = (await sim.stats())["received"]
            # The crawl says it stopped; then whatever its workers had sent arrives.
            stopped = "became final while its store was read"
            await wait_until(lambda: stopped in stack.logs(), "the crawl stopped")
            await store_settled(sim, "received")
            stats = await sim.stats()

    after = stats["received"] - sent_at_force
    last_after_s = stats["last_received_at"] - forced_at
    print(
        f"\nforce-done: {sent_at_force - sent_before} store requests during the api call, "
        f"{after} after its answer; last store request {last_after_s * 1000:+.0f} ms after "
        "the force-done answer"
    )
    assert after <= concurrency  # at most the requests sent before a worker noticed
    assert "became final while its store was read" in stack.logs()


async def _at_least(settings: Settings, job_id: str, n: int) -> bool:
    return len(await pages_recorded(settings, job_id)) >= n


@pytest.mark.timeout(150)
async def test_a_crawl_longer_than_its_slice_hands_itself_on(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    env = {**PATIENT_STORE, "WOOSYNC_CRAWL_SLICE_S": "0.7"}
    async with running(settings, tmp_path, env) as stack:
        with spawn_simulator(customers=2_000, seed=46, latency_ms=100) as sim:
            store = await sim.customers()
            job = await start_sync(stack, org, sim, batch_size=50, concurrency=2)
            row = await wait_final(settings, job["job_id"], timeout_s=120)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job["job_id"], store)
    print(f"\nslices: the job was taken up {row['process_count']} times")
    assert row["process_count"] > 2
    assert "handing the job on" in stack.logs()
