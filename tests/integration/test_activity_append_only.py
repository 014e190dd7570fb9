"""The audit log accepts inserts and refuses UPDATE, DELETE and TRUNCATE, until migrated down."""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg
import pytest

from shared import activity, db
from shared.auth import create_org

APPEND_ONLY_VERSION = 3

CHANGES = (
    "UPDATE woo_sync_activity SET event = 'rewritten'",
    "UPDATE woo_sync_activity SET level = 'debug' WHERE false",  # refused even when no row matches
    "DELETE FROM woo_sync_activity",
    "DELETE FROM woo_sync_activity WHERE id = -1",
    "TRUNCATE woo_sync_activity",
)


async def _one_record(pool: asyncpg.Pool) -> UUID:
    org_id, _ = await create_org(pool, "audited")
    await activity.record(
        pool, org_id=org_id, job_id=uuid4(), event="job.created", details={"batch_size": 10}
    )
    return org_id


async def _rows(pool: asyncpg.Pool) -> list[tuple[str, str, dict[str, int]]]:
    # create_org's own row (the org's first key) is not what these tests are about.
    rows = await pool.fetch(
        "SELECT event, level, details FROM woo_sync_activity"
        " WHERE event <> 'key.created' ORDER BY id"
    )
    return [(r["event"], r["level"], r["details"]) for r in rows]


async def test_inserts_work(pool: asyncpg.Pool) -> None:
    org_id = await _one_record(pool)
    await activity.record(pool, org_id=org_id, job_id=None, event="job.retried", level="warning")
    assert [row[0] for row in await _rows(pool)] == ["job.created", "job.retried"]


@pytest.mark.parametrize("statement", CHANGES)
async def test_changes_are_refused_with_a_clear_error(pool: asyncpg.Pool, statement: str) -> None:
    await _one_record(pool)
    before = await _rows(pool)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only") as refused:
        await pool.execute(statement)
    operation = statement.split()[0]
    assert f"{operation} is not allowed" in str(refused.value)
    assert await _rows(pool) == before


async def test_a_change_inside_a_transaction_rolls_it_back(pool: asyncpg.Pool) -> None:
    org_id = await _one_record(pool)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await activity.record(conn, org_id=org_id, job_id=None, event="job.forced_done")
                await conn.execute("DELETE FROM woo_sync_activity")
    assert [row[0] for row in await _rows(pool)] == ["job.created"]


async def test_public_holds_no_write_privileges(pool: asyncpg.Pool) -> None:
    granted = await pool.fetch(
        "SELECT privilege_type FROM information_schema.role_table_grants "
        "WHERE table_name = 'woo_sync_activity' AND grantee = 'PUBLIC'"
    )
    assert granted == []


async def test_migrating_down_lifts_it_and_up_restores_it(
    database_url: str, pool: asyncpg.Pool
) -> None:
    steps = await pool.fetchval(
        "SELECT count(*) FROM schema_migrations WHERE version >= $1", APPEND_ONLY_VERSION
    )
    reverted = await db.migrate_down(database_url, steps)
    assert reverted[-1].version == APPEND_ONLY_VERSION
    await _one_record(pool)
    assert await pool.execute("UPDATE woo_sync_activity SET event = 'x'") != "UPDATE 0"
    assert await pool.execute("DELETE FROM woo_sync_activity") != "DELETE 0"

    await db.migrate_up(database_url)
    await _one_record(pool)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("DELETE FROM woo_sync_activity")
