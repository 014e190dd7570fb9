"""Migration 0009 on a database as today's code left it: two connections for one store (a key
rotation), overlapping customers, open jobs on both. Afterwards: one connection per store, each
customer once in its newest version, the jobs on the surviving connection, one of them reading.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared import db
from shared.storeurl import normalize_store_url
from tests.conftest import PG_ADMIN_URL, _dsn

MERGE = 9
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def days(n: float) -> datetime:
    return NOW - timedelta(days=n)


def through(tmp_path: Path, last: int) -> Path:
    """A directory of the migrations up to ``last``: later ones are no part of these tests."""
    directory = tmp_path / f"migrations-{last:04d}"
    if not directory.exists():
        directory.mkdir()
        for migration in db.discover():
            if migration.version <= last:
                for path in (migration.up, migration.down):
                    (directory / path.name).symlink_to(path)
    return directory


@pytest.fixture
async def before_0009(tmp_path: Path) -> AsyncIterator[str]:
    """A new database migrated up to the migration before 0009."""
    earlier = through(tmp_path, MERGE - 1)
    name = f"woosync_m9_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _dsn(name)
    applied = await db.migrate_up(dsn, earlier)
    assert applied and max(m.version for m in applied) < MERGE
    yield dsn
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Seed:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def org(self) -> UUID:
        org_id = uuid4()
        await self.conn.execute("INSERT INTO orgs (id, name) VALUES ($1, 'o')", org_id)
        return org_id

    async def connection(
        self, org_id: UUID, url: str, key: str, updated: datetime, auth: str = "basic"
    ) -> UUID:
        connection_id = uuid4()
        await self.conn.execute(
            """INSERT INTO woo_connections (id, org_id, store_url, auth_mode, consumer_key,
                                            consumer_secret_enc, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $7)""",
            connection_id, org_id, url, auth, key, f"enc-{key}".encode(), updated,
        )  # fmt: skip
        return connection_id

    async def customer(
        self,
        org_id: UUID,
        connection_id: UUID,
        woo_id: int,
        email: str,
        modified: datetime | None,
        synced: datetime,
    ) -> None:
        await self.conn.execute(
            """INSERT INTO customer (org_id, connection_id, woo_id, email, raw, source_hash,
                                     woo_date_modified, synced_at)
               VALUES ($1, $2, $3, $4, $5, 'h', $6, $7)""",
            org_id, connection_id, woo_id, email, {"id": woo_id, "email": email}, modified,
            synced,
        )  # fmt: skip

    async def job(
        self, org_id: UUID, connection_id: UUID, state: str, created: datetime,
        *, fetch_done: bool = False,
    ) -> UUID:  # fmt: skip
        job_id = uuid4()
        await self.conn.execute(
            """INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, batch_size,
                                                    concurrency, created_at, fetch_done_at)
               VALUES ($1, $2, $3, $4, 100, 4, $5::timestamptz,
                       CASE WHEN $6 THEN $5::timestamptz END)""",
            job_id, org_id, connection_id, state, created, fetch_done,
        )  # fmt: skip
        return job_id


IDN_URLS = [
    "https://Bücher.example/",
    "https://店.例え.jp/Shop/",
    "https://ÉCOLE.example:443",
    "https://My_Shop.Bücher.example:8443/wp//",
    "HTTP://[2001:DB8:0::1]:80/",
    "https://shop.example:0443/a/b/",
    "https://xn--Bcher-KVA.example",
]


async def test_merges_the_connections_of_one_store(before_0009: str, tmp_path: Path) -> None:
    conn = await db.connect(before_0009)
    try:
        seed = Seed(conn)
        org, other_org = await seed.org(), await seed.org()
        # Three keys over time for one store, spelled three ways; the newest is the survivor.
        old = await seed.connection(org, "HTTPS://Shop.Example:443/", "ck_old", days(3))
        new = await seed.connection(org, "https://shop.example", "ck_new", days(1))
        plain = await seed.connection(org, "http://shop.example/", "ck_http", days(5), "oauth1")
        outlet = await seed.connection(org, "https://shop.example/outlet", "ck_old", days(4))
        theirs = await seed.connection(other_org, "https://shop.example", "ck_old", days(9))
        # Each in an org of its own (two of them are one store).
        idn = [await seed.connection(await seed.org(), u, "ck", days(2)) for u in IDN_URLS]

        c = seed.customer
        await c(org, old, 1, "one-newer", days(2), days(3))
        await c(org, new, 1, "one-older", days(6), days(1))
        await c(org, old, 2, "two-older", days(6), days(3))
        await c(org, new, 2, "two-newer", days(2), days(1))
        await c(org, plain, 2, "two-never-modified", None, days(0))
        await c(org, old, 3, "three-only-old", days(6), days(3))
        await c(org, new, 4, "four-only-new", None, days(1))
        await c(org, plain, 5, "five-only-plain", days(8), days(5))
        await c(org, old, 6, "six-synced-later", None, days(0.5))
        await c(org, new, 6, "six-synced-earlier", None, days(1))
        await c(org, outlet, 1, "outlet-one", days(2), days(4))
        await c(other_org, theirs, 1, "theirs", days(9), days(9))

        reading_old = await seed.job(org, old, "processing", days(3))
        reading_new = await seed.job(org, new, "queued", days(1))
        settling_old = await seed.job(org, old, "processing", days(2.5), fetch_done=True)
        finished_plain = await seed.job(org, plain, "done", days(5), fetch_done=True)
        outlet_job = await seed.job(org, outlet, "processing", days(4))
        await conn.execute(
            "ALTER TABLE customer FORCE ROW LEVEL SECURITY"  # as a later migration may do
        )
    finally:
        await conn.close()

    applied = await db.migrate_up(before_0009, through(tmp_path, MERGE))
    assert [m.version for m in applied] == [MERGE]

    conn = await db.connect(before_0009)
    try:
        connections = {
            r["id"]: r for r in await conn.fetch("SELECT * FROM woo_connections")
        }
        assert set(connections) == {new, outlet, theirs, *idn}
        survivor = connections[new]
        assert (survivor["store_url"], survivor["consumer_key"]) == (
            "https://shop.example", "ck_new",
        )  # fmt: skip
        assert survivor["consumer_secret_enc"] == b"enc-ck_new"
        assert survivor["store_identity"] == "shop.example"
        assert connections[outlet]["store_url"] == "https://shop.example/outlet"
        # SQL's spelling of every URL is Python's.
        for connection_id, url in zip(idn, IDN_URLS, strict=True):
            assert connections[connection_id]["store_url"] == normalize_store_url(url), url

        customers = await conn.fetch(
            "SELECT connection_id, woo_id, email FROM customer WHERE org_id = $1 "
            "ORDER BY woo_id, connection_id", org,
        )  # fmt: skip
        shop = {r["woo_id"]: r["email"] for r in customers if r["connection_id"] == new}
        assert shop == {
            1: "one-newer", 2: "two-newer", 3: "three-only-old", 4: "four-only-new",
            5: "five-only-plain", 6: "six-synced-later",
        }  # fmt: skip
        assert [(r["connection_id"], r["woo_id"]) for r in customers] == sorted(
            [(new, w) for w in shop] + [(outlet, 1)], key=lambda t: (t[1], t[0])
        )
        theirs_rows = await conn.fetch("SELECT * FROM customer WHERE org_id = $1", other_org)
        assert [(r["connection_id"], r["email"]) for r in theirs_rows] == [(theirs, "theirs")]

        jobs = {r["id"]: r for r in await conn.fetch("SELECT * FROM woo_customer_sync_queue")}
        for job_id in (reading_old, reading_new, settling_old, finished_plain):
            assert jobs[job_id]["connection_id"] == new
        assert jobs[outlet_job]["connection_id"] == outlet
        assert jobs[reading_new]["state"] == "queued"  # the newest reading job reads on
        assert jobs[settling_old]["state"] == "processing"  # holds no reading slot
        stopped = jobs[reading_old]
        assert stopped["state"] == "failed" and stopped["finished_at"] is not None
        assert "migration 0009" in stopped["last_error"]
        assert str(reading_new) in stopped["last_error"]

        activity = await conn.fetch(
            "SELECT job_id, level, event, details FROM woo_sync_activity ORDER BY id"
        )
        failed = [a for a in activity if a["event"] == "job.failed"]
        assert [(a["job_id"], a["level"]) for a in failed] == [(reading_old, "warning")]
        merged = [a["details"] for a in activity if a["event"] == "connection.merged"]
        assert sorted(d["merged_connection_id"] for d in merged) == sorted(
            [str(old), str(plain)]
        )
        assert {d["connection_id"] for d in merged} == {str(new)}
        assert all("enc-" not in str(d) for d in merged)

        forced = await conn.fetchval(
            "SELECT relforcerowsecurity FROM pg_class WHERE relname = 'customer'"
        )
        assert forced, "the migration must put back forced row-level security"

        # One connection per store from now on, whatever the key or the scheme.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                """INSERT INTO woo_connections (id, org_id, store_url, auth_mode, consumer_key,
                                                consumer_secret_enc)
                   VALUES ($1, $2, 'http://shop.example', 'oauth1', 'ck_other', '\\x00')""",
                uuid4(), org,
            )  # fmt: skip
    finally:
        await conn.close()

    reverted = await db.migrate_down(before_0009, 1, through(tmp_path, MERGE))
    assert [m.version for m in reverted] == [MERGE]
    conn = await db.connect(before_0009)
    try:
        columns: list[Any] = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'woo_connections' AND column_name = 'store_identity'"
        )
        assert columns == []
        assert await conn.fetchval("SELECT count(*) FROM woo_connections") == 3 + len(IDN_URLS)
    finally:
        await conn.close()


async def test_two_reading_jobs_of_merged_connections_leave_one_reading(
    before_0009: str, tmp_path: Path
) -> None:
    """Migration 0002's index (one reading job per connection) holds after the merge."""
    conn = await db.connect(before_0009)
    try:
        seed = Seed(conn)
        org = await seed.org()
        a = await seed.connection(org, "https://shop.example/", "ck_a", days(2))
        b = await seed.connection(org, "https://shop.example", "ck_b", days(1))
        draft_a = await seed.job(org, a, "draft", days(0.5))  # newer job, older connection
        reading_b = await seed.job(org, b, "processing", days(1))
    finally:
        await conn.close()
    await db.migrate_up(before_0009, through(tmp_path, MERGE))
    conn = await db.connect(before_0009)
    try:
        rows = await conn.fetch("SELECT id, connection_id, state FROM woo_customer_sync_queue")
        states = {r["id"]: (r["connection_id"], r["state"]) for r in rows}
        assert states == {draft_a: (b, "draft"), reading_b: (b, "failed")}
    finally:
        await conn.close()
