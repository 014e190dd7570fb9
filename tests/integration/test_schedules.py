"""Schedules against real PostgreSQL (and the api over HTTP): the routes' validation, tenancy
and audit; the one cross-org read (a SECURITY DEFINER function); fires, skips, missed fires and
one leader among schedulers."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from services.tracker.scheduler import SCHEDULER_LOCK, Scheduler
from shared.auth import create_org
from shared.messages import Message
from shared.paths import SCHEDULE_PATH, SCHEDULES_PATH
from shared.schedules import DUE_SCHEDULES, fire_due, fire_one
from shared.settings import Settings
from tests.factories import make_connection, make_job, make_org, make_schedule
from tests.helpers import Api, error_of, service_env, woosync


def path(connection_id: Any) -> str:
    return SCHEDULE_PATH.format(connection_id=connection_id)


async def put(api: Api, connection_id: Any, body: Any, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key or api.key}"}
    return await api.client.put(path(connection_id), json=body, headers=headers)


async def events(pool: asyncpg.Pool, prefix: str = "schedule.") -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT org_id, job_id, event, details FROM woo_sync_activity WHERE event LIKE $1 "
        "ORDER BY id",
        prefix + "%",
    )


class Published:
    """A publish function that records what it was given (or fails, when told to)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.fail = False

    async def __call__(self, messages: list[Message]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.messages.extend(messages)


# -- the api -------------------------------------------------------------------------------------


async def test_a_schedule_is_set_read_listed_and_cleared_with_an_audit_trail(api: Api) -> None:
    connection_id = await make_connection(api.pool, api.org_id)
    answer = await put(api, connection_id, {"interval_s": 3600})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["connection_id"] == str(connection_id)
    assert (body["interval_s"], body["cron"], body["timezone"], body["enabled"]) == (
        3600,
        None,
        "UTC",
        True,
    )
    row = await api.pool.fetchrow("SELECT next_fire_at - now() AS wait FROM woo_sync_schedule")
    assert timedelta(minutes=59) < row["wait"] <= timedelta(hours=1)

    replaced = await put(
        api, connection_id, {"cron": "0 3 * * *", "timezone": "Europe/Berlin", "enabled": True}
    )
    assert replaced.status_code == 200 and replaced.json()["cron"] == "0 3 * * *"
    assert (await api.get(path(connection_id))).json() == replaced.json()
    listed = (await api.get(SCHEDULES_PATH)).json()
    assert listed == {"schedules": [replaced.json()]}

    cleared = await api.client.delete(
        path(connection_id), headers={"Authorization": f"Bearer {api.key}"}
    )
    assert cleared.status_code == 200 and cleared.json()["cron"] == "0 3 * * *"
    assert error_of(await api.get(path(connection_id))) == (404, "schedule_not_found")
    assert await api.pool.fetchval("SELECT count(*) FROM woo_sync_schedule") == 0

    audit = await events(api.pool)
    assert [r["event"] for r in audit] == ["schedule.set", "schedule.set", "schedule.cleared"]
    assert all(r["org_id"] == api.org_id for r in audit)
    assert audit[1]["details"]["replaced"]["interval_s"] == 3600
    assert audit[0]["details"]["by"] == "api" and audit[0]["details"]["api_key_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"interval_s": 59}, "interval_s"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 2654435761}, "interval_s"),
        ({}, "interval_s"),
        ({"interval_s": 600, "cron": "0 3 * * *"}, "interval_s"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "not cron"}, "cron"),
        ({"cron": ""}, "cron"),
        ({"interval_s": 600, "timezone": "Nowhere/Else"}, "timezone"),
        ({"interval_s": 600, "every": 3}, "every"),
        ({"interval_s": "often"}, "interval_s"),
    ],
)
async def test_a_bad_schedule_is_422_naming_the_field_and_writes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    connection_id = await make_connection(api.pool, api.org_id)
    answer = await put(api, connection_id, body)
    assert error_of(answer) == (422, "invalid_request")
    assert answer.json()["error"]["message"].startswith(field), answer.json()
    assert await api.pool.fetchval("SELECT count(*) FROM woo_sync_schedule") == 0
    assert await events(api.pool) == []


async def test_another_orgs_connection_is_404_for_every_method(api: Api) -> None:
    other_org = await make_org(api.pool, "globex")
    theirs = await make_connection(api.pool, other_org)
    await make_schedule(api.pool, theirs, due_in_s=3600)
    for unknown in (theirs, uuid4()):
        assert error_of(await put(api, unknown, {"interval_s": 600})) == (
            404,
            "connection_not_found",
        )
        assert error_of(await api.get(path(unknown))) == (404, "connection_not_found")
        deleted = await api.client.delete(
            path(unknown), headers={"Authorization": f"Bearer {api.key}"}
        )
        assert error_of(deleted) == (404, "connection_not_found")
    assert (await api.get(SCHEDULES_PATH)).json() == {"schedules": []}
    assert await api.pool.fetchval("SELECT count(*) FROM woo_sync_schedule") == 1
    assert error_of(await api.get(path("not-a-uuid"))) == (422, "invalid_request")
    no_key = await api.client.get(path(theirs))
    assert no_key.status_code == 401


# -- the database ---------------------------------------------------------------------------------


async def test_the_services_see_schedules_only_as_their_org_and_due_ids_through_the_function(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    a, b = await make_org(pool, "a"), await make_org(pool, "b")
    due_a, due_b = await make_connection(pool, a), await make_connection(pool, b)
    later, off = await make_connection(pool, a), await make_connection(pool, b)
    await make_schedule(pool, due_a, due_in_s=-30)
    await make_schedule(pool, due_b, due_in_s=-60)
    await make_schedule(pool, later, due_in_s=600)
    await make_schedule(
        pool, off, due_in_s=-600, enabled=False, interval_s=600
    )  # disabled: never due
    assert await app_pool.fetchval("SELECT count(*) FROM woo_sync_schedule") == 0
    due = await app_pool.fetch(DUE_SCHEDULES, 100)
    assert [(r["connection_id"], r["org_id"]) for r in due] == [(due_b, b), (due_a, a)]
    assert list(due[0].keys()) == ["connection_id", "org_id"]
    assert len(await app_pool.fetch(DUE_SCHEDULES, 1)) == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_pool.execute("ALTER TABLE woo_sync_schedule NO FORCE ROW LEVEL SECURITY")
    # Another org's schedule cannot be written by naming it.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with app_pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('woosync.org_id', $1, true)", str(a))
            await conn.execute(
                "INSERT INTO woo_sync_schedule (connection_id, org_id, interval_s, next_fire_at) "
                "VALUES ($1, $2, 600, now())",
                off,
                b,
            )


# -- firing ---------------------------------------------------------------------------------------


async def test_a_due_schedule_fires_a_job_from_the_stored_connection(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    await make_schedule(pool, connection_id, due_in_s=-1, interval_s=600)
    published = Published()
    fires = await fire_due(app_pool, published, settings, by="t")
    assert [(f.event, f.state) for f in fires] == [("schedule.fired", "queued")]
    job = await pool.fetchrow("SELECT * FROM woo_customer_sync_queue")
    assert (job["id"], job["connection_id"], job["state"]) == (
        fires[0].job_id,
        connection_id,
        "queued",
    )
    assert [(m.job_id, m.connection_id) for m in published.messages] == [(job["id"], connection_id)]
    schedule = await pool.fetchrow("SELECT *, now() AS now FROM woo_sync_schedule")
    assert schedule["last_job_id"] == job["id"]
    assert schedule["next_fire_at"] > schedule["now"]
    audit = await events(pool, "")
    fired = [r for r in audit if r["event"] == "schedule.fired"]
    assert len(fired) == 1 and fired[0]["job_id"] == job["id"]
    assert fired[0]["details"]["by"] == "scheduler" and fired[0]["details"]["slots"] == 1
    assert {r["event"] for r in audit} >= {"job.created", "job.queued", "schedule.fired"}
    # Fired once: not due any more.
    assert await fire_due(app_pool, published, settings, by="t") == []


async def test_a_store_still_syncing_gets_no_second_job(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    running = await make_job(pool, org, state="processing", connection_id=connection_id)
    await make_schedule(pool, connection_id, due_in_s=-1)
    published = Published()
    fires = await fire_due(app_pool, published, settings, by="t")
    assert [(f.event, f.job_id) for f in fires] == [("schedule.skipped", running)]
    assert published.messages == []
    assert await pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 1
    skipped = await events(pool)
    assert [r["event"] for r in skipped] == ["schedule.skipped"]
    assert skipped[0]["details"]["open_job_id"] == str(running)
    # The next fire is computed as usual.
    assert await pool.fetchval("SELECT next_fire_at > now() FROM woo_sync_schedule")


async def test_missed_fires_run_once_when_the_scheduler_returns(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    await make_schedule(
        pool, connection_id, due_in_s=-(3 * 600 + 30), interval_s=600
    )  # 4 slots missed
    published = Published()
    assert len(await fire_due(app_pool, published, settings, by="t")) == 1
    assert await fire_due(app_pool, published, settings, by="t") == []
    assert await pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 1
    fired = await events(pool)
    assert fired[0]["details"]["slots"] == 4
    wait = await pool.fetchval("SELECT next_fire_at - now() FROM woo_sync_schedule")
    assert timedelta(0) < wait <= timedelta(seconds=600 - 29)  # the next slot, in phase


async def test_a_failed_publish_leaves_a_draft_that_the_next_fire_hands_over(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    await make_schedule(pool, connection_id, due_in_s=-1)
    published = Published()
    published.fail = True
    assert await fire_due(app_pool, published, settings, by="t") == []
    job = await pool.fetchrow("SELECT id, state FROM woo_customer_sync_queue")
    assert job["state"] == "draft"
    assert [r["event"] for r in await events(pool, "job.publish_failed")] == ["job.publish_failed"]
    published.fail = False
    await pool.execute("UPDATE woo_sync_schedule SET next_fire_at = now() - interval '1 second'")
    fires = await fire_due(app_pool, published, settings, by="t")
    assert [(f.event, f.job_id, f.state) for f in fires] == [
        ("schedule.skipped", job["id"], "queued")
    ]
    assert [m.job_id for m in published.messages] == [job["id"]]
    assert await pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 1


async def test_a_paused_job_or_a_cancelled_crawl_still_reading_holds_the_store(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    paused_store, cancelled_store = (
        await make_connection(pool, org),
        await make_connection(pool, org),
    )
    paused = await make_job(pool, org, state="paused", connection_id=paused_store)
    cancelled = await make_job(
        pool, org, state="cancelled", connection_id=cancelled_store, finished=True
    )
    for connection_id in (paused_store, cancelled_store):
        await make_schedule(pool, connection_id, due_in_s=-1)
    fires = await fire_due(app_pool, Published(), settings, by="t")
    assert {(f.connection_id, f.event) for f in fires} == {
        (paused_store, "schedule.skipped"),
        (cancelled_store, "schedule.skipped"),
    }
    reasons = {r["details"]["connection_id"]: r["details"] for r in await events(pool)}
    assert reasons[str(paused_store)]["open_job_id"] == str(paused)
    assert str(cancelled) in reasons[str(cancelled_store)]["reason"]
    assert await pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 2
    # Once the cancelled crawl has stopped, the store's next fire syncs it.
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET crawl_stopped_at = now() WHERE id = $1", cancelled
    )
    await pool.execute(
        "UPDATE woo_sync_schedule SET next_fire_at = now() - interval '1 second' "
        "WHERE connection_id = $1",
        cancelled_store,
    )
    fires = await fire_due(app_pool, Published(), settings, by="t")
    assert [(f.connection_id, f.event) for f in fires] == [(cancelled_store, "schedule.fired")]


async def test_the_org_cap_of_open_syncs_holds_for_fires(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    await make_job(pool, org, state="queued")  # another store of the org, at a cap of 1
    await make_schedule(pool, connection_id, due_in_s=-1)
    capped = settings.model_copy(update={"max_concurrent_syncs_per_org": 1})
    fires = await fire_due(app_pool, Published(), capped, by="t")
    assert [(f.event, f.job_id) for f in fires] == [("schedule.skipped", None)]
    assert "limit" in (await events(pool))[0]["details"]["reason"]


async def test_a_schedule_no_longer_due_is_not_fired_twice(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, settings: Settings
) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    await make_schedule(pool, connection_id, due_in_s=-1)
    published = Published()
    first = await fire_one(
        app_pool, published, settings, org_id=org, connection_id=connection_id, by="a"
    )
    second = await fire_one(
        app_pool, published, settings, org_id=org, connection_id=connection_id, by="b"
    )
    assert first is not None and second is None
    assert len(published.messages) == 1


async def test_one_scheduler_leads_until_its_session_ends(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, app_database_url: str, settings: Settings
) -> None:
    org = await make_org(pool)
    first, second = await make_connection(pool, org), await make_connection(pool, org)
    await make_schedule(pool, first, due_in_s=-1)
    published = Published()
    a, b = (Scheduler(app_database_url, app_pool, published, settings, name=n) for n in "ab")
    try:
        assert len(await a.tick()) == 1 and a.leading
        assert await b.tick() is None and not b.leading
        holders = await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 "
            "AND granted AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            SCHEDULER_LOCK,
        )
        assert holders == 1
        await make_schedule(pool, second, due_in_s=-1)
        assert await b.tick() is None
        await a._drop()  # the leader's session ends (a stop, a crash, a lost database)
        fired = await b.tick()
        assert b.leading and [f.connection_id for f in fired] == [second]
    finally:
        await a._drop()
        await b._drop()
    replicas = [r["details"]["replica"] for r in await events(pool)]
    assert replicas == ["a", "b"]


async def test_a_deleted_connection_takes_its_schedule_with_it(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    org, _ = await create_org(pool, "acme")
    connection_id = await make_connection(pool, org)
    await make_schedule(pool, connection_id, due_in_s=600)
    await pool.execute("DELETE FROM woo_connections WHERE id = $1", connection_id)
    assert await pool.fetchval("SELECT count(*) FROM woo_sync_schedule") == 0


# -- woosync schedule ----------------------------------------------------------------------------


async def woosync_fails(settings: Settings, *args: str) -> str:
    """Run ``woosync`` expecting a refusal; its stderr."""
    env = service_env(settings, WOOSYNC_ADMIN_DATABASE_URL=settings.admin_database_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "woosync.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    return stderr.decode()


async def test_woosync_schedule_set_show_list_clear(settings: Settings, pool: asyncpg.Pool) -> None:
    org = await make_org(pool)
    connection_id = await make_connection(pool, org)
    cid = str(connection_id)
    stored = json.loads(await woosync(settings, "schedule", "set", cid, "--every", "900"))
    assert (stored["org_id"], stored["connection_id"], stored["interval_s"]) == (str(org), cid, 900)
    stored = json.loads(
        await woosync(
            settings, "schedule", "set", cid, "--cron", "30 4 * * 1", "--timezone", "Asia/Tokyo"
        )
    )
    assert (stored["cron"], stored["timezone"], stored["interval_s"]) == (
        "30 4 * * 1",
        "Asia/Tokyo",
        None,
    )
    assert json.loads(await woosync(settings, "schedule", "show", cid)) == stored
    listed = [
        json.loads(line) for line in (await woosync(settings, "schedule", "list")).splitlines()
    ]
    assert listed == [stored]
    assert await woosync(settings, "schedule", "list", "--org", str(uuid4())) == ""
    assert json.loads(await woosync(settings, "schedule", "clear", cid))["cron"] == "30 4 * * 1"
    audit = await events(pool)
    assert [(r["event"], r["details"]["by"]) for r in audit] == [
        ("schedule.set", "cli"),
        ("schedule.set", "cli"),
        ("schedule.cleared", "cli"),
    ]

    assert "--every" in await woosync_fails(settings, "schedule", "set", cid, "--every", "5")
    assert "--cron" in await woosync_fails(settings, "schedule", "set", cid, "--cron", "99 * * * *")
    assert "--timezone" in await woosync_fails(
        settings, "schedule", "set", cid, "--every", "600", "--timezone", "Atlantis"
    )
    assert "no store connection" in await woosync_fails(
        settings, "schedule", "set", str(uuid4()), "--every", "600"
    )
    assert "has no schedule" in await woosync_fails(settings, "schedule", "show", cid)
    assert await pool.fetchval("SELECT count(*) FROM woo_sync_schedule") == 0
    assert len(await events(pool)) == 3
