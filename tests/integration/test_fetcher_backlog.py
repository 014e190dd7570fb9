"""The fetcher's backpressure (services.fetcher.backlog) against a simulated store and a real
database; the test stands in for the syncer, settling lines when it chooses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from services.fetcher.backlog import Backlog, CrawlBacklog
from services.fetcher.handlers import FetcherDeps, handle_sync_requested
from shared.messages import CustomerBatch, FetchCompleted, Message
from tests.helpers import Recorder, fetcher_deps, queue_new_org_sync
from tools.woosim.testing import running_simulator

PENDING = """
SELECT count(*) FROM woo_customer_sync_queue_line WHERE job_id = $1 AND state = 'pending'
"""
SETTLE_ALL = """
UPDATE woo_customer_sync_queue_line SET state = 'done' WHERE job_id = $1 AND state = 'pending'
"""
SETTLE = """
UPDATE woo_customer_sync_queue_line SET state = 'done'
WHERE job_id = $1 AND woo_id = ANY($2::bigint[]) AND state = 'pending'
"""


def with_backlog(deps: FetcherDeps, backlog: Backlog) -> FetcherDeps:
    return FetcherDeps(
        pool=deps.pool, secrets=deps.secrets, open_client=deps.open_client, publish=deps.publish,
        allow_private_urls=True, backlog=backlog,
    )  # fmt: skip


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def crawl_of(backlog: Backlog) -> CrawlBacklog | None:
    return next(iter(backlog.crawls), None)


def held_back(backlog: Backlog) -> bool:
    """Every worker of the (one) crawl waits for room, none reads: nothing more is published
    until lines are settled."""
    crawl = crawl_of(backlog)
    return crawl is not None and crawl.waiting > 0 and crawl.in_flight == 0


@pytest.mark.timeout(120)
async def test_a_crawl_stops_at_its_bound_while_nothing_is_settled(pool: asyncpg.Pool) -> None:
    """The syncer is stopped: the crawl publishes its bound's worth and waits, each time, until
    the test settles what is pending; the job is still read whole, each customer once."""
    bound = 300
    async with running_simulator(customers=1000, seed=11) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50, concurrency=4)
        recorder = Recorder()
        backlog = Backlog(budget=bound, poll_s=0.1)
        task = asyncio.create_task(
            handle_sync_requested(request, with_backlog(fetcher_deps(pool, recorder), backlog))
        )
        held: list[int] = []
        while True:
            await until(lambda: task.done() or held_back(backlog))
            if task.done():
                break
            pending = await pool.fetchval(PENDING, request.job_id)
            if pending:
                held.append(pending)
                settled = await pool.fetchval(
                    "SELECT count(*) FROM woo_customer_sync_queue_line "
                    "WHERE job_id = $1 AND state = 'done'",
                    request.job_id,
                )
                # Everything published is either settled or pending: nothing more in flight.
                assert settled + pending == len(recorder.customer_ids())
                await pool.execute(SETTLE_ALL, request.job_id)
            else:
                await asyncio.sleep(0.01)  # the crawl has not read the settled backlog yet
        await task
        store_ids = [c["id"] for c in await sim.customers()]

    assert len(held) >= 3  # 1000 customers, at most 300 ahead: it had to wait
    assert max(held) <= bound
    assert sorted(recorder.customer_ids()) == store_ids  # each exactly once
    (completed,) = recorder.of(FetchCompleted)
    assert completed.customers == 1000
    assert not backlog.crawls  # the crawl gave its share back


@pytest.mark.timeout(120)
async def test_a_small_job_started_beside_a_big_one_finishes_first(pool: asyncpg.Pool) -> None:
    """One FIFO syncer, one fetcher: the big job has filled its backlog before the small one
    starts. With the bound, the small job's batches enter the queue between the big one's and
    it is settled long before the big one; without it, the whole big job would be queued ahead
    of it."""
    queue: asyncio.Queue[CustomerBatch] = asyncio.Queue()
    order: list[object] = []
    go = asyncio.Event()

    async def publish(message: Message) -> None:
        await recorder(message)
        if isinstance(message, CustomerBatch):
            queue.put_nowait(message)

    async def syncer() -> None:
        await go.wait()
        while True:
            batch = await queue.get()
            ids = [c["id"] for c in batch.customers]
            settled = 0
            while settled < len(ids):  # published before its lines commit, as in the fetcher
                status = await pool.execute(SETTLE, batch.job_id, ids)
                settled += int(status.split()[-1])
                if settled < len(ids):
                    await asyncio.sleep(0.005)
            order.append(batch.job_id)
            queue.task_done()

    recorder = Recorder()
    backlog = Backlog(budget=200, poll_s=0.1)
    async with (
        running_simulator(customers=2000, seed=12) as big_store,
        running_simulator(customers=150, seed=13) as small_store,
    ):
        big = await queue_new_org_sync(pool, big_store, batch_size=50, concurrency=4)
        small = await queue_new_org_sync(pool, small_store, batch_size=50, concurrency=4)
        deps = fetcher_deps(pool, recorder)
        deps = FetcherDeps(
            pool=pool, secrets=deps.secrets, open_client=deps.open_client, publish=publish,
            allow_private_urls=True, backlog=backlog,
        )  # fmt: skip
        settling = asyncio.create_task(syncer())
        try:
            big_task = asyncio.create_task(handle_sync_requested(big, deps))
            await until(lambda: big_task.done() or held_back(backlog))
            small_task = asyncio.create_task(handle_sync_requested(small, deps))
            go.set()
            await asyncio.gather(big_task, small_task)
            await queue.join()
        finally:
            settling.cancel()

    last = {job: index for index, job in enumerate(order)}
    assert last[small.job_id] < last[big.job_id]
    # Most of the big job was read after the small one started: it was held back.
    assert order.index(small.job_id) < len(order) // 4
    for request, size in ((big, 2000), (small, 150)):
        lines = await pool.fetch(
            "SELECT state, count(*) AS n FROM woo_customer_sync_queue_line "
            "WHERE job_id = $1 GROUP BY state",
            request.job_id,
        )
        assert {r["state"]: r["n"] for r in lines} == {"done": size}


@pytest.mark.timeout(120)
async def test_a_crawl_waiting_for_its_backlog_stops_when_its_job_is_paused(
    pool: asyncpg.Pool,
) -> None:
    """Nothing is settled, so the crawl waits at its bound; a pause ends it there (recorded as
    stopped), with no page read past the bound."""
    async with running_simulator(customers=1000, seed=14) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50, concurrency=4)
        recorder = Recorder()
        backlog = Backlog(budget=200, poll_s=0.1)
        base = fetcher_deps(pool, recorder)
        deps = FetcherDeps(
            pool=pool, secrets=base.secrets, open_client=base.open_client, publish=recorder,
            allow_private_urls=True, backlog=backlog, check_interval_s=0.05,
        )  # fmt: skip
        task = asyncio.create_task(handle_sync_requested(request, deps))
        await until(lambda: task.done() or held_back(backlog))
        assert not task.done()
        await pool.execute(
            "UPDATE woo_customer_sync_queue SET state = 'paused' WHERE id = $1", request.job_id
        )
        await task
        job = await pool.fetchrow(
            "SELECT state, crawl_stopped_at, fetch_done_at FROM woo_customer_sync_queue "
            "WHERE id = $1",
            request.job_id,
        )
        pending = await pool.fetchval(PENDING, request.job_id)

    assert job["state"] == "paused" and job["crawl_stopped_at"] is not None
    assert job["fetch_done_at"] is None
    assert pending == len(recorder.customer_ids()) <= 200
    assert not recorder.of(FetchCompleted)
