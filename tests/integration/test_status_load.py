"""Status and progress under load (issue 12): a status is one read of the job row, which the
tracker's recompute keeps (conflicts, rate), and the progress streams of one job share one
poller, whatever their number. Real PostgreSQL; time is stepped by hand, never measured."""

from __future__ import annotations

import asyncio
import json
from uuid import UUID, uuid4

import asyncpg
from sse_starlette import ServerSentEvent

from services.tracker import handlers as tracker
from services.tracker.feeds import JobFeeds, pool_reader
from services.tracker.rates import RateWindow
from services.tracker.sse import progress_events
from shared.db import for_org
from shared.jobs import SELECT_JOB_STATUS, JobStatus, get_status
from tests.factories import add_lines, make_job, make_org

WAIT_S = 10.0
FOLLOWERS = 25


async def test_the_status_read_touches_no_line(pool: asyncpg.Pool, app_pool: asyncpg.Pool) -> None:
    org_id = await make_org(pool)
    job_id = await make_job(pool, org_id, state="processing", store_total=50)
    await add_lines(pool, job_id, org_id, range(1, 41), "done")
    await pool.execute("ANALYZE woo_customer_sync_queue_line")
    async with for_org(app_pool, org_id).transaction() as conn:
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + SELECT_JOB_STATUS, job_id, org_id)
    tables = {node for node in _relations(json.loads(plan))}
    # The job's row, and its connection's (by primary key) only for a job without a policy.
    assert tables == {"woo_customer_sync_queue", "woo_connections"}, tables
    assert "woo_customer_sync_queue_line" not in SELECT_JOB_STATUS


def _relations(plan: object) -> list[str]:
    if isinstance(plan, list):
        return [r for p in plan for r in _relations(p)]
    if isinstance(plan, dict):
        found = [plan["Relation Name"]] if "Relation Name" in plan else []
        return found + [r for v in plan.values() for r in _relations(v)]
    return []


async def test_the_recompute_writes_conflicts_and_rate_and_an_idle_job_is_not_written(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id = await make_org(pool)
    idle = await make_job(pool, org_id, state="processing", store_total=10)
    scope = for_org(app_pool, org_id)
    before = await pool.fetchrow(
        "SELECT xmin, updated_at FROM woo_customer_sync_queue WHERE id = $1", idle
    )
    status = await get_status(scope, org_id=org_id, job_id=idle)
    assert status is not None and status.rate_per_s == 0.0  # from its first moment
    rates = RateWindow()
    for _ in range(3):
        await tracker.recompute(scope, idle, rates)
    after = await pool.fetchrow(
        "SELECT xmin, updated_at FROM woo_customer_sync_queue WHERE id = $1", idle
    )
    assert after == before  # nothing settled: no write, so no event for aging alone

    moving = await make_job(pool, org_id, state="processing", store_total=100)
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET started_at = now() - interval '1 hour' WHERE id = $1",
        moving,
    )
    await add_lines(pool, moving, org_id, range(1, 61), "done")  # settled just now
    await add_lines(pool, moving, org_id, range(61, 64), "conflict")
    await tracker.recompute(scope, moving, rates)
    status = await get_status(scope, org_id=org_id, job_id=moving)
    assert status is not None
    assert (status.done, status.conflicts, status.pending) == (60, 3, 37)
    assert status.rate_per_s == 2.0 and status.eta_s == round(37 / 2.0)  # 60 in the window


async def test_followers_of_one_job_share_one_read_per_interval(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id = await make_org(pool)
    job_id = await make_job(pool, org_id, state="processing", store_total=10)
    real = pool_reader(app_pool)
    reads: list[UUID] = []

    async def read(org: UUID, job: UUID) -> JobStatus | None:
        reads.append(job)
        return await real(org, job)

    ticks: asyncio.Queue[None] = asyncio.Queue()

    async def step(_interval_s: float) -> None:  # one poll per tick the test gives
        await ticks.get()

    feeds = JobFeeds(read, 0.25, sleep=step)
    received: list[list[ServerSentEvent]] = [[] for _ in range(FOLLOWERS)]
    changed = asyncio.Condition()

    async def follow(n: int) -> None:
        status, read_at = await feeds.read(org_id, job_id)
        async with feeds.follow(org_id, job_id, status, read_at) as feed:
            async for event in progress_events(feed, last_event_id=100 * n):
                received[n].append(event)
                async with changed:
                    changed.notify_all()

    async def until(predicate: object) -> None:
        async with asyncio.timeout(WAIT_S), changed:
            await changed.wait_for(predicate)  # type: ignore[arg-type]

    followers = [asyncio.create_task(follow(n)) for n in range(FOLLOWERS)]
    try:
        await until(lambda: all(len(r) == 1 for r in received))
        assert len(feeds) == 1 and len(reads) == FOLLOWERS  # each stream's own first read
        reads.clear()

        await pool.execute(
            "UPDATE woo_customer_sync_queue SET done_count = 4, total = 4 WHERE id = $1", job_id
        )
        await ticks.put(None)
        await until(lambda: all(len(r) == 2 for r in received))
        assert len(reads) == 1  # one read for every follower

        await pool.execute(
            "UPDATE woo_customer_sync_queue SET done_count = 10, total = 10, state = 'done',"
            " fetch_done_at = now(), finished_at = now() WHERE id = $1",
            job_id,
        )
        await ticks.put(None)
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*followers)
    finally:
        for task in followers:
            task.cancel()
    assert len(reads) == 2
    for n, events in enumerate(received):
        assert [e.event for e in events] == ["progress", "progress", "progress", "complete"]
        assert [int(e.id) for e in events] == [100 * n + i for i in range(1, 5)]  # its own ids
        assert [json.loads(e.data)["done"] for e in events] == [0, 4, 10, 10]
    assert len(feeds) == 0  # the poller stopped with its last follower


async def test_a_follower_starts_from_the_newest_status_known(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id = await make_org(pool)
    job_id = await make_job(pool, org_id, state="processing", store_total=10)
    never: asyncio.Event = asyncio.Event()
    feeds = JobFeeds(pool_reader(app_pool), 0.25, sleep=lambda _s: never.wait())  # type: ignore[arg-type,return-value]
    old, old_at = await feeds.read(org_id, job_id)
    await pool.execute("UPDATE woo_customer_sync_queue SET done_count = 3 WHERE id = $1", job_id)
    new, new_at = await feeds.read(org_id, job_id)
    async with (
        feeds.follow(org_id, job_id, new, new_at) as first,
        feeds.follow(org_id, job_id, old, old_at) as second,  # read earlier
    ):
        assert first is second and second.status == new
    assert len(feeds) == 0


async def test_a_poke_reads_the_job_at_once_instead_of_at_the_next_interval(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    """The tracker that finished a job pokes its feed: followers see the final status without
    waiting for the interval (here one that never ends)."""
    org_id = await make_org(pool)
    job_id = await make_job(pool, org_id, state="processing", store_total=10)
    never: asyncio.Event = asyncio.Event()
    feeds = JobFeeds(pool_reader(app_pool), 0.25, sleep=lambda _s: never.wait())  # type: ignore[arg-type,return-value]
    status, read_at = await feeds.read(org_id, job_id)
    async with feeds.follow(org_id, job_id, status, read_at) as feed:
        seen = feed.version
        await pool.execute(
            "UPDATE woo_customer_sync_queue SET done_count = 10, total = 10, state = 'done',"
            " fetch_done_at = now(), finished_at = now() WHERE id = $1",
            job_id,
        )
        feeds.poke(org_id, uuid4())  # another job's poke reads nothing
        await asyncio.sleep(0.1)
        assert feed.version == seen
        feeds.poke(org_id, job_id)
        await feed.wait(seen, WAIT_S)
        assert feed.status is not None and feed.status.state == "done" and feed.ended
