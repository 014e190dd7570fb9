"""Migration 0010 (pause and cancel): the slot of a store's connection with the new states, and
its down migration with jobs and lines in them."""

from __future__ import annotations

import asyncpg
import pytest

from shared import db
from tests.factories import add_held_batch, add_lines, make_connection, make_job, make_org


async def test_a_paused_job_and_a_cancelled_one_still_crawling_hold_the_store(
    pool: asyncpg.Pool,
) -> None:
    org = await make_org(pool)
    connection = await make_connection(pool, org)
    paused = await make_job(pool, org, state="paused", connection_id=connection)
    with pytest.raises(asyncpg.UniqueViolationError):
        await make_job(pool, org, state="queued", connection_id=connection)
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'cancelled' WHERE id = $1", paused
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await make_job(pool, org, state="queued", connection_id=connection)
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET crawl_stopped_at = now() WHERE id = $1", paused
    )
    await make_job(pool, org, state="queued", connection_id=connection)


async def test_down_turns_the_new_states_into_old_ones_and_up_brings_them_back(
    database_url: str, pool: asyncpg.Pool
) -> None:
    org = await make_org(pool)
    paused = await make_job(pool, org, state="paused")
    cancelled = await make_job(pool, org, state="cancelled")
    await add_lines(pool, cancelled, org, [1, 2], state="cancelled")
    await add_held_batch(pool, paused, org)

    # Down to 0009: every later migration first, then 0010 itself.
    later = [m for m in db.discover() if m.version >= 10]
    reverted = await db.migrate_down(database_url, len(later))
    assert [m.version for m in reverted][-1] == 10
    states = await pool.fetch("SELECT id, state FROM woo_customer_sync_queue")
    assert {r["id"]: r["state"] for r in states} == {paused: "failed", cancelled: "done"}
    lines = await pool.fetch("SELECT DISTINCT state FROM woo_customer_sync_queue_line")
    assert [r["state"] for r in lines] == ["failed"]
    assert await pool.fetchval("SELECT to_regclass('woo_customer_sync_hold')") is None
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE woo_customer_sync_queue SET state = 'paused'")

    await db.migrate_up(database_url)
    await pool.execute("UPDATE woo_customer_sync_queue SET state = 'paused' WHERE id = $1", paused)
    await add_held_batch(pool, paused, org)
