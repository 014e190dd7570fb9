"""Schedules with every service a real process and a simulated store.

- A connection with a one-second schedule is synced again and again by itself (a customer who
  signs up between fires is in MantisNXT after the next one); a store slower than the interval
  never gets a second open job (the fires meanwhile are skipped and audited); when the shop
  owner rotates the key, the fires with the deleted key fail cleanly, and once a start stores
  the new key the next fire syncs with it.
- Two trackers: one fires; killed, the other fires; with no tracker at all for several slots,
  the returning one fires the missed slots once, then keeps the schedule's pace.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from shared.crypto import SecretBox
from shared.paths import SCHEDULE_PATH
from shared.settings import Settings
from tests.e2e.fault_stack import started_stack
from tests.e2e.harness import ROUTE, Org, Stack, assert_exact, new_org, wait_final
from tests.e2e.processes import fetch, fetchval, infra_shared_lock
from tests.helpers import wait_until
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
BOX = SecretBox("e2e-secret-key")  # the stack's WOOSYNC_SECRET_KEY (tests/e2e/harness.py)
# The scheduler looks often and a schedule may be one second apart (production: 5 s, 60 s); one
# page at a time (the adaptive limit's start and ceiling: a sync learns no more), so that a slow
# store takes longer than an interval to read.
ENV = {
    "WOOSYNC_SCHEDULER_INTERVAL_S": "0.3",
    "WOOSYNC_SCHEDULE_MIN_INTERVAL_S": "1",
    "WOOSYNC_DEFAULT_CONCURRENCY": "1",
    "WOOSYNC_MAX_STORE_CONCURRENCY": "1",
}


async def post_start(stack: Stack, org: Org, sim: SimHandle, key: str, secret: str) -> Any:
    body = {
        "action": "start",
        "org_id": org.org_id,
        "config": {"url": sim.url, "consumer_key": key, "consumer_secret": secret,
                   "auth": "oauth1"},
    }  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(stack.api_url + ROUTE, json=body, headers=org.headers)


async def put_schedule(stack: Stack, org: Org, connection_id: UUID, **body: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.put(
            stack.api_url + SCHEDULE_PATH.format(connection_id=connection_id),
            json=body,
            headers=org.headers,
        )


async def schedule_events(settings: Settings, org: Org, after_id: int = 0) -> list[asyncpg.Record]:
    return await fetch(
        settings,
        "SELECT id, event, job_id, details FROM woo_sync_activity WHERE org_id = $1::uuid "
        "AND event IN ('schedule.fired', 'schedule.skipped') AND id > $2 ORDER BY id",
        org.org_id,
        after_id,
    )


async def jobs(settings: Settings, org: Org) -> list[asyncpg.Record]:
    return await fetch(
        settings,
        "SELECT id, state, created_at, finished_at, last_error FROM woo_customer_sync_queue "
        "WHERE org_id = $1::uuid ORDER BY created_at",
        org.org_id,
    )


async def fired_jobs(settings: Settings, org: Org, after_id: int = 0) -> list[asyncpg.Record]:
    """The jobs fired by the schedule (after audit row ``after_id``), with their state."""
    return await fetch(
        settings,
        "SELECT j.id, j.state, j.last_error FROM woo_sync_activity a "
        "JOIN woo_customer_sync_queue j ON j.id = a.job_id "
        "WHERE a.org_id = $1::uuid AND a.event = 'schedule.fired' AND a.id > $2 ORDER BY a.id",
        org.org_id,
        after_id,
    )


async def last_activity(settings: Settings) -> int:
    return int(await fetchval(settings, "SELECT coalesce(max(id), 0) FROM woo_sync_activity"))


def assert_one_open_job_at_a_time(rows: list[asyncpg.Record]) -> None:
    """Each job of the store was created after the one before it had finished."""
    for before, after in zip(rows, rows[1:], strict=False):
        assert before["finished_at"] is not None, (before, after)
        assert after["created_at"] >= before["finished_at"], (before, after)


async def test_a_schedule_keeps_the_store_in_step_one_job_at_a_time_across_a_key_rotation(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with infra_shared_lock(), started_stack(settings, tmp_path, ENV) as stack:
        # 8 pages of 100 read one at a time, 250 ms each: a sync reads for 2 s or more.
        with spawn_simulator(customers=800, seed=51, latency_ms=250) as sim:
            first = await post_start(stack, org, sim, sim.consumer_key, sim.consumer_secret)
            assert first.status_code == 202, first.text
            await wait_final(settings, first.json()["job_id"])
            connection_id = await fetchval(
                settings, "SELECT id FROM woo_connections WHERE org_id = $1::uuid", org.org_id
            )
            answer = await put_schedule(stack, org, connection_id, interval_s=1)
            assert answer.status_code == 200, answer.text

            # Fires by itself, again and again; a customer who signs up in between arrives.
            async def fired_done(count: int, after_id: int = 0) -> bool:
                rows = await fired_jobs(settings, org, after_id)
                return sum(r["state"] == "done" for r in rows) >= count

            await wait_until(lambda: fired_done(1), "a scheduled sync done", 120.0, 0.3)
            mark = await last_activity(settings)
            await sim.add_customer(email="new.signup@example.com", first_name="New")
            await wait_until(lambda: fired_done(2, mark), "two more scheduled syncs", 120.0, 0.3)
            store = await sim.customers()
            done = [r for r in await fired_jobs(settings, org, mark) if r["state"] == "done"]
            await assert_exact(settings, org, str(done[-1]["id"]), store)

            # The store is slower than the interval: the fires meanwhile were skipped, naming
            # the job that was reading it, and no two jobs were ever open together.
            skipped = [e for e in await schedule_events(settings, org)
                       if e["event"] == "schedule.skipped"]  # fmt: skip
            assert skipped, "no fire was skipped though every sync outlasts the interval"
            assert all(e["details"]["open_job_id"] for e in skipped)
            assert all(e["details"]["by"] == "scheduler" for e in skipped)

            # The shop owner rotates the key at the store: the old one is deleted. Fires carry
            # no key of their own: they fail on the stored (deleted) key, cleanly.
            new_key, new_secret = await sim.add_key()
            rotated_at = await last_activity(settings)
            await sim.remove_key(sim.consumer_key)

            async def failed_on_old_key() -> bool:
                rows = await fired_jobs(settings, org, rotated_at)
                return any(
                    r["state"] == "failed" and "refused the credentials" in (r["last_error"] or "")
                    for r in rows
                )

            await wait_until(failed_on_old_key, "a scheduled sync refused the old key", 120.0, 0.3)

            # A start with the new key stores it (the store accepted it); the next fire uses it.
            again = await post_start(stack, org, sim, new_key, new_secret)
            assert again.status_code in (200, 202), again.text
            stored_at = await last_activity(settings)
            (connection,) = await fetch(
                settings, "SELECT * FROM woo_connections WHERE org_id = $1::uuid", org.org_id
            )
            assert connection["consumer_key"] == new_key
            assert BOX.decrypt(connection["consumer_secret_enc"]) == new_secret
            await wait_until(
                lambda: fired_done(1, stored_at), "a scheduled sync with the new key", 120.0, 0.3
            )
            done = [r for r in await fired_jobs(settings, org, stored_at) if r["state"] == "done"]
            await assert_exact(settings, org, str(done[0]["id"]), store)

            # Stop the schedule, let the last job finish: one job at a time, all along.
            cleared = await put_schedule(stack, org, connection_id, interval_s=1, enabled=False)
            assert cleared.status_code == 200 and cleared.json()["next_fire_at"] is None

            async def all_final() -> bool:
                return all(r["state"] in ("done", "failed") for r in await jobs(settings, org))

            await wait_until(all_final, "every job final", 120.0, 0.3)
            rows = await jobs(settings, org)
            assert_one_open_job_at_a_time(rows)
            failures = [r["last_error"] for r in rows if r["state"] == "failed"]
            assert failures and all("refused the credentials" in f for f in failures), failures
            stats = await sim.stats()
            print(
                f"{len(rows)} jobs ({sum(r['state'] == 'done' for r in rows)} done), "
                f"{len(skipped)} fires skipped while a job read the store, 401s: "
                f"{stats['by_status'].get('401', 0)}"
            )
            text = stack.logs()
            assert sim.consumer_secret not in text and new_secret not in text


@contextlib.asynccontextmanager
async def second_tracker(settings: Settings, log_dir: Path) -> AsyncIterator[Stack]:
    """Another tracker replica, ready, in a stack of its own (a port of its own)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, log_dir, dict(ENV))
    stack.start("tracker", 1)
    try:
        await wait_ready(stack, 1)
        yield stack
    finally:
        stack.stop_all()


async def wait_ready(stack: Stack, replica: int = 0) -> None:
    url = stack.url("tracker", replica)  # a replica after the first has a port of its own
    async with httpx.AsyncClient(timeout=2) as client:

        async def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(url + "/readyz")).is_success
            return False

        await wait_until(ready, "the tracker ready", 60.0, 0.2)


def pid_of(event: asyncpg.Record) -> int:
    return int(event["details"]["replica"].rsplit(" pid ", 1)[-1])


async def test_another_tracker_fires_when_the_leader_dies_and_missed_fires_run_once(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with (
        infra_shared_lock(),
        started_stack(settings, tmp_path / "a", ENV) as main,
        second_tracker(settings, tmp_path / "b") as standby,
    ):
        trackers = {
            main.processes[("tracker", 0)].pid: (main, 0),
            standby.processes[("tracker", 1)].pid: (standby, 1),
        }
        with spawn_simulator(customers=30, seed=52) as sim:
            first = await post_start(stack=main, org=org, sim=sim, key=sim.consumer_key,
                                     secret=sim.consumer_secret)  # fmt: skip
            assert first.status_code == 202, first.text
            await wait_final(settings, first.json()["job_id"])
            connection_id = await fetchval(
                settings, "SELECT id FROM woo_connections WHERE org_id = $1::uuid", org.org_id
            )
            answer = await put_schedule(main, org, connection_id, interval_s=1)
            assert answer.status_code == 200, answer.text

            async def events_after(after_id: int, count: int) -> bool:
                return len(await schedule_events(settings, org, after_id)) >= count

            await wait_until(lambda: events_after(0, 3), "three fires", 90.0, 0.3)
            leaders = {pid_of(e) for e in await schedule_events(settings, org)}
            assert len(leaders) == 1, leaders
            [leader] = leaders
            stack, replica = trackers[leader]
            stack.kill("tracker", replica)
            killed_at = await last_activity(settings)
            await wait_until(lambda: events_after(killed_at, 2), "fires after the kill", 90.0, 0.3)
            successors = {pid_of(e) for e in await schedule_events(settings, org, killed_at)}
            [successor] = successors
            assert successor != leader and successor in trackers

            # No tracker at all for several slots.
            stack, replica = trackers[successor]
            stack.kill("tracker", replica)
            due_before = await fetchval(
                settings,
                "SELECT next_fire_at FROM woo_sync_schedule WHERE connection_id = $1",
                connection_id,
            )

            async def slots_missed() -> bool:
                late = await fetchval(settings, "SELECT now() - $1::timestamptz", due_before)
                return bool(late.total_seconds() > 4.5)

            await wait_until(slots_missed, "five slots missed", 60.0, 0.3)
            returned = await last_activity(settings)
            returned_at: datetime = await fetchval(settings, "SELECT now()")
            stack.start("tracker", replica)
            await wait_until(lambda: events_after(returned, 3), "fires after return", 90.0, 0.3)
            after = await schedule_events(settings, org, returned)
            dues = [datetime.fromisoformat(e["details"]["due_at"]) for e in after]
            # One fire for the missed slots (it says how many it stands for), then the pace.
            assert sum(due < returned_at for due in dues) == 1, after
            assert after[0]["details"]["slots"] >= 5, after[0]["details"]
            assert dues == sorted(set(dues)), dues
            holders = await fetchval(
                settings,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7428113 "
                "AND granted AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())",
            )
            assert holders == 1
            print(
                f"leader pid {leader} killed, pid {successor} fired; after "
                f"{after[0]['details']['slots']} missed slots one fire, then {len(after) - 1} more"
            )
