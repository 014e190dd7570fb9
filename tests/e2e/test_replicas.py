"""Two of every service at once, against one database and one broker namespace, as
docs/operations.md ("Running several replicas") says a deployment may run them.

Three stores (an org each) are synced at once, started through both apis and followed to the end
on both trackers' progress streams. Mid-sync one replica of each kind is SIGKILLed: the fetcher
reading the last job's store, a syncer, a tracker and an api (the tracker and the api come back,
so that both trackers' streams can end; the fetcher and the syncer do not, so the survivors carry
everything left). Every service runs with the pool settings of a PgBouncer deployment: small
pools and no prepared-statement cache.

Checked: every store customer is in ``customer`` exactly once, equal to the store's; every job
finished exactly once (one ``job.completed`` activity row, one ``sync.completed`` message, read
after every service stopped); both fetchers and both syncers did work; the killed fetcher's job
was taken over by the other one; each stream's counts only grew and ended with the job done.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest

from shared.settings import Settings
from tests.e2e.harness import (
    ROUTE,
    Stack,
    assert_exact,
    new_org,
    start_sync,
    wait_final,
)
from tests.e2e.processes import (
    Timeline,
    fetch,
    follow_progress,
    infra_shared_lock,
    progress,
    running_stack,
    wait_progress,
)
from tests.helpers import wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STORES = 3
CUSTOMERS = 1_500
PAGE_MS = 200  # the crawl of one store lasts several seconds: the kills land mid-sync
OPTIONS: dict[str, Any] = {"batch_size": 50, "concurrency": 2}
# As behind PgBouncer in transaction pooling mode: small pools, statements prepared unnamed.
POOL_ENV = {
    "WOOSYNC_DB_POOL_MIN_SIZE": "1",
    "WOOSYNC_DB_POOL_MAX_SIZE": "4",
    "WOOSYNC_DB_STATEMENT_CACHE_SIZE": "0",
}
FINAL_S = 200.0


@asynccontextmanager
async def completions(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue of our own bound to ``sync.completed``: every announcement, kept until read."""
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        # Declared as shared.topology declares it (idempotent); the test's cleanup deletes it.
        exchange = await channel.declare_exchange(
            settings.namespace, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)  # gone with this connection
        await queue.bind(exchange, "sync.completed")
        yield queue
    finally:
        await connection.close()


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[dict[str, Any]]:
    bodies = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        bodies.append(json.loads(message.body))
    return bodies


def on_tracker(progress_url: str, base: str) -> str:
    """The same progress stream, served by the tracker at ``base``."""
    parts = urlsplit(progress_url)
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def log_of(stack: Stack, service: str, replica: int) -> str:
    return (stack.log_dir / f"{service}-{replica}.log").read_text(errors="replace")


def reader_of(stack: Stack, job_id: str) -> int:
    """The fetcher replica that took the job up most recently (its log says so)."""
    taken = []
    for replica in range(2):
        pattern = rf"job {job_id}: reading its store \(taken up (\d+)"
        counts = [int(n) for n in re.findall(pattern, log_of(stack, "fetcher", replica))]
        if counts:
            taken.append((max(counts), replica))
    assert taken, "no fetcher took the job up"
    return max(taken)[1]


async def wait_ready(url: str) -> None:
    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(ready, f"{url} ready", 60.0, 0.2)


async def test_two_of_every_service_sync_three_stores_and_survive_a_kill_of_each_kind(
    settings: Settings, tmp_path: Path
) -> None:
    note = Timeline()
    orgs = [await new_org(settings, f"replicas-{n}") for n in range(STORES)]
    with ExitStack() as simulators:
        handles = [
            simulators.enter_context(
                spawn_simulator(customers=CUSTOMERS, seed=70 + n, latency_ms=PAGE_MS)
            )
            for n in range(STORES)
        ]
        stores = [await sim.customers() for sim in handles]
        async with (
            infra_shared_lock(),  # no broker restart while our queue collects announcements
            completions(settings) as announced,
            running_stack(
                settings, tmp_path, apis=2, trackers=2, fetchers=2, syncers=2, **POOL_ENV
            ) as stack,
        ):
            note("two of every service up")
            jobs = []
            for n, (org, sim) in enumerate(zip(orgs, handles, strict=True)):
                jobs.append(await start_sync(stack, org, sim, api=n % 2, **OPTIONS))
            job_ids = [job["job_id"] for job in jobs]
            note(f"started {job_ids} through api 0, 1, 0")
            streams = {
                (job_id, tracker): asyncio.create_task(
                    follow_progress(
                        on_tracker(job["progress_url"], stack.url("tracker", tracker)), FINAL_S
                    )
                )
                for job, job_id in zip(jobs, job_ids, strict=True)
                for tracker in (0, 1)
            }

            last = job_ids[-1]
            reached = await wait_progress(settings, last, pages=3, timeout_s=90)
            reader = reader_of(stack, last)
            stack.kill("fetcher", reader)
            stack.kill("syncer", 0)
            stack.kill("tracker", 1)
            stack.kill("api", 1)
            note(f"killed fetcher {reader}, syncer 0, tracker 1, api 1 at {reached}")
            assert not (await progress(settings, last)).fetch_complete
            for service in ("tracker", "api"):
                stack.start(service, 1)
                await wait_ready(stack.url(service, 1))
            note("tracker 1 and api 1 back")
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(
                    stack.url("api", 1) + ROUTE,
                    json={"action": "status", "org_id": orgs[-1].org_id, "job_id": last},
                    headers=orgs[-1].headers,
                )
            assert answer.status_code == 200, answer.text

            rows = [await wait_final(settings, job_id, FINAL_S) for job_id in job_ids]
            note("every job final")
            seen = {key: await asyncio.wait_for(task, FINAL_S) for key, task in streams.items()}
            note("every stream complete")
            stack.stop_all()  # the trackers drain and stop: nothing more can be announced
            announcements = await drain(announced)

        for org, job_id, store, row in zip(orgs, job_ids, stores, rows, strict=True):
            assert row["state"] == "done", (job_id, row["last_error"])
            await assert_exact(settings, org, job_id, store)
        assert rows[-1]["process_count"] >= 2  # the other fetcher took the job over

        for (job_id, tracker), events in seen.items():
            kind, final = events[-1]
            assert kind == "complete", (job_id, tracker)
            assert (final["state"], final["done"], final["total"]) == ("done", CUSTOMERS, CUSTOMERS)
            done = [data["done"] for _, data in events]
            assert done == sorted(done), f"job {job_id} on tracker {tracker} went back: {done}"

        finishes = await fetch(
            settings,
            "SELECT job_id::text AS job_id, count(*) AS n FROM woo_sync_activity "
            "WHERE event IN ('job.completed', 'job.failed') GROUP BY job_id",
        )
        assert {r["job_id"]: r["n"] for r in finishes} == dict.fromkeys(job_ids, 1)
        assert Counter(a["job_id"] for a in announcements) == Counter(job_ids)
        assert all(a["state"] == "done" for a in announcements)

        for service in ("fetcher", "syncer"):
            for replica in (0, 1):
                text = log_of(stack, service, replica)
                work = (
                    r"reading its store"
                    if service == "fetcher"
                    else r"attempt \d+: [1-9]\d* synced"
                )
                assert re.search(work, text), f"{service} {replica} did no work"
