"""Cleanup: old finished jobs go with their lines and pages, in batches, audited; nothing else.

Run as the services' role (``app_pool``: row-level security and its grants bind it), across two
orgs, against jobs backdated by the factory; the operator's ``woosync cleanup`` as a process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import asyncpg
import pytest

from services.tracker.cleanup import CLEANUP_LOCK, Cleaner
from shared import db
from shared.cleanup import CLEANUP_BATCH, clean_batch, clean_finished_jobs, final_states
from shared.lifecycle import OPEN_JOB_STATES
from shared.settings import Settings
from tests.factories import make_finished_job, make_org
from tests.helpers import woosync

RETENTION = timedelta(days=30)


@dataclass
class Seeded:
    old: dict[UUID, UUID]  # job -> org: finished more than RETENTION ago
    kept: dict[UUID, UUID]  # recent finished, open, and open-with-a-stray-finishing-time


async def seed(pool: asyncpg.Pool) -> Seeded:
    old: dict[UUID, UUID] = {}
    kept: dict[UUID, UUID] = {}
    for name in ("north", "south"):
        org = await make_org(pool, name)
        for state, lines, pages in (("done", 3, 2), ("failed", 2, 1), ("done", 0, 0)):
            old[await make_finished_job(pool, org, state=state, lines=lines, pages=pages)] = org
        recent = await make_finished_job(pool, org, finished_ago=timedelta(days=29), lines=2)
        kept[recent] = org
        kept[await make_finished_job(pool, org, state="processing", finished_ago=None)] = org
        # An open job never has a finishing time; should one have it, it still is not final.
        kept[await make_finished_job(pool, org, state="queued", lines=1, pages=1)] = org
    for job, org in {**old, **kept}.items():
        await pool.execute(
            "INSERT INTO woo_sync_activity (job_id, org_id, level, event) "
            "VALUES ($1, $2, 'info', 'job.created')",
            job,
            org,
        )
    return Seeded(old, kept)


async def jobs(pool: asyncpg.Pool) -> set[UUID]:
    return {r["id"] for r in await pool.fetch("SELECT id FROM woo_customer_sync_queue")}


async def rows_of(pool: asyncpg.Pool, table: str, job_ids: set[UUID]) -> int:
    count: int = await pool.fetchval(
        f"SELECT count(*) FROM {table} WHERE job_id = ANY($1::uuid[])", list(job_ids)
    )
    return count


async def summaries(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT org_id, job_id, details FROM woo_sync_activity "
            "WHERE event = 'jobs.removed' ORDER BY id"
        )
    )


async def snapshot(pool: asyncpg.Pool) -> tuple[int, ...]:
    return tuple(
        await pool.fetchrow(
            """SELECT (SELECT count(*) FROM woo_customer_sync_queue),
                      (SELECT count(*) FROM woo_customer_sync_queue_line),
                      (SELECT count(*) FROM woo_customer_sync_page),
                      (SELECT count(*) FROM woo_sync_activity)"""
        )
    )


async def test_only_old_finished_jobs_of_every_org_go_with_their_lines_and_pages(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    seeded = await seed(pool)
    kept_lines = await rows_of(pool, "woo_customer_sync_queue_line", set(seeded.kept))
    async with app_pool.acquire() as conn:
        report = await clean_finished_jobs(conn, retention=RETENTION, batch_size=2, by="test")

    assert await jobs(pool) == set(seeded.kept)
    assert await rows_of(pool, "woo_customer_sync_queue_line", set(seeded.old)) == 0
    assert await rows_of(pool, "woo_customer_sync_page", set(seeded.old)) == 0
    assert await rows_of(pool, "woo_customer_sync_queue_line", set(seeded.kept)) == kept_lines
    assert await rows_of(pool, "woo_customer_sync_page", set(seeded.kept)) == 2
    assert (report.jobs, report.lines, report.pages) == (6, 10, 6)
    assert report.batches >= 8  # 16 rows and 6 jobs, at most 2 rows or jobs per batch

    # The audit trail: every removed job named once, in its own org's summary, by the caller;
    # the activity of removed jobs is kept.
    named: dict[UUID, UUID] = {}
    for row in await summaries(pool):
        assert row["job_id"] is None
        assert row["details"]["by"] == "test"
        assert row["details"]["count"] == len(row["details"]["jobs"])
        for job in row["details"]["jobs"]:
            assert UUID(job["job_id"]) not in named
            named[UUID(job["job_id"])] = row["org_id"]
    assert named == seeded.old
    kept_activity = await rows_of(pool, "woo_sync_activity", set(seeded.old))
    assert kept_activity == len(seeded.old)

    # Nothing left: a second run removes nothing and writes nothing.
    before = await snapshot(pool)
    async with app_pool.acquire() as conn:
        again = await clean_finished_jobs(conn, retention=RETENTION, batch_size=2, by="test")
    assert not again.removed_anything
    assert await snapshot(pool) == before


async def test_a_large_job_goes_in_transactions_of_at_most_batch_size_rows(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org = await make_org(pool)
    job = await make_finished_job(pool, org, lines=25, pages=3)
    batches = []
    async with app_pool.acquire() as conn:
        while (
            batch := await clean_batch(conn, retention=RETENTION, batch_size=10, by="t")
        ).batches:
            batches.append((batch.jobs, batch.lines, batch.pages))
            assert batch.lines + batch.pages <= 10
            # Until its last batch the job is still there, its summary not yet written.
            if batch.jobs == 0:
                assert job in await jobs(pool)
                assert await summaries(pool) == []
    assert batches == [(0, 10, 0), (0, 10, 0), (1, 5, 3)]
    [summary] = await summaries(pool)
    assert [j["total"] for j in summary["details"]["jobs"]] == [25]


async def test_dry_run_counts_and_changes_nothing(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    await seed(pool)
    before = await snapshot(pool)
    async with app_pool.acquire() as conn:
        report = await clean_finished_jobs(
            conn, retention=RETENTION, batch_size=1, by="test", dry_run=True
        )
    assert (report.jobs, report.lines, report.pages) == (6, 10, 6)
    assert await snapshot(pool) == before


async def test_a_job_someone_holds_is_skipped_and_removed_later(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org = await make_org(pool)
    held = await make_finished_job(pool, org, lines=2)
    free = await make_finished_job(pool, org, lines=2)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM woo_customer_sync_queue WHERE id = $1 FOR UPDATE", held)
        async with app_pool.acquire() as conn:
            report = await clean_finished_jobs(conn, retention=RETENTION, batch_size=10, by="t")
        assert report.jobs == 1
        assert await jobs(pool) == {held}
    async with app_pool.acquire() as conn:
        report = await clean_finished_jobs(conn, retention=RETENTION, batch_size=10, by="t")
    assert report.jobs == 1 and free not in await jobs(pool) and await jobs(pool) == set()


async def test_the_services_role_cannot_remove_audit_rows(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    seeded = await seed(pool)
    org = next(iter(seeded.old.values()))
    before = await snapshot(pool)
    for statement in (
        "DELETE FROM woo_sync_activity",
        "UPDATE woo_sync_activity SET event = 'x'",
        "TRUNCATE woo_sync_activity",
    ):
        async with app_pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('woosync.org_id', $1, true)", str(org))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    assert await snapshot(pool) == before


BAD_CALLS = {
    "retention under an hour": (final_states(), timedelta(minutes=59), 10, False, "t"),
    "no retention": (final_states(), timedelta(0), 10, False, "t"),
    "negative retention": (final_states(), timedelta(days=-30), 10, False, "t"),
    "null retention": (final_states(), None, 10, False, "t"),
    "batch of zero": (final_states(), RETENTION, 0, False, "t"),
    "batch too large": (final_states(), RETENTION, 10_001, False, "t"),
    "no states": ([], RETENTION, 10, False, "t"),
    "a null state": ([*final_states(), None], RETENTION, 10, False, "t"),
    "nameless caller": (final_states(), RETENTION, 10, False, ""),
    **{
        f"open state {state}": ([*final_states(), state.value], RETENTION, 10, False, "t")
        for state in sorted(OPEN_JOB_STATES)
    },
}


@pytest.mark.parametrize("args", BAD_CALLS.values(), ids=BAD_CALLS.keys())
async def test_the_function_refuses_bad_parameters_and_changes_nothing(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, args: tuple[object, ...]
) -> None:
    await seed(pool)
    await pool.execute(  # everything finished long ago: a bad call would have much to remove
        "UPDATE woo_customer_sync_queue SET finished_at = now() - interval '400 days'"
    )
    before = await snapshot(pool)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="cleanup"):
        await app_pool.fetchrow(CLEANUP_BATCH, *args)
    assert await snapshot(pool) == before


async def test_one_cleaner_leads_until_its_session_ends(
    pool: asyncpg.Pool, app_database_url: str
) -> None:
    org = await make_org(pool)
    first = await make_finished_job(pool, org, lines=1)
    a, b = (
        Cleaner(app_database_url, retention=RETENTION, interval_s=60, batch_size=10, name=name)
        for name in ("a", "b")
    )
    try:
        assert (await a.tick()) is not None and a.leading
        assert await b.tick() is None and not b.leading
        assert first not in await jobs(pool)
        holders = await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 "
            "AND granted AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            CLEANUP_LOCK,
        )
        assert holders == 1
        second = await make_finished_job(pool, org, lines=1)
        assert await b.tick() is None
        assert second in await jobs(pool)
        await a._drop()  # the leader's session ends (a stop, a crash, a lost database)
        assert (await b.tick()) is not None and b.leading
        assert second not in await jobs(pool)
    finally:
        await a._drop()
        await b._drop()
    assert [s["details"]["by"] for s in await summaries(pool)] == ["a", "b"]


async def test_woosync_cleanup_dry_run_then_for_real(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    seeded = await seed(pool)
    before = await snapshot(pool)

    out = await woosync(settings, "cleanup", "--dry-run")
    assert "would remove 6 jobs, 10 lines, 6 pages" in out
    assert await snapshot(pool) == before

    out = await woosync(settings, "cleanup", "--retention-days", "41")
    assert "removed 0 jobs, 0 lines, 0 pages" in out
    assert await snapshot(pool) == before

    out = await woosync(settings, "cleanup", "--batch-size", "3")
    assert "removed 6 jobs, 10 lines, 6 pages" in out
    assert await jobs(pool) == set(seeded.kept)
    assert {s["details"]["by"] for s in await summaries(pool)} == {"woosync cleanup"}


async def test_it_reaches_every_org_for_an_owner_that_row_level_security_binds(
    settings: Settings, plain_owner_database: str
) -> None:
    """In production the owner is no superuser: the function (run as that owner) and the
    operator's command still see every org's jobs, and only through their own paths."""
    owner_url = plain_owner_database
    scheme, rest = owner_url.split("://", 1)
    app_url = f"{scheme}://{db.APP_ROLE}@{rest.rsplit('@', 1)[-1]}"
    operator = await db.create_pool(owner_url, min_size=1, max_size=2, operator=True)
    app = await db.create_pool(app_url, min_size=1, max_size=1)
    try:
        assert not await operator.fetchval(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        seeded = await seed(operator)
        before = await snapshot(operator)
        assert before[0] == len(seeded.old) + len(seeded.kept)  # the operator sees every org

        owner_env = Settings(**{**settings.model_dump(), "admin_database_url": owner_url})
        out = await woosync(owner_env, "cleanup", "--dry-run")
        assert "would remove 6 jobs, 10 lines, 6 pages" in out
        assert await snapshot(operator) == before

        async with app.acquire() as conn:
            report = await clean_finished_jobs(conn, retention=RETENTION, batch_size=4, by="t")
        assert (report.jobs, report.lines, report.pages) == (6, 10, 6)
        assert await jobs(operator) == set(seeded.kept)
        assert {s["org_id"] for s in await summaries(operator)} == set(seeded.old.values())
    finally:
        await app.close()
        await operator.close()
