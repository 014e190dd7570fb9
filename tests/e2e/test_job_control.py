"""Pause, resume and cancel against the real processes and a slow simulated store, checked with
the store's request log (``/__sim/requests``) and the database.

- ``pause`` on a running crawl: once the fetcher has recorded that its crawl stopped, the store
  gets no request and no customer is written (requests in flight when the pause answered may
  still be answered and recorded). ``resume`` then ends the job done and exact, and no page is
  read twice but the last one, and that one only if the crawl had read it before the pause
  (a crawl reads the last page after every other page was started, to see whether the store
  grew, so the resumed one reads it again). Printed: the pause latency, from the pause's answer
  to the last store request and to the last customer write.
- ``cancel`` with batches waiting for the syncer: its open lines are cancelled, the waiting
  batches write nothing, and a new sync of the store is refused (409) until the fetcher has
  stopped the old crawl, then accepted. The fetcher is held with SIGSTOP right after the cancel
  so the refusal does not depend on timing.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.fetcher import paging
from shared.settings import Settings
from tests.e2e.fault_stack import running
from tests.e2e.harness import ROUTE, Org, action, assert_exact, new_org, start_sync, wait_final
from tests.e2e.processes import fetch, fetchval, pages_recorded, queue_info
from tests.helpers import store_settled, wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e]

CUSTOMERS_PATH = "/wp-json/wc/v3/customers"
PER_PAGE = 20
QUIET_S = 3.0  # several crawl checks and syncer deliveries long: nothing may happen in it


async def _at_least(settings: Settings, job_id: str, pages: int) -> bool:
    return len(await pages_recorded(settings, job_id)) >= pages


async def _crawl_stopped(settings: Settings, job_id: str) -> float | None:
    """When the fetcher recorded that the job's crawl stopped (Unix time), if it did."""
    return await fetchval(
        settings,
        "SELECT extract(epoch FROM crawl_stopped_at)::float8 FROM woo_customer_sync_queue"
        " WHERE id = $1::uuid",
        job_id,
    )


async def _writes(settings: Settings, org: Org) -> tuple[int, float | None]:
    """The org's customers and when the latest was written (Unix time)."""
    row = await fetch(
        settings,
        "SELECT count(*) AS n, extract(epoch FROM max(synced_at))::float8 AS last"
        " FROM customer WHERE org_id = $1::uuid",
        org.org_id,
    )
    return row[0]["n"], row[0]["last"]


def _page_reads(log: list[dict[str, Any]]) -> list[int]:
    """The offsets of the crawl's page reads (the api's store check asks for one customer)."""
    return [
        int(r["params"].get("offset", 0))
        for r in log
        if r["path"] == CUSTOMERS_PATH and r["params"].get("per_page") == str(PER_PAGE)
    ]


@pytest.mark.timeout(300)
async def test_pause_stops_reads_and_writes_and_resume_reads_nothing_twice(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, {}) as stack:
        with spawn_simulator(customers=2_000, seed=51, latency_ms=300) as sim:
            store = await sim.customers()
            job = await start_sync(stack, org, sim, batch_size=PER_PAGE, concurrency=4)
            job_id = job["job_id"]
            await wait_until(lambda: _at_least(settings, job_id, 6), "6 pages", 90)

            response = await action(stack, org, "pause", job_id)
            answered_at = time.time()
            assert response.status_code == 200, response.text
            assert response.json()["state"] == "paused"

            stopped_at = await wait_until(
                lambda: _crawl_stopped(settings, job_id), "the crawl stopped", 60
            )
            await store_settled(sim, "requests")
            log = await sim.requests()
            written = await _writes(settings, org)
            pages_paused = await pages_recorded(settings, job_id)
            await asyncio.sleep(QUIET_S)
            # Nothing after the pause settled: no store request, no customer written.
            assert await sim.requests() == log
            assert await _writes(settings, org) == written
            assert await pages_recorded(settings, job_id) == pages_paused
            assert all(r["arrived_at"] <= stopped_at for r in log)
            assert written[1] is None or written[1] <= answered_at
            assert (await action(stack, org, "pause", job_id)).status_code == 409
            reads_paused = _page_reads(log)
            last_request_s = max(r["arrived_at"] for r in log) - answered_at
            held = await fetchval(
                settings,
                "SELECT count(*) FROM woo_customer_sync_hold WHERE job_id = $1::uuid",
                job_id,
            )

            resumed = await action(stack, org, "resume", job_id)
            assert resumed.status_code == 202, resumed.text
            assert resumed.json()["fetch_resumed"] is True
            row = await wait_final(settings, job_id, timeout_s=180)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
            reads = Counter(_page_reads(await sim.requests()))

    # Windows overlap a little (services.fetcher.paging): page p starts at page_offset(p).
    last_page = paging.pages_for(len(store), PER_PAGE)
    twice = {o: n for o, n in reads.items() if n > 1}
    assert twice in ({}, {paging.page_offset(last_page, PER_PAGE): 2}), f"read again: {twice}"
    assert set(reads) == {paging.page_offset(p, PER_PAGE) for p in range(1, last_page + 1)}
    print(
        f"\npause: {len(reads_paused)} pages read before it settled ({len(pages_paused)} "
        f"recorded), {held} batches held; last store request {last_request_s * 1000:+.0f} ms "
        f"after the pause answer; crawl recorded stopped {(stopped_at - answered_at) * 1000:+.0f}"
        f" ms after it; last customer write "
        f"{((written[1] or answered_at) - answered_at) * 1000:+.0f} ms after it"
    )


@pytest.mark.timeout(300)
async def test_cancel_settles_lines_and_frees_the_store_once_the_crawl_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    # A slow page and a slow watcher: the crawl notices a cancel at its next page's record.
    env = {"WOOSYNC_CRAWL_CHECK_INTERVAL_S": "10"}
    async with running(settings, tmp_path, env) as stack:
        with spawn_simulator(customers=2_000, seed=52, latency_ms=1500) as sim:
            stack.stop("syncer")  # batches wait in the queue: their lines stay pending
            job = await start_sync(stack, org, sim, batch_size=PER_PAGE, concurrency=1)
            job_id = job["job_id"]
            await wait_until(lambda: _at_least(settings, job_id, 3), "3 pages", 90)

            response = await action(stack, org, "cancel", job_id, reason="wrong store")
            stack.signal("fetcher", 0, signal.SIGSTOP)
            try:
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["state"] == "cancelled" and body["lines_cancelled"] >= PER_PAGE
                states = await fetch(
                    settings,
                    "SELECT state, count(*) AS n FROM woo_customer_sync_queue_line"
                    " WHERE job_id = $1::uuid GROUP BY state",
                    job_id,
                )
                assert {r["state"]: r["n"] for r in states} == {
                    "cancelled": body["lines_cancelled"]
                }
                stopped = await _crawl_stopped(settings, job_id)
                again = await _start(stack, org, sim)
                if stopped is None:  # the held fetcher has not stopped the old crawl
                    assert again.status_code == 409, again.text
                    assert again.json()["error"]["code"] == "crawl_not_stopped"
                    assert (
                        await fetchval(
                            settings,
                            "SELECT count(*) FROM woo_customer_sync_queue WHERE org_id = $1::uuid",
                            org.org_id,
                        )
                        == 1
                    )
                else:  # it stopped in the instant before SIGSTOP: the store is free
                    assert again.status_code == 202, again.text
            finally:
                stack.signal("fetcher", 0, signal.SIGCONT)
            if stopped is None:
                await wait_until(lambda: _crawl_stopped(settings, job_id), "the crawl stopped", 60)
                again = await _start(stack, org, sim)
                assert again.status_code == 202, again.text
            new_job = again.json()["job_id"]
            assert new_job != job_id
            assert (await action(stack, org, "cancel", job_id)).status_code == 409

            # The waiting batches of the cancelled job write nothing; the new job syncs.
            await action(stack, org, "cancel", new_job)
            stack.start("syncer")
            await wait_until(lambda: _queue_empty(settings), "the syncer drained its queue", 90)
            await asyncio.sleep(QUIET_S)  # a batch taken last is written (or not) by now
            assert await _writes(settings, org) == (0, None)
            lines = await fetch(
                settings,
                "SELECT DISTINCT state FROM woo_customer_sync_queue_line WHERE job_id = $1::uuid",
                job_id,
            )
            assert [r["state"] for r in lines] == ["cancelled"]
            events = await fetch(
                settings,
                "SELECT event FROM woo_sync_activity WHERE job_id = $1::uuid ORDER BY id",
                job_id,
            )
            assert {"job.cancelled", "fetch.stopped"} <= {e["event"] for e in events}
            assert (await wait_final(settings, new_job, timeout_s=5))["state"] == "cancelled"


async def _start(stack: Any, org: Org, sim: Any) -> httpx.Response:
    body = {
        "action": "start",
        "org_id": org.org_id,
        "config": {
            "url": sim.url,
            "consumer_key": sim.consumer_key,
            "consumer_secret": sim.consumer_secret,
            "auth": "oauth1",
        },
        "options": {"batch_size": PER_PAGE, "concurrency": 1},
    }
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(stack.api_url + ROUTE, json=body, headers=org.headers)


async def _queue_empty(settings: Settings) -> bool:
    ready, consumers = await queue_info(settings, "syncer")
    return ready == 0 and consumers >= 1
