"""Customers gone from their store: marked deleted by the tracker when a proven crawl finishes,
restored by the syncer when a later crawl sees them again (migration 0013).

The fetcher reads a simulated store and says whether its crawl proved it complete. Otherwise
jobs, lines and customers are written by SQL as the fetcher and syncer would leave them; the
tracker's ``recompute`` and ``fail_job`` and the syncer's handler run against the real database
as the services' role (row-level security applies).
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from services.fetcher.handlers import handle_sync_requested
from services.fetcher.preview import compare_store
from services.fetcher.preview_read import StoreRead
from services.syncer.handlers import handle_customer_batch
from services.tracker.handlers import fail_job, recompute
from shared.auth import create_org
from shared.db import for_org
from shared.jobs import get_status
from shared.messages import FetchFailed
from tests.factories import Job, add_customers, add_lines, make_sync_job, small_customer
from tests.helpers import Recorder, fetcher_deps, job_row, queue_new_org_sync
from tools.woosim.testing import running_simulator

STORE = list(range(1, 11))  # the customers stored before the crawl


async def crawled_job(
    pool: asyncpg.Pool, org_id: UUID, *, proven: bool = True, seen: list[int], failed: list[int]
) -> Job:
    """A job of a new connection with ``STORE`` stored before its crawl began, whose crawl saw
    ``seen`` (lines done) and ``failed`` (lines failed) and read every page."""
    job = await make_sync_job(pool, org_id=org_id, fetch_done=True)
    await add_customers(pool, job.job_id, STORE)
    await pool.execute(
        """UPDATE customer SET synced_at = now() - interval '1 hour'
           WHERE connection_id = $1""",
        job.connection_id,
    )
    await pool.execute(
        """UPDATE woo_customer_sync_queue SET started_at = now() - interval '10 minutes',
                  fetch_proven = $2 WHERE id = $1""",
        job.job_id,
        proven,
    )
    await add_lines(pool, job.job_id, org_id, seen, "done")
    await add_lines(pool, job.job_id, org_id, failed, "failed")
    return job


async def deleted_ids(pool: asyncpg.Pool, connection_id: UUID) -> list[int]:
    rows = await pool.fetch(
        """SELECT woo_id FROM customer WHERE connection_id = $1 AND deleted_at IS NOT NULL
           ORDER BY woo_id""",
        connection_id,
    )
    return [r["woo_id"] for r in rows]


async def test_the_fetcher_says_whether_its_crawl_proved_it_read_every_customer(
    pool: asyncpg.Pool,
) -> None:
    async with running_simulator(customers=30, seed=4) as sim:
        proven = await queue_new_org_sync(pool, sim, batch_size=10, concurrency=2)
        await handle_sync_requested(proven, fetcher_deps(pool, Recorder()))
        # Windows of one customer cannot overlap: such a crawl proves nothing.
        single = await queue_new_org_sync(pool, sim, batch_size=1, concurrency=2)
        await handle_sync_requested(single, fetcher_deps(pool, Recorder()))
    for request, expected in ((proven, True), (single, False)):
        row = await job_row(pool, request.job_id)
        assert row["fetch_done_at"] is not None and row["fetch_proven"] is expected


async def test_a_proven_crawl_marks_the_customers_it_did_not_see(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job = await crawled_job(pool, org_id, seen=[1, 2, 3, 5, 6, 8], failed=[9])
    # Written after the crawl began by something else (another job's replay, a webhook): the
    # crawl's view of the store may be older than it, so it is left alone.
    await add_customers(pool, job.job_id, [20])
    # Another store of the org, and another org's store, never seen by this job.
    other = await crawled_job(pool, org_id, seen=STORE, failed=[])
    other_org, _ = await create_org(pool, "other")
    foreign = await crawled_job(pool, other_org, seen=[], failed=[])

    done = await recompute(for_org(app_pool, org_id), job.job_id)

    assert done is not None and done.state == "failed"  # a failed line: still seen
    assert done.deleted == 3
    assert await deleted_ids(pool, job.connection_id) == [4, 7, 10]
    assert await deleted_ids(pool, other.connection_id) == []
    assert await deleted_ids(pool, foreign.connection_id) == []
    assert await pool.fetchval("SELECT count(*) FROM customer") == 31  # soft: nothing removed
    status = await get_status(for_org(app_pool, org_id), org_id=org_id, job_id=job.job_id)
    assert status is not None and (status.deleted, status.restored) == (3, 0)
    events = await pool.fetch(
        "SELECT event, details FROM woo_sync_activity WHERE job_id = $1 ORDER BY id", job.job_id
    )
    assert [e["event"] for e in events] == ["customers.deleted", "job.failed"]
    assert events[0]["details"] == {"deleted": 3, "woo_ids": [4, 7, 10]}
    assert events[1]["details"]["deleted"] == 3


async def test_a_second_finish_keeps_the_first_deletion_date_and_adds_nothing(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job = await crawled_job(pool, org_id, seen=[1, 2, 3, 4, 5, 6, 7, 8], failed=[9])
    done = await recompute(for_org(app_pool, org_id), job.job_id)
    assert done is not None and done.deleted == 1
    first = await pool.fetchval(
        "SELECT deleted_at FROM customer WHERE connection_id = $1 AND woo_id = 10",
        job.connection_id,
    )
    # Its parked customer is synced after all: the failed job recovers to done.
    await pool.execute(
        "UPDATE woo_customer_sync_queue_line SET state = 'done' WHERE job_id = $1", job.job_id
    )
    again = await recompute(for_org(app_pool, org_id), job.job_id)
    assert again is not None and again.state == "done" and again.deleted == 1
    assert await deleted_ids(pool, job.connection_id) == [10]
    assert first == await pool.fetchval(
        "SELECT deleted_at FROM customer WHERE connection_id = $1 AND woo_id = 10",
        job.connection_id,
    )


async def test_an_unproven_or_failed_crawl_marks_nothing(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    unproven = await crawled_job(pool, org_id, proven=False, seen=[1, 2], failed=[])
    done = await recompute(for_org(app_pool, org_id), unproven.job_id)
    assert done is not None and done.state == "done" and done.deleted == 0
    assert await deleted_ids(pool, unproven.connection_id) == []

    # The fetch failed (it never sets fetch_done_at); every line is settled.
    failed = await crawled_job(pool, org_id, seen=[1, 2], failed=[])
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET fetch_done_at = NULL WHERE id = $1", failed.job_id
    )
    assert await recompute(for_org(app_pool, org_id), failed.job_id) is None
    event = FetchFailed(job_id=failed.job_id, org_id=org_id, error="the store went away")
    gave_up = await fail_job(app_pool, event)
    assert gave_up is not None and gave_up.deleted == 0
    assert await deleted_ids(pool, failed.connection_id) == []


async def test_a_customer_seen_again_by_a_later_crawl_is_restored(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    first = await crawled_job(pool, org_id, seen=[1, 2, 3, 4, 5, 6, 7, 8], failed=[])
    await recompute(for_org(app_pool, org_id), first.job_id)
    assert await deleted_ids(pool, first.connection_id) == [9, 10]

    # A replay of the first job's customer 9 (its crawl began before the deletion) restores
    # nothing: the deletion was found after that crawl.
    old = await handle_customer_batch(
        first.batch([small_customer(9)]), attempt=0, pool=app_pool, max_attempts=4
    )
    assert old.done is not None
    assert await deleted_ids(pool, first.connection_id) == [9, 10]

    # The next job of the connection, begun after the deletion, finds 9 in the store again.
    later = Job(org_id, first.connection_id, await new_job_of(pool, first))
    await add_lines(pool, later.job_id, org_id, [9], "pending")
    await handle_customer_batch(
        later.batch([small_customer(9)]), attempt=0, pool=app_pool, max_attempts=4
    )
    assert await deleted_ids(pool, first.connection_id) == [10]
    # A redelivery of the same batch restores nothing more.
    await handle_customer_batch(
        later.batch([small_customer(9)]), attempt=1, pool=app_pool, max_attempts=4
    )
    status = await get_status(for_org(app_pool, org_id), org_id=org_id, job_id=later.job_id)
    assert status is not None and (status.deleted, status.restored) == (0, 1)
    events = await pool.fetch(
        "SELECT details FROM woo_sync_activity WHERE event = 'customers.restored'"
    )
    assert [e["details"] for e in events] == [{"restored": 1, "woo_ids": [9]}]


async def new_job_of(pool: asyncpg.Pool, job: Job) -> UUID:
    """A processing job of ``job``'s connection whose crawl began now."""
    job_id: UUID = await pool.fetchval(
        """INSERT INTO woo_customer_sync_queue
               (id, org_id, connection_id, state, batch_size, concurrency, started_at)
           VALUES (gen_random_uuid(), $1, $2, 'processing', 100, 4, now())
           RETURNING id""",
        job.org_id,
        job.connection_id,
    )
    return job_id


async def test_the_preview_counts_what_a_sync_would_mark_deleted(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job = await crawled_job(pool, org_id, seen=[1, 2, 3, 4, 5, 6, 7, 8], failed=[])
    await recompute(for_org(app_pool, org_id), job.job_id)  # 9 and 10 marked deleted
    # The store now holds 1 to 6 and 10 (back again): 7 and 8 are newly gone.
    read = StoreRead(per_page=100, customers={w: small_customer(w) for w in [1, 2, 3, 4, 5, 6, 10]})
    comparison = await compare_store(
        app_pool, read, org_id=org_id, connection_id=job.connection_id, sample_size=5
    )
    assert comparison.counts["delete"] == 2
    assert [sample.woo_id for sample in comparison.samples["delete"]] == [7, 8]
