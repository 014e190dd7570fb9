"""Migration 0020 (orchestration): what the schema holds a parent and its children to, and its
down migration with a parent and its children in the table."""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg
import pytest

from shared import db
from tests.factories import make_connection, make_job, make_org

INSERT_JOB = """
INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, kind, batch_size,
                                     concurrency)
VALUES ($1, $2, $3, 'processing', $4, 100, 4)
"""


async def _parent(pool: asyncpg.Pool, org: UUID) -> UUID:
    parent = uuid4()
    await pool.execute(INSERT_JOB, parent, org, None, "orchestration")
    return parent


async def test_a_parent_has_no_connection_and_only_sync_jobs_have_a_parent(
    pool: asyncpg.Pool,
) -> None:
    org = await make_org(pool)
    connection = await make_connection(pool, org)
    with pytest.raises(asyncpg.CheckViolationError):  # a parent reads no store
        await pool.execute(INSERT_JOB, uuid4(), org, connection, "orchestration")
    with pytest.raises(asyncpg.CheckViolationError):  # a sync job still needs its store
        await pool.execute(INSERT_JOB, uuid4(), org, None, "sync")
    parent = await _parent(pool, org)
    child = await make_job(pool, org, state="queued")
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET parent_id = $1 WHERE id = $2", parent, child
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "UPDATE woo_customer_sync_queue SET kind = 'preview' WHERE id = $1", child
        )


async def test_down_drops_parents_and_keeps_their_children(
    database_url: str, pool: asyncpg.Pool
) -> None:
    org = await make_org(pool)
    parent = await _parent(pool, org)
    child = await make_job(pool, org, state="done")
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET parent_id = $1 WHERE id = $2", parent, child
    )

    later = [m for m in db.discover() if m.version >= 20]
    reverted = await db.migrate_down(database_url, len(later))
    assert [m.version for m in reverted][-1] == 20
    rows = await pool.fetch("SELECT id, state FROM woo_customer_sync_queue")
    assert [(r["id"], r["state"]) for r in rows] == [(child, "done")]
    with pytest.raises(asyncpg.NotNullViolationError):
        await pool.execute(INSERT_JOB, uuid4(), org, None, "orchestration")
    with pytest.raises(asyncpg.CheckViolationError):  # no such kind any more
        connection = await make_connection(pool, org)
        await pool.execute(INSERT_JOB, uuid4(), org, connection, "orchestration")

    await db.migrate_up(database_url)
    await _parent(pool, org)
