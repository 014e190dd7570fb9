"""The syncer against the real PostgreSQL (handler level) and the real RabbitMQ (the whole app)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aio_pika
import asyncpg
import pytest

from services.syncer.handlers import (
    NOT_RETRYABLE,
    BatchOutcome,
    UnknownJob,
    handle_customer_batch,
    read_attempt,
)
from shared.broker import make_broker, publish
from shared.mapping import CUSTOMER_COLUMNS, MAX_JSON_DEPTH, map_customer
from shared.messages import CustomerBatch, LinesDone, LinesFailed
from shared.settings import Settings
from shared.topology import ATTEMPT_HEADER, Topology
from tests.conftest import AMQP_URL
from tests.factories import Job, add_lines, make_job, make_sync_job
from tests.helpers import running_syncer, service_env, woosync

MAX_ATTEMPTS = 3
WAIT_S = 20.0


# -- helpers ------------------------------------------------------------------------------------


async def seed_job(pool: asyncpg.Pool) -> Job:
    return await make_sync_job(
        pool, store_url="https://shop.example", consumer_secret_enc=b"\x00\xff"
    )


async def seed_lines(pool: asyncpg.Pool, job: Job, woo_ids: list[int], page: int = 1) -> None:
    await add_lines(pool, job.job_id, job.org_id, woo_ids, page=page)


def customer(woo_id: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": woo_id,
        "date_created": "2024-05-01T09:00:00",
        "date_created_gmt": "2024-05-01T07:00:00",
        "date_modified": None,
        "date_modified_gmt": None,
        "email": f"customer{woo_id}@example.com",
        "first_name": f"First{woo_id}",
        "last_name": "Last",
        "role": "customer",
        "username": f"user{woo_id}",
        "billing": {"company": f"Co {woo_id}", "phone": f"+27 {woo_id}", "country": "ZA"},
        "shipping": {"city": "Cape Town", "phone": ""},
        "is_paying_customer": woo_id % 2 == 0,
        "avatar_url": f"https://secure.gravatar.com/avatar/{woo_id}?s=96",
        "meta_data": [{"id": woo_id, "key": "tier", "value": "gold"}],
    }
    base.update(overrides)
    return base


async def sync(
    pool: asyncpg.Pool, batch: CustomerBatch, attempt: int = 0, **options: Any
) -> BatchOutcome:
    return await handle_customer_batch(
        batch, attempt=attempt, pool=pool, max_attempts=MAX_ATTEMPTS, **options
    )


async def lines_of(pool: asyncpg.Pool, job: Job) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT * FROM woo_customer_sync_queue_line WHERE job_id = $1", job.job_id
    )
    return {r["woo_id"]: r for r in rows}


async def versions(pool: asyncpg.Pool, table: str, key: str = "woo_id") -> dict[int, str]:
    rows = await pool.fetch(f"SELECT {key} AS k, xmin::text AS v FROM {table}")
    return {r["k"]: r["v"] for r in rows}


async def refuse_email(pool: asyncpg.Pool, email: str) -> None:
    """A rule the database has and the mapping does not know: the stand-in for any value a
    column or constraint refuses."""
    await pool.execute(
        f"ALTER TABLE customer ADD CONSTRAINT customer_email_not_blocked CHECK (email <> '{email}')"
    )


# -- handler level --------------------------------------------------------------------------------


async def test_row_has_exactly_the_table_columns(pool: asyncpg.Pool) -> None:
    columns = await pool.fetch(
        """SELECT column_name FROM information_schema.columns
           WHERE table_name = 'customer' ORDER BY ordinal_position"""
    )
    table = [c["column_name"] for c in columns]
    bookkeeping = ("created_at", "updated_at", "synced_at", "mantis_updated_at", "deleted_at")
    assert [c for c in table if c not in bookkeeping] == list(CUSTOMER_COLUMNS)


async def test_customer_documents_are_compressed_with_lz4(pool: asyncpg.Pool) -> None:
    """Migration 0025, on a server built with lz4 (as this one and the compose image are)."""
    methods = await pool.fetch(
        """SELECT attname, attcompression::text FROM pg_attribute
           WHERE attrelid = 'customer'::regclass AND attname = ANY($1::text[])""",
        ["raw", "billing", "shipping", "meta_data"],
    )
    assert {m["attname"]: m["attcompression"] for m in methods} == dict.fromkeys(
        ("raw", "billing", "shipping", "meta_data"), "l"
    )
    job = await seed_job(pool)
    big = customer(1, meta_data=[{"id": n, "key": f"k{n}", "value": "x" * 40} for n in range(80)])
    await seed_lines(pool, job, [1])
    await sync(pool, job.batch([big]))
    stored = await pool.fetchval(
        "SELECT pg_column_compression(raw) FROM customer WHERE org_id = $1", job.org_id
    )
    assert stored == "lz4"


async def test_batch_upserts_every_field_and_marks_lines_done(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    customers = [
        customer(101),
        customer(
            102, first_name="Zoë 🦊", last_name="محمد", date_modified_gmt="2024-06-01T10:00:00"
        ),
        customer(103, billing=None, shipping=None, meta_data=None, is_paying_customer=None),
        customer(104, first_name="é" * 255, email="a" * 308 + "@example.com"),
        customer(105, _links={"self": [{"href": "https://shop.example/wp-json/wc/v3/c/105"}]}),
    ]
    await seed_lines(pool, job, [101, 102, 103, 104, 105])

    outcome = await sync(pool, job.batch(customers))

    assert outcome.done is not None and sorted(outcome.done.woo_ids) == [101, 102, 103, 104, 105]
    assert (outcome.done.job_id, outcome.done.org_id) == (job.job_id, job.org_id)
    assert outcome.retry is None and outcome.park is None and outcome.failed is None
    stored = {
        r["woo_id"]: r
        for r in await pool.fetch("SELECT * FROM customer WHERE org_id = $1", job.org_id)
    }
    assert sorted(stored) == [101, 102, 103, 104, 105]
    for raw in customers:
        expected = map_customer(raw, org_id=job.org_id, connection_id=job.connection_id)
        row = stored[raw["id"]]
        for column in CUSTOMER_COLUMNS:
            assert row[column] == getattr(expected, column), (raw["id"], column)
        assert row["created_at"] == row["updated_at"] == row["synced_at"]
    assert stored[102]["first_name"] == "Zoë 🦊"
    assert stored[102]["woo_date_modified"] == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert stored[101]["woo_date_created"] == datetime(2024, 5, 1, 7, tzinfo=UTC)
    assert stored[101]["woo_date_modified"] is None
    assert stored[103]["billing"] == {} and stored[103]["meta_data"] == []
    assert "_links" not in stored[105]["raw"]
    lines = await lines_of(pool, job)
    assert {
        w: (ln["state"], ln["attempts"], ln["last_error"], ln["payload"]) for w, ln in lines.items()
    } == {w: ("done", 1, None, None) for w in [101, 102, 103, 104, 105]}


async def test_same_batch_again_writes_nothing(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    batch = job.batch([customer(i) for i in range(1, 11)])
    await seed_lines(pool, job, list(range(1, 11)))
    await sync(pool, batch)
    customers_before = await versions(pool, "customer")
    lines_before = await versions(pool, "woo_customer_sync_queue_line")

    outcome = await sync(pool, batch)  # a redelivery

    assert outcome.done is not None and sorted(outcome.done.woo_ids) == list(range(1, 11))
    assert outcome.retry is None and outcome.park is None
    assert await versions(pool, "customer") == customers_before  # no new row version at all
    assert await versions(pool, "woo_customer_sync_queue_line") == lines_before
    assert {ln["attempts"] for ln in (await lines_of(pool, job)).values()} == {1}


async def test_changed_customer_updates_only_its_row(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    customers = [customer(i) for i in range(1, 6)]
    await sync(pool, job.batch(customers))
    before = await versions(pool, "customer")
    old = await pool.fetchrow("SELECT * FROM customer WHERE woo_id = 3")

    customers[2] = customer(3, billing={"company": "New Co", "phone": "+27 3", "country": "ZA"})
    outcome = await sync(pool, job.batch(customers, page=None))

    assert outcome.done is not None and sorted(outcome.done.woo_ids) == [1, 2, 3, 4, 5]
    after = await versions(pool, "customer")
    assert {w for w in after if after[w] != before[w]} == {3}
    new = await pool.fetchrow("SELECT * FROM customer WHERE woo_id = 3")
    assert new["company"] == "New Co" and new["source_hash"] != old["source_hash"]
    assert new["created_at"] == old["created_at"]
    assert new["updated_at"] > old["updated_at"] and new["synced_at"] > old["synced_at"]


async def test_unmappable_and_refused_customers_fail_alone_at_once(pool: asyncpg.Pool) -> None:
    # Issue 8: a refusal retrying cannot fix skips the tiers and is parked on its first delivery.
    job = await seed_job(pool)
    await refuse_email(pool, "refused@example.com")
    customers = [customer(i) for i in range(1, 9)]
    customers[2] = customer(3, email="not an email")  # the mapping refuses it
    customers[5] = customer(6, email="refused@example.com")  # the database refuses it
    await seed_lines(pool, job, list(range(1, 9)))

    outcome = await sync(pool, job.batch(customers))

    assert outcome.done is not None and sorted(outcome.done.woo_ids) == [1, 2, 4, 5, 7, 8]
    assert outcome.retry is None and outcome.park is not None
    parked = outcome.park.batch
    assert sorted(c["id"] for c in parked.customers) == [3, 6]
    assert parked.customers == [customers[2], customers[5]]  # exactly as sent
    assert parked.page is None
    assert (parked.job_id, parked.org_id, parked.connection_id) == (
        job.job_id, job.org_id, job.connection_id,
    )  # fmt: skip
    assert outcome.park.attempts == 1
    assert outcome.failed is not None
    assert sorted((f.woo_id, f.attempts) for f in outcome.failed.failures) == [(3, 1), (6, 1)]
    assert NOT_RETRYABLE in outcome.park.error_text()
    stored = {r["woo_id"] for r in await pool.fetch("SELECT woo_id FROM customer")}
    assert stored == {1, 2, 4, 5, 7, 8}
    lines = await lines_of(pool, job)
    assert {w for w, ln in lines.items() if ln["state"] == "done"} == {1, 2, 4, 5, 7, 8}
    for woo_id in (3, 6):
        assert lines[woo_id]["state"] == "failed"
        assert lines[woo_id]["attempts"] == 1
        assert lines[woo_id]["payload"] == customers[woo_id - 1]
        assert lines[woo_id]["last_error"].endswith(f"({NOT_RETRYABLE})")
    assert lines[3]["last_error"].startswith("email is not an address")
    refused = lines[6]["last_error"]
    assert "customer_email_not_blocked" in refused and "23514" in refused
    for leak in ("INSERT", "SELECT", "Failing row", "refused@example.com"):
        assert leak not in refused


async def test_bisect_finds_every_refused_row(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    await refuse_email(pool, "refused@example.com")
    bad = {4, 17, 18, 33}
    customers = [
        customer(i, email="refused@example.com") if i in bad else customer(i) for i in range(1, 41)
    ]

    outcome = await sync(pool, job.batch(customers))

    assert outcome.done is not None
    assert sorted(outcome.done.woo_ids) == [i for i in range(1, 41) if i not in bad]
    assert outcome.park is not None and outcome.retry is None
    assert sorted(c["id"] for c in outcome.park.batch.customers) == sorted(bad)
    assert await pool.fetchval("SELECT count(*) FROM customer") == 40 - len(bad)


async def test_database_length_limit_is_a_refusal_not_a_crash(pool: asyncpg.Pool) -> None:
    """If the table were narrower than the mapping thinks, the row fails alone, at once."""
    job = await seed_job(pool)
    await pool.execute("ALTER TABLE customer ALTER COLUMN phone TYPE varchar(5)")
    customers = [customer(1, billing={"phone": "12345"}), customer(2, billing={"phone": "123456"})]

    outcome = await sync(pool, job.batch(customers))

    assert outcome.done is not None and outcome.done.woo_ids == [1]
    assert outcome.park is not None and [c["id"] for c in outcome.park.batch.customers] == [2]
    assert outcome.retry is None
    error = outcome.failures[0].error
    assert "value too long for type character varying(5)" in error and "22001" in error


@asynccontextmanager
async def rows_locked(pool: asyncpg.Pool, woo_ids: list[int]) -> AsyncIterator[None]:
    """Another transaction (an application editing these customers) holds their rows."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM customer WHERE woo_id = ANY($1::bigint[]) FOR UPDATE", woo_ids
        )
        yield


async def test_retryable_failures_progress_through_the_tiers_to_the_parking_queue(
    pool: asyncpg.Pool,
) -> None:
    """A row locked by someone else may be free later: only such a failure uses the tiers."""
    job = await seed_job(pool)
    await seed_lines(pool, job, [1, 2, 3])
    locked = [customer(2, first_name="Changed"), customer(3, first_name="Changed")]
    earlier = Job(
        job.org_id,
        job.connection_id,
        await make_job(pool, job.org_id, connection_id=job.connection_id, fetch_done=True),
    )
    await sync(pool, earlier.batch([customer(2), customer(3)]))  # the rows exist, to be locked
    batch = job.batch([customer(1), *locked])

    seen_ids = {batch.message_id}
    async with rows_locked(pool, [2, 3]):
        for attempt in range(MAX_ATTEMPTS):
            outcome = await sync(pool, batch, attempt=attempt, lock_timeout_ms=100)
            assert outcome.park is None and outcome.failed is None
            assert outcome.retry is not None and outcome.retry_attempt == attempt + 1
            assert outcome.retry.customers == locked
            assert outcome.retry.message_id not in seen_ids
            seen_ids.add(outcome.retry.message_id)
            lines = await lines_of(pool, job)
            assert [lines[w]["state"] for w in (2, 3)] == ["processing"] * 2
            assert "lock" in lines[2]["last_error"] and NOT_RETRYABLE not in lines[2]["last_error"]
            assert lines[1]["state"] == "done"
            batch = outcome.retry

        outcome = await sync(pool, batch, attempt=MAX_ATTEMPTS, lock_timeout_ms=100)

    assert outcome.retry is None and outcome.done is None
    assert outcome.park is not None
    assert outcome.park.attempts == MAX_ATTEMPTS + 1
    assert outcome.park.batch.customers == locked
    text = outcome.park.error_text()
    assert "customer 2: database refused the customer" in text and "55P03" in text
    assert len(outcome.park.error_text(limit=40)) == 40
    assert isinstance(outcome.failed, LinesFailed)
    assert [(f.woo_id, f.attempts) for f in outcome.failed.failures] == [(2, 4), (3, 4)]
    lines = await lines_of(pool, job)
    for raw in locked:
        line = lines[raw["id"]]
        assert line["state"] == "failed"
        assert line["payload"] == raw  # what an operator's retry re-publishes
        assert line["last_error"]

    # Once the lock is gone, a retry of the parked batch (attempt 0 again) stores them.
    outcome = await sync(pool, outcome.park.batch)
    assert outcome.done is not None and sorted(outcome.done.woo_ids) == [2, 3]
    assert await pool.fetchval("SELECT first_name FROM customer WHERE woo_id = 2") == "Changed"


async def test_done_line_is_never_failed_by_a_late_copy(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    await seed_lines(pool, job, [1])
    await sync(pool, job.batch([customer(1)]))
    before = await versions(pool, "woo_customer_sync_queue_line")

    outcome = await sync(pool, job.batch([customer(1, email="broken")]), attempt=MAX_ATTEMPTS)

    assert outcome.park is not None  # the bad copy is kept for inspection
    assert await versions(pool, "woo_customer_sync_queue_line") == before
    assert (await lines_of(pool, job))[1]["state"] == "done"


async def test_replayed_batch_creates_missing_lines(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    outcome = await sync(pool, job.batch([customer(7), customer(8, email="x")], page=None))
    assert outcome.done is not None and outcome.done.woo_ids == [7]
    lines = await lines_of(pool, job)
    assert (lines[7]["state"], lines[7]["org_id"]) == ("done", job.org_id)
    assert lines[8]["state"] == "failed"


async def test_duplicate_ids_in_a_batch_keep_the_last_copy(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    batch = job.batch([customer(5, first_name="Old"), customer(6), customer(5, first_name="New")])
    outcome = await sync(pool, batch)
    assert outcome.done is not None and sorted(outcome.done.woo_ids) == [5, 6]
    assert await pool.fetchval("SELECT first_name FROM customer WHERE woo_id = 5") == "New"

    outcome = await sync(pool, job.batch([customer(9), customer(9, email="bad")]))
    assert outcome.done is None and outcome.park is not None
    assert outcome.park.batch.customers == [customer(9, email="bad")]


async def test_customer_without_id_is_parked_at_once_without_a_line(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    nameless = {"email": "a@b.example"}
    outcome = await sync(pool, job.batch([customer(1), nameless]))
    assert outcome.retry is None and outcome.park is not None and outcome.failed is None
    assert outcome.park.batch.customers == [nameless]
    assert "customer without id: id must be a positive integer" in outcome.park.error_text()
    assert set(await lines_of(pool, job)) == {1}


# -- odd content (issue 8): stored, not lost ------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


async def test_odd_content_is_stored_and_only_the_too_deep_customer_fails(
    pool: asyncpg.Pool,
) -> None:
    job = await seed_job(pool)
    deep_ok = [{"id": 1, "key": "_serialized", "value": nested(200)}]
    deepest_ok = [{"id": 1, "key": "_serialized", "value": nested(MAX_JSON_DEPTH - 3)}]
    too_deep = [{"id": 1, "key": "_serialized", "value": nested(MAX_JSON_DEPTH)}]
    text = "Zoë 🦊 𝕏𠜎 שלום مرحبا 👩🏽‍🚀"
    customers = [
        customer(1, first_name="Jo\x00hn", billing={"company": "A\x00B", "phone": "1"}),
        customer(2, last_name="L" * 70_000),
        customer(3, meta_data=deep_ok),
        customer(4, meta_data=deepest_ok),
        customer(5, meta_data=too_deep),
        customer(6, first_name=text, last_name=text, meta_data=[{"id": 1, "key": text}]),
        customer(7, last_name="D\udc80e"),
    ]
    await seed_lines(pool, job, list(range(1, 8)))

    outcome = await sync(pool, job.batch(customers))

    assert outcome.done is not None and outcome.done.woo_ids == [1, 2, 3, 4, 6]
    assert outcome.retry is None and outcome.park is not None
    assert [c["id"] for c in outcome.park.batch.customers] == [5, 7]
    rows = {r["woo_id"]: r for r in await pool.fetch("SELECT * FROM customer")}
    assert rows[1]["first_name"] == "John" and rows[1]["company"] == "AB"
    assert rows[1]["billing"]["company"] == "AB"
    assert rows[1]["raw"]["first_name"] == "Jo\\u0000hn"  # NUL escaped, as the store spelled it
    assert rows[2]["last_name"] == "L" * 70_000
    assert rows[3]["meta_data"] == deep_ok and rows[3]["raw"]["meta_data"] == deep_ok
    assert rows[4]["meta_data"] == deepest_ok
    assert rows[6]["first_name"] == text and rows[6]["last_name"] == text
    assert rows[6]["meta_data"] == [{"id": 1, "key": text}]
    lines = await lines_of(pool, job)
    assert lines[1]["state"] == "done"
    assert lines[1]["warning"] == "NUL characters removed from billing.company, first_name"
    assert all(lines[w]["warning"] is None for w in (2, 3, 4, 6))
    for woo_id, reason in ((5, "nested deeper than 512 levels"), (7, "not valid Unicode")):
        line = lines[woo_id]
        assert (line["state"], line["attempts"]) == ("failed", 1)
        assert reason in line["last_error"] and NOT_RETRYABLE in line["last_error"]
        assert line["payload"] is None  # jsonb cannot hold it exactly


async def test_an_older_payload_never_overwrites_a_newer_version(pool: asyncpg.Pool) -> None:
    # Issue 8, item 9: compare date_modified_gmt.
    job = await seed_job(pool)
    await seed_lines(pool, job, [1, 2, 3])
    old = {"date_modified_gmt": "2024-05-01T08:00:00", "first_name": "Old"}
    new = {"date_modified_gmt": "2024-06-01T08:00:00", "first_name": "New"}
    await sync(pool, job.batch([customer(1, **new), customer(2, **new), customer(3)]))

    # A later job of the same store (a retry or replay): its lines are new, so they tell.
    replay = Job(
        job.org_id,
        job.connection_id,
        await make_job(pool, job.org_id, connection_id=job.connection_id, fetch_done=True),
    )
    before = await versions(pool, "customer", key="woo_id")
    outcome = await sync(
        pool,
        replay.batch(
            [
                customer(1, **old),  # older: left alone
                customer(2, **{**new, "first_name": "Same date"}),  # equal: updates
                customer(3, **old),  # the stored one was never modified: updates
            ]
        ),
    )

    assert outcome.done is not None and outcome.done.woo_ids == [1, 2, 3]
    assert [s.woo_id for s in outcome.stale] == [1]
    names = dict(await pool.fetch("SELECT woo_id, first_name FROM customer"))
    assert names == {1: "New", 2: "Same date", 3: "Old"}
    after = await versions(pool, "customer", key="woo_id")
    assert after[1] == before[1] and after[2] != before[2]
    lines = await lines_of(pool, replay)
    assert lines[1]["state"] == "done"
    assert lines[1]["warning"].startswith("stale payload: date_modified_gmt 2024-05-01T08:00:00")
    assert "kept the newer version" in lines[1]["warning"]
    assert lines[2]["warning"] is None

    # A payload that was never modified is older than a stored one that was.
    outcome = await sync(pool, replay.batch([customer(1, date_modified_gmt=None)]))
    assert [s.woo_id for s in outcome.stale] == [1]
    assert await pool.fetchval("SELECT first_name FROM customer WHERE woo_id = 1") == "New"


async def test_batch_of_another_org_is_refused(pool: asyncpg.Pool) -> None:
    job = await seed_job(pool)
    other = await seed_job(pool)
    forged = CustomerBatch(
        job_id=job.job_id,
        org_id=other.org_id,
        connection_id=job.connection_id,
        customers=[customer(1)],
    )
    with pytest.raises(UnknownJob):
        await sync(pool, forged)
    assert await pool.fetchval("SELECT count(*) FROM customer") == 0


async def test_a_batch_naming_a_merged_connection_lands_in_its_jobs_connection(
    pool: asyncpg.Pool,
) -> None:
    """Batches queued before migration 0009 merged a store's connections name a connection that
    is gone; the job (moved to the survivor) decides where its customers go."""
    job = await seed_job(pool)
    stale = CustomerBatch(
        job_id=job.job_id, org_id=job.org_id, connection_id=uuid4(), customers=[customer(1)]
    )
    outcome = await sync(pool, stale)
    assert outcome.done is not None and outcome.done.woo_ids == [1]
    rows = await pool.fetch("SELECT org_id, connection_id, woo_id FROM customer")
    assert [tuple(r) for r in rows] == [(job.org_id, job.connection_id, 1)]


async def test_lost_database_is_raised_not_counted_as_a_failure(database_url: str) -> None:
    from shared.db import create_pool

    closed = await create_pool(database_url, min_size=1, max_size=1)
    await closed.close()
    job = Job(uuid4(), uuid4(), uuid4())
    with pytest.raises(asyncpg.InterfaceError):
        await sync(closed, job.batch([customer(1)]))


def test_read_attempt() -> None:
    assert read_attempt(None) == 0
    assert read_attempt({}) == 0
    assert read_attempt({ATTEMPT_HEADER: 2}) == 2
    assert read_attempt({ATTEMPT_HEADER: "3"}) == 3
    assert read_attempt({ATTEMPT_HEADER: b"1"}) == 1
    assert read_attempt({ATTEMPT_HEADER: -4}) == 0
    assert read_attempt({ATTEMPT_HEADER: "many"}) == 0
    assert read_attempt({ATTEMPT_HEADER: True}) == 0


# -- the whole app on the real broker ---------------------------------------------------------


async def take(channel: aio_pika.abc.AbstractChannel, queue: str) -> aio_pika.IncomingMessage:
    """The next message of ``queue``, acked; fails the test after WAIT_S."""
    declared = await channel.declare_queue(queue, passive=True)
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        message = await declared.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    pytest.fail(f"nothing arrived in {queue} within {WAIT_S}s")


async def wait_for_rows(pool: asyncpg.Pool, sql: str, expected: Any, *args: Any) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = await pool.fetchval(sql, *args)
        if value == expected:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{sql!r} gave {value!r}, expected {expected!r}, after {WAIT_S}s")


async def test_app_syncs_parks_at_once_and_reports(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    topology = clean_broker
    job = await seed_job(pool)
    poison = customer(4, email="poison")
    await seed_lines(pool, job, [1, 2, 3, 4])
    parking = topology.parking(topology.syncer_queue).name

    async with running_syncer(settings):
        publisher = make_broker(settings)
        await publisher.connect()
        connection = await aio_pika.connect(AMQP_URL)
        try:
            await publish(
                publisher, topology, job.batch([customer(1), customer(2), poison, customer(3)])
            )
            channel = await connection.channel()

            parked = await take(channel, parking)
            assert parked.headers["parked-attempts"] == 1  # not retryable: no tier
            assert "customer 4: email is not an address" in str(parked.headers["parked-error"])
            assert NOT_RETRYABLE in str(parked.headers["parked-error"])
            assert ATTEMPT_HEADER not in parked.headers
            assert [c["id"] for c in CustomerBatch.model_validate_json(parked.body).customers] == [
                4
            ]
            await wait_for_rows(
                pool,
                "SELECT state FROM woo_customer_sync_queue_line WHERE job_id = $1 AND woo_id = 4",
                "failed",
                job.job_id,
            )
            rows = await pool.fetch("SELECT woo_id FROM customer ORDER BY woo_id")
            assert [r["woo_id"] for r in rows] == [1, 2, 3]
            line = await pool.fetchrow(
                "SELECT * FROM woo_customer_sync_queue_line WHERE job_id = $1 AND woo_id = 4",
                job.job_id,
            )
            assert line["attempts"] == 1 and line["payload"] == poison

            events = [await take(channel, topology.tracker_queue.name) for _ in range(2)]
            by_key = {e.routing_key: e for e in events}
            assert set(by_key) == {"line.done", "line.failed"}
            done = LinesDone.model_validate_json(by_key["line.done"].body)
            assert sorted(done.woo_ids) == [1, 2, 3]
            failed = LinesFailed.model_validate_json(by_key["line.failed"].body)
            assert [(f.woo_id, f.attempts) for f in failed.failures] == [(4, 1)]

            # Not JSON at all: parked by the queue's dead-letter route, and the consumer lives on.
            await channel.default_exchange.publish(
                aio_pika.Message(b"{not json", content_type="application/json"),
                routing_key=topology.syncer_queue.name,
            )
            assert (await take(channel, parking)).body == b"{not json"
            await publish(publisher, topology, job.batch([customer(5)], page=2))
            await wait_for_rows(pool, "SELECT count(*) FROM customer WHERE woo_id = 5", 1)
            for tier in topology.retry_tiers:
                depth = (await channel.declare_queue(tier.name, passive=True)).declaration_result
                assert depth.message_count == 0
        finally:
            await connection.close()
            await publisher.stop()


async def test_process_stops_cleanly_on_sigterm(settings: Settings, clean_broker: Topology) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.syncer", env=service_env(settings),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            deadline = asyncio.get_running_loop().time() + WAIT_S
            consumers = 0
            while not consumers and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
                try:
                    queue = await channel.declare_queue(
                        clean_broker.syncer_queue.name, passive=True
                    )
                except aio_pika.exceptions.ChannelClosed:
                    channel = await connection.channel()  # not declared yet
                    continue
                consumers = queue.declaration_result.consumer_count
            assert consumers == 1, "the syncer never started consuming"
        finally:
            await connection.close()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
        assert b"Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_replayed_old_payload_leaves_the_newer_customer(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    """Issue 8, item 9, through the real syncer and ``woosync dlq replay``: a parked old
    version, replayed after a newer one was synced, changes nothing and its line says why."""
    job = await seed_job(pool)
    await seed_lines(pool, job, [1])
    await pool.execute(
        "ALTER TABLE customer ADD CONSTRAINT customer_not_poison CHECK (first_name <> 'POISON')"
    )
    old = customer(1, first_name="POISON", date_modified_gmt="2024-05-01T08:00:00")
    new = customer(1, first_name="New", date_modified_gmt="2024-06-01T08:00:00")
    nightly = Job(
        job.org_id,
        job.connection_id,
        await make_job(pool, job.org_id, connection_id=job.connection_id, fetch_done=True),
    )

    async with running_syncer(settings):
        publisher = make_broker(settings)
        await publisher.connect()
        try:
            await publish(publisher, clean_broker, job.batch([old]))  # refused: parked
            await wait_for_rows(
                pool,
                "SELECT state FROM woo_customer_sync_queue_line WHERE job_id = $1 AND woo_id = 1",
                "failed",
                job.job_id,
            )
            await publish(publisher, clean_broker, nightly.batch([new]))  # the next sync
            await wait_for_rows(pool, "SELECT first_name FROM customer WHERE woo_id = 1", "New")
            await pool.execute("ALTER TABLE customer DROP CONSTRAINT customer_not_poison")
            before = await versions(pool, "customer")

            out = await woosync(settings, "dlq", "replay", "--job", str(job.job_id))
            assert "replayed 1 message(s) (1 customer(s))" in out, out
            await wait_for_rows(
                pool,
                "SELECT state FROM woo_customer_sync_queue_line WHERE job_id = $1 AND woo_id = 1",
                "done",
                job.job_id,
            )
        finally:
            await publisher.stop()

    row = await pool.fetchrow("SELECT first_name, woo_date_modified FROM customer")
    assert row["first_name"] == "New"
    assert row["woo_date_modified"] == datetime(2024, 6, 1, 8, tzinfo=UTC)
    assert await versions(pool, "customer") == before  # not even rewritten
    line = (await lines_of(pool, job))[1]
    assert line["warning"].startswith("stale payload: date_modified_gmt 2024-05-01T08:00:00")
