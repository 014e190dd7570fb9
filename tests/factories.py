"""Rows for tests to start from, written as the schema's owner (so for any org, past row-level
security). One place for the inserts that many tests need; each returns the ids it made."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID, uuid4

import asyncpg


async def make_job(
    pool: asyncpg.Pool, org_id: UUID, *, state: str = "processing", store_total: int | None = None
) -> UUID:
    """A job of a new store connection of ``org_id``."""
    connection_id, job_id = uuid4(), uuid4()
    await pool.execute(
        """INSERT INTO woo_connections (id, org_id, store_url, auth_mode, consumer_key,
                                        consumer_secret_enc)
           VALUES ($1, $2, $3, 'basic', 'ck_test', '\\x00'::bytea)""",
        connection_id,
        org_id,
        f"https://{connection_id.hex[:8]}.shop.example",
    )
    await pool.execute(
        """INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, batch_size,
                                                concurrency, store_total)
           VALUES ($1, $2, $3, $4, 100, 4, $5)""",
        job_id,
        org_id,
        connection_id,
        state,
        store_total,
    )
    return job_id


async def add_lines(
    pool: asyncpg.Pool, job_id: UUID, org_id: UUID, woo_ids: Sequence[int], state: str = "pending"
) -> None:
    await pool.execute(
        """INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, state)
           SELECT $1, w, $2, $4 FROM unnest($3::bigint[]) AS w""",
        job_id,
        org_id,
        list(woo_ids),
        state,
    )


async def add_page(pool: asyncpg.Pool, job_id: UUID, page: int, customers: int) -> None:
    await pool.execute(
        "INSERT INTO woo_customer_sync_page (job_id, page, customers) VALUES ($1, $2, $3)",
        job_id,
        page,
        customers,
    )


async def add_customers(pool: asyncpg.Pool, job_id: UUID, woo_ids: Sequence[int]) -> None:
    """Customers as the syncer would have stored them for the job's org and connection."""
    await pool.execute(
        """INSERT INTO customer (org_id, connection_id, woo_id, email, raw, source_hash)
           SELECT j.org_id, j.connection_id, w, 'c' || w || '@example.com', '{}'::jsonb, 'h'
           FROM woo_customer_sync_queue j, unnest($2::bigint[]) AS w
           WHERE j.id = $1""",
        job_id,
        list(woo_ids),
    )
