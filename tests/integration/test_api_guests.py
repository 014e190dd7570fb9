"""The include_guests start option (stored on the connection, fixed per job) and the guest rules
of the customer table (migration 0021)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import pytest

from shared.guests import guest_woo_id
from tests.factories import make_sync_job
from tests.helpers import Api, error_of

JOB_GUESTS = "SELECT include_guests, connection_id FROM woo_customer_sync_queue WHERE id = $1"


async def _start(api: Api, store: Any, **options: Any) -> tuple[bool, bool]:
    """Starts a job, reads what it and its connection hold, then closes it (a next start makes a
    new job)."""
    started = await api.start(store, **options)
    assert started.status_code == 202, started.text
    job_id = UUID(started.json()["job_id"])
    job = await api.pool.fetchrow(JOB_GUESTS, job_id)
    connection = await api.pool.fetchval(
        "SELECT include_guests FROM woo_connections WHERE id = $1", job["connection_id"]
    )
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'done', finished_at = now() WHERE id = $1",
        job_id,
    )
    return job["include_guests"], connection


async def test_start_option_is_checked_stored_on_the_connection_and_fixed_per_job(
    api: Api, store: Any
) -> None:
    bad = await api.start(store, include_guests="yes")
    assert error_of(bad) == (422, "invalid_request")
    assert "options.include_guests" in bad.json()["error"]["message"]
    assert await api.pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 0

    assert await _start(api, store) == (False, False)  # off unless asked for
    assert await _start(api, store, include_guests=True) == (True, True)
    assert await _start(api, store) == (True, True)  # the connection keeps it
    assert await _start(api, store, include_guests=False) == (False, False)
    created = await api.pool.fetch(
        "SELECT details FROM woo_sync_activity WHERE event = 'job.created' ORDER BY id"
    )
    assert [r["details"]["include_guests"] for r in created] == [False, True, True, False]


async def _insert(pool: asyncpg.Pool, job: Any, woo_id: int, kind: str, key: str | None) -> None:
    await pool.execute(
        "INSERT INTO customer (org_id, connection_id, woo_id, email, raw, source_hash, kind,"
        " guest_key) VALUES ($1, $2, $3, 'a@x.io', '{}', 'h', $4, $5)",
        job.org_id,
        job.connection_id,
        woo_id,
        kind,
        key,
    )


async def test_guests_are_kept_apart_by_the_table(pool: asyncpg.Pool) -> None:
    job = await make_sync_job(pool)
    gid = guest_woo_id("a@x.io")
    await _insert(pool, job, 7, "account", None)
    await _insert(pool, job, gid, "guest", "a@x.io")
    for woo_id, kind, key in [
        (8, "guest", "b@x.io"),  # a guest under a store id
        (-8, "account", None),  # an account without one
        (-9, "guest", None),  # a guest without its key
        (9, "account", "c@x.io"),  # an account with a guest key
        (-10, "buyer", "d@x.io"),  # no such kind
    ]:
        with pytest.raises(asyncpg.CheckViolationError):
            await _insert(pool, job, woo_id, kind, key)
    with pytest.raises(asyncpg.UniqueViolationError):  # one row per key and connection
        await _insert(pool, job, -11, "guest", "a@x.io")
