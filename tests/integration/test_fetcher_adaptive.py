"""Adaptive per-store concurrency (shared.storelimit) against a simulated store with a capacity,
and a real database holding the stores' limits and the fetchers' shares."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg

from services.fetcher.handlers import handle_sync_requested
from shared.messages import CustomerBatch, FetchCompleted, FetchFailed, Message
from shared.storelimit import StoreLimits, store_key
from shared.storeurl import store_identity
from tests.helpers import Recorder, fetcher_deps, job_row, queue_new_org_sync
from tools.woosim.testing import running_simulator


def limits(pool: asyncpg.Pool, *, ceiling: int = 32) -> StoreLimits:
    """One fetcher process's stores' limits (two of them stand for two processes)."""
    return StoreLimits(pool, start=4, ceiling=ceiling, max_pause_s=1.0)


async def test_a_store_refusing_above_four_in_flight_is_read_whole_and_its_limit_remembered(
    pool: asyncpg.Pool,
) -> None:
    async with running_simulator(
        customers=600, seed=7, latency_ms=100, faults={"max_in_flight": 4, "retry_after": 1}
    ) as sim:
        first = await queue_new_org_sync(pool, sim, batch_size=10, concurrency=None)
        recorder = Recorder()
        await handle_sync_requested(first, fetcher_deps(pool, recorder, store_limits=limits(pool)))
        stats = await sim.stats()
        store = store_identity(sim.url)
        remembered = await limits(pool).remembered(store)

        # Another org's job for the same store starts from what was learned.
        await sim.reset_stats()
        second = await queue_new_org_sync(pool, sim, batch_size=10, concurrency=None)
        again = Recorder()
        await handle_sync_requested(second, fetcher_deps(pool, again, store_limits=limits(pool)))
        stats_again = await sim.stats()

    # Slow start met the store's capacity: it refused, and the crawl went on without a failure.
    assert stats["by_status"].get("429", 0) >= 1
    assert not recorder.of(FetchFailed)
    (completed,) = recorder.of(FetchCompleted)
    assert completed.customers == 600
    assert len(set(recorder.customer_ids())) == 600
    failed_lines = await pool.fetchval(
        "SELECT count(*) FROM woo_customer_sync_queue_line WHERE job_id = $1 AND state = 'failed'",
        first.job_id,
    )
    assert failed_lines == 0
    # Never a level the store refused (a loaded machine's latency may have lowered it more).
    assert remembered is not None and 1 <= remembered <= 4

    # Remembered: no slow start past it, only the rare probe of one more, refused (a probe may
    # meet one or two refusals before its answer is heard).
    assert not again.of(FetchFailed)
    assert again.of(FetchCompleted)[0].customers == 600
    assert stats_again["peak_in_flight"] <= 5
    assert stats_again["by_status"].get("429", 0) <= 3
    assert 1 <= (await limits(pool).remembered(store) or 0) <= 4
    assert (await job_row(pool, second.job_id))["concurrency"] is None


async def test_a_sync_starts_from_the_limit_remembered_for_its_store(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=150, seed=10, latency_ms=200) as sim:
        await pool.execute(
            "INSERT INTO woosync_store_limit (store, concurrency) VALUES ($1, 2)",
            store_key(store_identity(sim.url)),
        )
        request = await queue_new_org_sync(pool, sim, batch_size=10, concurrency=None)
        recorder = Recorder()
        deps = fetcher_deps(pool, recorder, store_limits=limits(pool))
        await handle_sync_requested(request, deps)
        stats = await sim.stats()
        remembered = await limits(pool).remembered(store_identity(sim.url))

    assert recorder.of(FetchCompleted)[0].customers == 150
    # Not the 4 a store never read starts with, nor slow start: held at 2 for 8 windows (16
    # pages; the store has 15).
    assert stats["peak_in_flight"] == 2
    assert remembered == 2


async def test_an_explicit_concurrency_is_kept_and_nothing_is_learned(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=200, seed=8, latency_ms=20) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=10, concurrency=2)
        recorder = Recorder()
        deps = fetcher_deps(pool, recorder, store_limits=limits(pool))
        await handle_sync_requested(request, deps)
        stats = await sim.stats()
        remembered = await limits(pool).remembered(store_identity(sim.url))

    assert recorder.of(FetchCompleted)[0].customers == 200
    assert stats["peak_in_flight"] == 2
    assert remembered is None


async def test_two_fetchers_reading_one_store_keep_to_its_limit_together(
    pool: asyncpg.Pool,
) -> None:
    """Two orgs' jobs for one store, read by two fetcher processes at once (each with its own
    StoreLimits, meeting only in the database): alone each would keep 4 in flight."""
    async with running_simulator(customers=1000, seed=9, latency_ms=40) as sim:
        jobs = [
            await queue_new_org_sync(pool, sim, batch_size=10, concurrency=None) for _ in range(2)
        ]
        times: list[list[float]] = [[], []]
        recorders = [Recorder(), Recorder()]

        def publisher(index: int) -> Any:
            async def publish(message: Message) -> None:
                if isinstance(message, CustomerBatch):
                    times[index].append(asyncio.get_running_loop().time())
                await recorders[index](message)

            return publish

        await asyncio.gather(
            *(
                handle_sync_requested(
                    job,
                    dataclasses.replace(
                        fetcher_deps(pool, recorders[i], store_limits=limits(pool, ceiling=4)),
                        publish=publisher(i),
                    ),
                )
                for i, job in enumerate(jobs)
            )
        )
        stats = await sim.stats()

    for recorder in recorders:
        assert recorder.of(FetchCompleted)[0].customers == 1000
    # The two crawls ran at the same time...
    assert times[0][0] < times[1][-1] and times[1][0] < times[0][-1]
    # ...and never had more than the store's limit in flight together.
    assert stats["peak_in_flight"] <= 4
    leases = await pool.fetchval("SELECT count(*) FROM woosync_store_lease")
    assert leases == 0  # given back at the end
