"""The services' PostgreSQL pool as the settings make it (docs/operations.md, "Running several
replicas"): its sizes, and the statement cache that PgBouncer's transaction pooling needs off.

With ``WOOSYNC_DB_STATEMENT_CACHE_SIZE=0`` asyncpg prepares every statement unnamed, so no named
prepared statement is left on a server session for another client to trip over; the tracker's,
the api's and the rate limiter's statements still work (the end-to-end run of every service with
the setting is ``tests/e2e/test_replicas.py``).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import asyncpg
import pytest
from pydantic import ValidationError

from services.tracker.handlers import recompute
from shared.activity import record
from shared.db import for_org
from shared.ratelimit import RateLimiter, StreamSlots
from shared.runtime import Runtime
from shared.settings import Settings
from tests.factories import add_lines, make_sync_job

NAMED_STATEMENTS = "SELECT count(*) FROM pg_prepared_statements"


def test_pool_sizes_are_checked() -> None:
    with pytest.raises(ValidationError, match="WOOSYNC_DB_POOL_MIN_SIZE"):
        Settings(db_pool_min_size=5, db_pool_max_size=4)
    with pytest.raises(ValidationError):
        Settings(db_pool_max_size=0)
    with pytest.raises(ValidationError):
        Settings(db_statement_cache_size=-1)
    assert Settings(session_database_url="").leader_database_url() == Settings().database_url
    assert Settings(session_database_url="postgresql://x/y").leader_database_url() == (
        "postgresql://x/y"
    )


async def _connections(pool: asyncpg.Pool, name: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        name,
    )
    return count


async def test_pool_sizes_come_from_the_settings(settings: Settings, pool: asyncpg.Pool) -> None:
    sized = settings.model_copy(update={"db_pool_min_size": 2, "db_pool_max_size": 3})
    runtime = Runtime("syncer", sized)
    app_pool = await runtime.open()
    try:
        assert (app_pool.get_min_size(), app_pool.get_max_size()) == (2, 3)
        assert await _connections(pool, "woosync-syncer") == 2  # min_size, opened at start
        async with AsyncExitStack() as held:
            for _ in range(3):
                await held.enter_async_context(app_pool.acquire())
            assert await _connections(pool, "woosync-syncer") == 3
            assert app_pool.get_idle_size() == 0
    finally:
        await runtime.close()


@pytest.mark.parametrize("cache_size", [0, 100])
async def test_statement_cache_size_zero_leaves_no_named_statement(
    settings: Settings, pool: asyncpg.Pool, cache_size: int
) -> None:
    job = await make_sync_job(pool, fetch_done=True)
    await add_lines(pool, job.job_id, job.org_id, range(1, 11), state="done")
    one = settings.model_copy(
        update={"db_pool_min_size": 1, "db_pool_max_size": 1, "db_statement_cache_size": cache_size}
    )
    runtime = Runtime("tracker", one)
    app_pool = await runtime.open()  # one connection: every statement below runs on it
    try:
        scope = for_org(app_pool, job.org_id)
        done = await recompute(scope, job.job_id)  # org-scoped transaction, row lock, jsonb
        assert done is not None and (done.state, done.done, done.total) == ("done", 10, 10)
        assert await recompute(scope, job.job_id) is None  # finished once
        limiter = RateLimiter(app_pool, "test", per_minute=60, burst=2)
        assert [await limiter.allow(job.org_id) for _ in range(3)] == [True, True, False]
        slots = StreamSlots(app_pool, "test:streams", limit=1, lease_s=30)
        lease = await slots.open(job.org_id)  # a transaction-scoped advisory lock
        assert lease is not None and await slots.open(job.org_id) is None
        await slots.close(lease)
        async with scope.transaction() as conn:
            await record(
                conn, org_id=job.org_id, job_id=job.job_id, event="test.event", details={"a": 1}
            )
        events = await pool.fetchval(
            "SELECT count(*) FROM woo_sync_activity WHERE job_id = $1 AND event = ANY($2)",
            job.job_id,
            ["job.completed", "test.event"],
        )
        assert events == 2
        named = await asyncio.wait_for(app_pool.fetchval(NAMED_STATEMENTS), 10)
        if cache_size == 0:
            assert named == 0
        else:
            assert named > 0  # the default keeps them: the check above can fail
    finally:
        await runtime.close()


async def test_a_connection_back_in_the_pool_keeps_no_org_lock_or_transaction(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The pool sends no reset query when a connection comes back (``shared.db``): what a
    transaction set or took ends with it, whether it committed or failed."""
    job = await make_sync_job(pool)
    one = settings.model_copy(update={"db_pool_min_size": 1, "db_pool_max_size": 1})
    runtime = Runtime("api", one)
    app_pool = await runtime.open()  # one connection: every transaction below runs on it
    visible = "SELECT count(*) FROM woo_customer_sync_queue WHERE id = $1"
    after = """
        SELECT current_setting('woosync.org_id', true) AS org,
               (SELECT count(*) FROM pg_locks
                WHERE pid = pg_backend_pid() AND locktype = 'advisory') AS advisory_locks
    """
    try:
        scope = for_org(app_pool, job.org_id)
        assert await scope.fetchval(visible, job.job_id) == 1
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with scope.transaction() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(42)")
                await conn.fetchval("SELECT 1 / 0")
        async with app_pool.acquire() as conn:
            assert not conn.is_in_transaction()
            state = await conn.fetchrow(after)
            assert (state["org"] or "", state["advisory_locks"]) == ("", 0)
            assert await conn.fetchval(visible, job.job_id) == 0  # row security: no org named
    finally:
        await runtime.close()


async def test_a_failed_statement_of_an_org_leaves_its_connection_usable(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """``OrgScope``'s one-statement calls begin their transaction themselves: a failure rolls it
    back, and the next call on the same connection sees its own org only."""
    first, second = await make_sync_job(pool), await make_sync_job(pool, org_name="globex")
    one = settings.model_copy(update={"db_pool_min_size": 1, "db_pool_max_size": 1})
    runtime = Runtime("api", one)
    app_pool = await runtime.open()
    count = "SELECT count(*) FROM woo_customer_sync_queue"
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await for_org(app_pool, first.org_id).fetchval("SELECT 1 / 0")
        assert await for_org(app_pool, second.org_id).fetchval(count) == 1
        assert await for_org(app_pool, first.org_id).fetchrow(count) == (1,)
        async with app_pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval(count) == 0
    finally:
        await runtime.close()
