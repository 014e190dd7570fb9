"""The scheduled cleanup with two tracker processes: one leads, the other cleans only once the
leader is gone; old finished jobs go with their lines and pages, recent and open ones stay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from services.tracker.cleanup import CLEANUP_LOCK
from shared import db
from shared.settings import Settings
from tests.e2e.harness import Stack
from tests.e2e.processes import fetch, infra_shared_lock
from tests.factories import make_finished_job, make_org
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CLEANUP_ENV = {"WOOSYNC_CLEANUP_INTERVAL_S": "0.3", "WOOSYNC_CLEANUP_BATCH_SIZE": "4"}


@contextlib.asynccontextmanager
async def two_trackers(settings: Settings, log_dir: Path) -> AsyncIterator[tuple[Stack, Stack]]:
    """Two tracker replicas (each a stack of its own, for a port of its own), ready."""
    async with infra_shared_lock():
        stacks = (Stack(settings, log_dir, CLEANUP_ENV), Stack(settings, log_dir, CLEANUP_ENV))
        try:
            for replica, stack in enumerate(stacks):
                stack.start("tracker", replica)
            async with httpx.AsyncClient(timeout=2) as client:
                for replica, stack in enumerate(stacks):

                    async def ready(url: str = stack.url("tracker", replica)) -> bool:
                        with contextlib.suppress(httpx.HTTPError):
                            return (await client.get(url + "/readyz")).is_success
                        return False

                    await wait_until(ready, "the tracker ready", 60.0, 0.2)
            yield stacks
        finally:
            for stack in stacks:
                stack.stop_all()


async def seed_old_jobs(settings: Settings, org: UUID, count: int) -> set[UUID]:
    """``count`` jobs finished 40 days ago, each with lines and pages, each in one transaction
    (a running cleanup sees a job whole or not at all)."""
    conn = await db.connect(settings.admin_database_url)
    made = set()
    try:
        for n in range(count):
            async with conn.transaction():
                state = "failed" if n % 2 else "done"
                made.add(await make_finished_job(conn, org, state=state, lines=5, pages=2))
    finally:
        await conn.close()
    return made


async def remaining(settings: Settings, job_ids: set[UUID]) -> set[UUID]:
    rows = await fetch(
        settings,
        "SELECT id FROM woo_customer_sync_queue WHERE id = ANY($1::uuid[])",
        list(job_ids),
    )
    return {r["id"] for r in rows}


async def cleaned_by(settings: Settings) -> list[tuple[str, set[UUID]]]:
    """Each ``jobs.removed`` audit row: who ran it, which jobs it names."""
    rows = await fetch(
        settings, "SELECT details FROM woo_sync_activity WHERE event = 'jobs.removed' ORDER BY id"
    )
    return [(r["details"]["by"], {UUID(j["job_id"]) for j in r["details"]["jobs"]}) for r in rows]


async def lock_holders(settings: Settings) -> int:
    count: int = (
        await fetch(
            settings,
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 "
            "AND granted AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            CLEANUP_LOCK,
        )
    )[0]["n"]
    return count


async def test_one_tracker_cleans_and_another_takes_over_when_it_dies(
    settings: Settings, tmp_path: Path
) -> None:
    conn = await db.connect(settings.admin_database_url)
    try:
        org = await make_org(conn, "retained")
        kept = {
            await make_finished_job(conn, org, finished_ago=timedelta(days=29), lines=3),
            await make_finished_job(conn, org, state="processing", finished_ago=None, lines=3),
        }
    finally:
        await conn.close()
    first = await seed_old_jobs(settings, org, 4)

    async with two_trackers(settings, tmp_path) as stacks:
        names = {
            f"pid {stack.processes[('tracker', replica)].pid}": replica
            for replica, stack in enumerate(stacks)
        }

        async def gone(jobs: set[UUID]) -> bool:
            return not await remaining(settings, jobs)

        await wait_until(lambda: gone(first), "the first old jobs removed", 60.0, 0.2)
        second = await seed_old_jobs(settings, org, 4)
        await wait_until(lambda: gone(second), "the second old jobs removed", 60.0, 0.2)

        # One leader removed all of them, in batches of at most four rows (a job of five lines
        # and two pages takes two), and it alone holds the lock.
        summaries = await cleaned_by(settings)
        leaders = {by.rsplit(" pid ", 1)[-1] for by, _ in summaries}
        assert len(leaders) == 1, summaries
        [leader_pid] = leaders
        leader = names[f"pid {leader_pid}"]
        assert set().union(*(jobs for _, jobs in summaries)) == first | second
        assert await lock_holders(settings) == 1

        # The leader dies without a word: its session ends, the other tracker takes over.
        stacks[leader].kill("tracker", leader)
        third = await seed_old_jobs(settings, org, 2)
        await wait_until(lambda: gone(third), "old jobs removed by the new leader", 90.0, 0.2)
        after = (await cleaned_by(settings))[len(summaries) :]
        assert after, "the new leader wrote no summary"
        successor = stacks[1 - leader].processes[("tracker", 1 - leader)].pid
        assert {by.rsplit(" pid ", 1)[-1] for by, _ in after} == {str(successor)}, after
        assert set().union(*(jobs for _, jobs in after)) == third
        assert await lock_holders(settings) == 1

    assert await remaining(settings, kept) == kept
    lines = await fetch(
        settings,
        "SELECT count(*) AS n FROM woo_customer_sync_queue_line WHERE job_id = ANY($1::uuid[])",
        list(first | second | third),
    )
    assert lines[0]["n"] == 0
