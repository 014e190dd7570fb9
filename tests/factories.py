"""Rows for tests to start from, written as the schema's owner (so for any org, past row-level
security). One place for the inserts that many tests need; each returns the ids it made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from shared.crypto import SecretBox
from shared.messages import CustomerBatch, SyncRequested
from tools.woosim.testing import SimHandle

# The owner's pool, or one connection taken from it when a test holds one.
Db = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class Job:
    """The ids of a seeded job, so that a test can send the messages the fetcher would."""

    org_id: UUID
    connection_id: UUID
    job_id: UUID

    def batch(self, customers: list[dict[str, Any]], page: int | None = 1) -> CustomerBatch:
        return CustomerBatch(
            job_id=self.job_id,
            org_id=self.org_id,
            connection_id=self.connection_id,
            page=page,
            customers=customers,
        )


async def make_org(db: Db, name: str = "acme") -> UUID:
    """An org without keys (``shared.auth.create_org`` also makes one, and audits it)."""
    org_id = uuid4()
    await db.execute("INSERT INTO orgs (id, name) VALUES ($1, $2)", org_id, name)
    return org_id


async def make_connection(
    db: Db,
    org_id: UUID,
    *,
    store_url: str | None = None,
    auth_mode: str = "basic",
    consumer_key: str = "ck_test",
    consumer_secret_enc: bytes = b"\x00",
) -> UUID:
    """A store connection of ``org_id``; by default at a URL of its own, with a dummy secret."""
    connection_id = uuid4()
    await db.execute(
        """INSERT INTO woo_connections (id, org_id, store_url, auth_mode, consumer_key,
                                        consumer_secret_enc)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        connection_id,
        org_id,
        store_url or f"https://{connection_id.hex[:8]}.shop.example",
        auth_mode,
        consumer_key,
        consumer_secret_enc,
    )
    return connection_id


async def make_job(
    db: Db,
    org_id: UUID,
    *,
    state: str = "processing",
    store_total: int | None = None,
    connection_id: UUID | None = None,
    batch_size: int = 100,
    concurrency: int | None = 4,
    fetch_done: bool = False,
    finished: bool = False,
) -> UUID:
    """A job of ``connection_id``, or of a new store connection of ``org_id``. ``fetch_done``:
    every page is read; ``finished``: the job has its finishing time."""
    connection_id = connection_id or await make_connection(db, org_id)
    job_id = uuid4()
    await db.execute(
        """INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, batch_size,
                                                concurrency, store_total, fetch_done_at,
                                                finished_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END,
                   CASE WHEN $9 THEN now() END)""",
        job_id,
        org_id,
        connection_id,
        state,
        batch_size,
        concurrency,
        store_total,
        fetch_done,
        finished,
    )
    return job_id


async def make_sync_job(
    db: Db,
    *,
    org_id: UUID | None = None,
    org_name: str = "acme",
    store_url: str | None = None,
    consumer_secret_enc: bytes = b"\x00",
    state: str = "processing",
    fetch_done: bool = False,
    finished: bool = False,
) -> Job:
    """A job of a new store connection of ``org_id``, or of a new org named ``org_name``."""
    org_id = org_id or await make_org(db, org_name)
    connection_id = await make_connection(
        db, org_id, store_url=store_url, consumer_secret_enc=consumer_secret_enc
    )
    job_id = await make_job(
        db,
        org_id,
        connection_id=connection_id,
        state=state,
        fetch_done=fetch_done,
        finished=finished,
    )
    return Job(org_id, connection_id, job_id)


async def queue_store_sync(
    db: Db,
    org_id: UUID,
    store: SimHandle,
    box: SecretBox,
    *,
    auth_mode: str = "oauth1",
    batch_size: int = 100,
    concurrency: int | None = 4,
) -> SyncRequested:
    """A queued job of a new connection to a running simulated store, its secret sealed by
    ``box``: what the api leaves behind for the fetcher, and the request it sends."""
    connection_id = await make_connection(
        db,
        org_id,
        store_url=store.url,
        auth_mode=auth_mode,
        consumer_key=store.consumer_key,
        consumer_secret_enc=box.encrypt(store.consumer_secret),
    )
    job_id = await make_job(
        db,
        org_id,
        connection_id=connection_id,
        state="queued",
        batch_size=batch_size,
        concurrency=concurrency,
    )
    return SyncRequested(job_id=job_id, org_id=org_id, connection_id=connection_id)


async def add_lines(
    db: Db,
    job_id: UUID,
    org_id: UUID,
    woo_ids: Sequence[int],
    state: str = "pending",
    *,
    page: int | None = None,
) -> None:
    await db.execute(
        """INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, state, page)
           SELECT $1, w, $2, $4, $5::int FROM unnest($3::bigint[]) AS w""",
        job_id,
        org_id,
        list(woo_ids),
        state,
        page,
    )


async def add_failed_lines(
    db: Db,
    job_id: UUID,
    org_id: UUID,
    payloads: Mapping[int, Any],
    *,
    page: int | None = None,
    attempts: int = 0,
    last_error: str | None = None,
) -> None:
    """Failed lines keeping the customer (by woo id) that ``retry`` would send again."""
    await db.executemany(
        """INSERT INTO woo_customer_sync_queue_line
               (job_id, woo_id, org_id, page, state, attempts, last_error, payload)
           VALUES ($1, $2, $3, $4, 'failed', $5, $6, $7)""",
        [(job_id, w, org_id, page, attempts, last_error, p) for w, p in payloads.items()],
    )


async def add_page(pool: asyncpg.Pool, job_id: UUID, page: int, customers: int) -> None:
    await pool.execute(
        "INSERT INTO woo_customer_sync_page (job_id, page, customers) VALUES ($1, $2, $3)",
        job_id,
        page,
        customers,
    )


async def add_held_batch(pool: asyncpg.Pool, job_id: UUID, org_id: UUID) -> None:
    """A batch the syncer held while the job was paused (its body as the syncer keeps it)."""
    await pool.execute(
        "INSERT INTO woo_customer_sync_hold (job_id, org_id, batch) VALUES ($1, $2, $3)",
        job_id,
        org_id,
        b'{"customers": []}',
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


async def make_read_job(
    pool: asyncpg.Pool,
    woo_ids: list[int],
    *,
    org_id: UUID | None = None,
    state: str = "processing",
    failed: dict[int, dict[str, Any]] | None = None,
) -> Job:
    """A job whose every page is read (``fetch_done_at``), with a pending line per customer;
    ``failed`` lines are stored as the syncer leaves parked customers (with their payload)."""
    job = await make_sync_job(
        pool,
        org_id=org_id,
        consumer_secret_enc=b"\x00\xff",
        state=state,
        fetch_done=True,
        finished=state in ("done", "failed"),
    )
    failed = failed or {}
    pending = [w for w in woo_ids if w not in failed]
    await add_lines(pool, job.job_id, job.org_id, pending, page=1)
    payloads = {w: failed[w] for w in woo_ids if w in failed}
    await add_failed_lines(
        pool, job.job_id, job.org_id, payloads, page=1, attempts=4, last_error="refused"
    )
    return job


def small_customer(woo_id: int, **overrides: Any) -> dict[str, Any]:
    """A store's customer with few fields, as a batch carries it."""
    return {
        "id": woo_id,
        "email": f"customer{woo_id}@example.com",
        "first_name": f"First{woo_id}",
        "last_name": "Last",
        "username": f"user{woo_id}",
        "date_created_gmt": "2024-05-01T07:00:00",
        "date_modified_gmt": None,
        **overrides,
    }


# A cause of parked customers that can be fixed: a CHECK constraint refusing this first name.
POISON = "POISON"
CONSTRAINT = "customer_not_poison"


async def add_poison_rule(pool: asyncpg.Pool) -> None:
    await pool.execute(
        f"ALTER TABLE customer ADD CONSTRAINT {CONSTRAINT} CHECK (first_name <> '{POISON}')"
    )


async def fix_the_cause(pool: asyncpg.Pool) -> None:
    await pool.execute(f"ALTER TABLE customer DROP CONSTRAINT {CONSTRAINT}")


# Every table holding an org's rows, with the column naming the org (None: through its job).
ORG_TABLES = {
    "orgs": "id",
    "api_keys": "org_id",
    "woo_connections": "org_id",
    "woo_customer_sync_queue": "org_id",
    "woo_customer_sync_page": None,
    "woo_customer_sync_queue_line": "org_id",
    "woo_customer_sync_line_count": "org_id",
    "woo_sync_activity": "org_id",
    "customer": "org_id",
    "woo_sync_schedule": "org_id",
    "woo_customer_sync_hold": "org_id",
    "woo_webhook": "org_id",
}


async def make_schedule(
    db: Db,
    connection_id: UUID,
    *,
    due_in_s: float = 0.0,
    interval_s: int | None = 600,
    cron: str | None = None,
    enabled: bool = True,
) -> None:
    """A schedule of the connection (of its org), due ``due_in_s`` from now (negative: overdue)."""
    await db.execute(
        """INSERT INTO woo_sync_schedule (connection_id, org_id, interval_s, cron, enabled,
                                          next_fire_at)
           SELECT id, org_id, $2, $3, $4, now() + make_interval(secs => $5)
           FROM woo_connections WHERE id = $1""",
        connection_id,
        None if cron else interval_s,
        cron,
        enabled,
        due_in_s,
    )


async def make_finished_job(
    db: Db,
    org_id: UUID,
    *,
    state: str = "done",
    finished_ago: timedelta | None = timedelta(days=40),
    lines: int = 0,
    pages: int = 0,
) -> UUID:
    """A job of a new connection of ``org_id`` that finished ``finished_ago`` (None: never, for
    an open one), with ``lines`` lines (done, or failed with a payload when the job failed) and
    ``pages`` pages read. Run it in a transaction when a cleanup may be running meanwhile."""
    job_id = await make_job(db, org_id, state=state, fetch_done=True)
    await db.execute(
        """UPDATE woo_customer_sync_queue
           SET finished_at = now() - $2::interval,
               created_at = now() - coalesce($2::interval, interval '1 hour'),
               total = $3, done_count = CASE WHEN state = 'failed' THEN 0 ELSE $3 END,
               failed_count = CASE WHEN state = 'failed' THEN $3 ELSE 0 END
           WHERE id = $1""",
        job_id,
        finished_ago,
        lines,
    )
    line_state = "failed" if state == "failed" else "done"
    await add_lines(db, job_id, org_id, range(1, lines + 1), line_state, page=1)
    await db.execute(
        """INSERT INTO woo_customer_sync_page (job_id, page, customers)
           SELECT $1, p, 1 FROM generate_series(1, $2::int) AS p""",
        job_id,
        pages,
    )
    return job_id


async def add_webhooks(pool: asyncpg.Pool, job_id: UUID, count: int) -> None:
    """``count`` (at most 3) webhook rows on the job's connection, with dummy tokens/secrets."""
    topics = ("customer.created", "customer.updated", "customer.deleted")[:count]
    await pool.execute(
        """INSERT INTO woo_webhook (id, org_id, connection_id, topic, token_hash, secret_enc)
           SELECT gen_random_uuid(), j.org_id, j.connection_id, t,
                  sha256(convert_to(t || j.id::text, 'UTF8')), '\\x00'
           FROM woo_customer_sync_queue j, unnest($2::text[]) AS t WHERE j.id = $1""",
        job_id,
        list(topics),
    )
