"""A job's line counters (migration 0023) against the real PostgreSQL: always equal to its lines
counted by state, whatever duplicated, replayed, concurrent or rolled-back statements wrote them,
and the tracker's recompute reads them, never a line.

The lines are written by the services' own statements (the fetcher's ``INSERT_LINES``, the
syncer's ``SETTLE_LINES`` upsert, the api's and cleanup's deletes) as the services' role, so row
security applies to the triggers' writes as it does in production.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from services.fetcher import queries as fetcher_q
from services.syncer import queries as syncer_q
from services.tracker import queries as tracker_q
from services.tracker.handlers import recompute
from shared import db
from shared.auth import create_org
from shared.db import for_org
from tests.factories import add_lines, make_job
from tests.helpers import job_row

LINE_TABLE = "woo_customer_sync_queue_line"


async def line_counts(pool: asyncpg.Pool, job_id: UUID) -> Counter[str]:
    rows = await pool.fetch(
        f"SELECT state, count(*) AS n FROM {LINE_TABLE} WHERE job_id = $1 GROUP BY state", job_id
    )
    return Counter({r["state"]: r["n"] for r in rows})


async def counter_counts(pool: asyncpg.Pool, job_id: UUID) -> Counter[str]:
    rows = await pool.fetch(
        """SELECT state, sum(n)::int AS n FROM woo_customer_sync_line_count WHERE job_id = $1
           GROUP BY state HAVING sum(n) <> 0""",
        job_id,
    )
    return Counter({r["state"]: r["n"] for r in rows})


async def counter_rows(pool: asyncpg.Pool, job_id: UUID) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM woo_customer_sync_line_count WHERE job_id = $1", job_id
    )


def settled(woo_ids: list[int], state: str) -> list[dict[str, Any]]:
    return [
        {
            "woo_id": w,
            "state": state,
            "error": None,
            "warning": None,
            "payload": None,
            "mantis_version": None,
        }
        for w in woo_ids
    ]


async def page(app_pool: asyncpg.Pool, job_id: UUID, org_id: UUID, woo_ids: list[int]) -> None:
    """The fetcher recording a page's lines (ON CONFLICT DO NOTHING)."""
    await for_org(app_pool, org_id).execute(fetcher_q.INSERT_LINES, job_id, org_id, 1, woo_ids)


async def batch(
    app_pool: asyncpg.Pool, job_id: UUID, org_id: UUID, woo_ids: list[int], state: str
) -> None:
    """The syncer settling a batch's lines (an upsert: ON CONFLICT DO UPDATE)."""
    await for_org(app_pool, org_id).execute(
        syncer_q.SETTLE_LINES, job_id, org_id, settled(sorted(woo_ids), state)
    )


async def test_counters_equal_the_lines_under_duplicates_replays_and_concurrent_writers(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    other_job = await make_job(pool, org_id)  # shares nothing with the first
    ids = list(range(1, 601))
    pages = [ids[i : i + 50] for i in range(0, len(ids), 50)]
    rng = random.Random(12)

    # Every page recorded twice (a redelivered fetch), some concurrently, with recomputes (and
    # so folds) racing the writers.
    scope = for_org(app_pool, org_id)
    writes = [page(app_pool, job_id, org_id, p) for p in pages + pages]
    writes += [page(app_pool, other_job, org_id, p) for p in pages[:3]]
    rng.shuffle(writes)
    await asyncio.gather(*writes, *(recompute(scope, job_id) for _ in range(6)))
    assert await counter_counts(pool, job_id) == await line_counts(pool, job_id) == {"pending": 600}
    assert await counter_counts(pool, other_job) == {"pending": 150}

    # Batches settled concurrently, each delivered two or three times, some failing first and
    # succeeding on a replay, some failing for good; a recompute between every few writes.
    writes = []
    for n, p in enumerate(pages):
        if n % 4 == 0:
            writes += [batch(app_pool, job_id, org_id, p, "processing")] * 2
        if n % 5 == 1:
            writes += [batch(app_pool, job_id, org_id, p[:10], "failed")]
        writes += [batch(app_pool, job_id, org_id, p[10:], "done")] * (2 + n % 2)
    rng.shuffle(writes)
    folds = [recompute(scope, job_id) for _ in range(len(writes) // 3)]
    await asyncio.gather(*writes, *folds)
    lines = await line_counts(pool, job_id)
    assert await counter_counts(pool, job_id) == lines
    assert lines["done"] == 480

    # A statement that fails rolls its deltas back with it.
    with pytest.raises(asyncpg.PostgresError):
        async with scope.transaction() as conn:
            await conn.execute(syncer_q.SETTLE_LINES, job_id, org_id, settled(ids[:10], "done"))
            await conn.execute("SELECT 1/0")
    assert await counter_counts(pool, job_id) == lines

    # The recompute writes what the lines say, and folds the counters to one row per state.
    await recompute(scope, job_id)
    row = await job_row(pool, job_id)
    assert (row["total"], row["done_count"], row["failed_count"]) == (
        600,
        lines["done"],
        lines["failed"],
    )
    assert await counter_rows(pool, job_id) == len(lines)
    assert await counter_counts(pool, job_id) == await line_counts(pool, job_id)

    # Lines deleted (as the cleanup does) are subtracted; a job deleted with its lines takes its
    # counters along without a delta for a job that is gone.
    await pool.execute(f"DELETE FROM {LINE_TABLE} WHERE job_id = $1 AND woo_id <= 100", job_id)
    assert await counter_counts(pool, job_id) == await line_counts(pool, job_id)
    await pool.execute("DELETE FROM woo_customer_sync_queue WHERE id = $1", job_id)
    assert await counter_rows(pool, job_id) == 0


async def test_other_orgs_counters_are_out_of_reach(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_a, _ = await create_org(pool, "a")
    org_b, _ = await create_org(pool, "b")
    job_a = await make_job(pool, org_a)
    await add_lines(pool, job_a, org_a, range(1, 11), "done")
    seen = await for_org(app_pool, org_b).fetchval(
        "SELECT count(*) FROM woo_customer_sync_line_count WHERE job_id = $1", job_a
    )
    assert seen == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # row security's WITH CHECK
        await for_org(app_pool, org_b).execute(
            "INSERT INTO woo_customer_sync_line_count (job_id, org_id, state, n) "
            "VALUES ($1, $2, 'done', 5)",
            job_a,
            org_a,
        )
    await for_org(app_pool, org_b).execute(tracker_q.FOLD_LINE_COUNTS, job_a, org_a)
    assert await counter_counts(pool, job_a) == {"done": 10}


def _relations(plan: dict[str, Any]) -> set[str]:
    found = {plan["Relation Name"]} if "Relation Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= _relations(child)
    return found


async def _line_scans(conn: asyncpg.Connection) -> int:
    """Scans of the line table this transaction has started so far, by a sequential scan or any
    of its indexes, an index-only scan included (PostgreSQL's own per-transaction counts)."""
    return await conn.fetchval(
        """SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0)
           FROM pg_stat_xact_user_tables WHERE relname = $1""",
        LINE_TABLE,
    )


async def test_the_recompute_reads_no_line(pool: asyncpg.Pool, app_pool: asyncpg.Pool) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    for start in range(1, 5001, 500):
        await add_lines(pool, job_id, org_id, range(start, start + 500), "done")

    # The plans name no line table...
    async with for_org(app_pool, org_id).transaction() as conn:
        for statement in (tracker_q.FOLD_LINE_COUNTS, tracker_q.RECOMPUTE_JOB):
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", job_id, org_id)
            assert LINE_TABLE not in _relations(json.loads(plan)[0]["Plan"])

    # ...and running them starts no scan of the lines, for 5,000 lines as for none.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('woosync.org_id', $1, true)", str(org_id))
        before = await _line_scans(conn)
        await conn.fetchrow(tracker_q.LOCK_JOB, job_id, org_id)
        await conn.execute(tracker_q.FOLD_LINE_COUNTS, job_id, org_id)
        row = await conn.fetchrow(tracker_q.RECOMPUTE_JOB, job_id, org_id)
        assert await _line_scans(conn) == before
        # The probe sees a count of the lines, as the tracker made before migration 0023.
        await conn.fetchval(f"SELECT count(*) FROM {LINE_TABLE} WHERE job_id = $1", job_id)
        assert await _line_scans(conn) == before + 1
    assert row is not None and row["total"] == row["done_count"] == 5000
    assert await counter_rows(pool, job_id) == 1  # ten inserts folded into one row


async def test_the_migration_counts_the_lines_already_there(
    database_url: str, pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    later = [m for m in db.discover() if m.version >= 23]
    await db.migrate_down(database_url, len(later))
    await add_lines(pool, job_id, org_id, range(1, 8), "done")
    await add_lines(pool, job_id, org_id, range(8, 10), "failed")
    await db.migrate_up(database_url)
    assert await counter_counts(pool, job_id) == {"done": 7, "failed": 2}
    await add_lines(pool, job_id, org_id, [10], "pending")
    assert await counter_counts(pool, job_id) == await line_counts(pool, job_id)
