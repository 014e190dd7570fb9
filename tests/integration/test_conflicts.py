"""Conflicts against real PostgreSQL (and the api on a port): the trigger that tells MantisNXT's
edits from woosync's own writes, each policy in the syncer, the tracker keeping a job with
waiting conflicts open, and the api's listing and ``resolve-conflicts`` with their tenancy, bad
input and 409."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.syncer.handlers import handle_customer_batch
from services.tracker import handlers as tracker
from shared.auth import create_org
from shared.conflicts import ConflictPolicy
from shared.db import for_org
from shared.jobs import get_status
from shared.paths import CONFLICTS_PATH, JOB_PATH, SYNC_PATH
from shared.settings import Settings
from tests.factories import Job, make_sync_job, small_customer
from tests.helpers import Api, error_of, woosync

OLD = "2020-01-01T00:00:00"  # a store change older than any MantisNXT edit made by a test
NEW = "2099-01-01T00:00:00"  # and one newer


def first(woo_id: int, name: str, modified: str | None = None) -> dict[str, Any]:
    return small_customer(woo_id, first_name=name, date_modified_gmt=modified)


async def sync(app_pool: asyncpg.Pool, job: Job, customers: list[dict[str, Any]]) -> Any:
    return await handle_customer_batch(
        job.batch(customers), attempt=0, pool=app_pool, max_attempts=3
    )


async def edit_in_mantis(pool: asyncpg.Pool, job: Job, woo_ids: list[int], name: str) -> None:
    """What a MantisNXT user does: plain SQL in a session that does not name itself."""
    await pool.execute(
        "UPDATE customer SET first_name = $3 WHERE org_id = $1 AND woo_id = ANY($2::bigint[])",
        job.org_id,
        woo_ids,
        name,
    )


async def customers(pool: asyncpg.Pool, job: Job) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch("SELECT * FROM customer WHERE org_id = $1", job.org_id)
    return {r["woo_id"]: r for r in rows}


async def lines(pool: asyncpg.Pool, job: Job) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT * FROM woo_customer_sync_queue_line WHERE job_id = $1", job.job_id
    )
    return {r["woo_id"]: r for r in rows}


async def conflicted_job(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool, policy: ConflictPolicy, org_id: UUID | None = None
) -> Job:
    """Customers 1 and 2 synced, then edited in MantisNXT, then changed in the store (1 before
    the edit by its date, 2 after it) and synced again under ``policy``; every page read."""
    job = await make_sync_job(pool, org_id=org_id, fetch_done=True)
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET conflict_policy = $2 WHERE id = $1",
        job.job_id,
        policy.value,
    )
    await sync(app_pool, job, [first(1, "Woo1"), first(2, "Woo2"), first(3, "Woo3")])
    await edit_in_mantis(pool, job, [1, 2], "Mantis")
    # A second job of the connection reads the store again.
    second = Job(job.org_id, job.connection_id, uuid4())
    await pool.execute(
        """INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, batch_size,
                                                concurrency, fetch_done_at, conflict_policy)
           VALUES ($1, $2, $3, 'processing', 100, 4, now(), $4)""",
        second.job_id,
        job.org_id,
        job.connection_id,
        policy.value,
    )
    await sync(
        app_pool,
        second,
        [first(1, "Store1", OLD), first(2, "Store2", NEW), first(3, "Store3", NEW)],
    )
    return second


# --- the trigger --------------------------------------------------------------------------------


async def test_only_edits_not_made_by_woosync_are_stamped(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    job = await make_sync_job(pool)
    await sync(app_pool, job, [first(1, "A"), first(2, "B")])
    await sync(app_pool, job, [first(1, "A2", NEW)])  # the syncer's own update
    rows = await customers(pool, job)
    assert rows[1]["first_name"] == "A2"
    assert rows[1]["mantis_updated_at"] is None and rows[2]["mantis_updated_at"] is None

    await edit_in_mantis(pool, job, [2], "Edited")
    # An update that changes nothing is no edit.
    await pool.execute("UPDATE customer SET first_name = first_name WHERE woo_id = 1")
    rows = await customers(pool, job)
    assert rows[1]["mantis_updated_at"] is None
    assert rows[2]["mantis_updated_at"] is not None
    assert rows[2]["mantis_updated_at"] > rows[2]["synced_at"]


# --- the policies in the syncer -----------------------------------------------------------------


async def test_woo_wins_overwrites_and_notes_it(pool: asyncpg.Pool, app_pool: asyncpg.Pool) -> None:
    job = await conflicted_job(pool, app_pool, ConflictPolicy.WOO_WINS)
    rows, settled = await customers(pool, job), await lines(pool, job)
    assert [rows[i]["first_name"] for i in (1, 2, 3)] == ["Store1", "Store2", "Store3"]
    assert {s["state"] for s in settled.values()} == {"done"}
    assert "woo_wins" in settled[1]["warning"] and settled[3]["warning"] is None
    assert rows[1]["synced_at"] > rows[1]["mantis_updated_at"]


async def test_mantis_wins_keeps_the_row_and_records_the_store_version_as_seen(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    job = await conflicted_job(pool, app_pool, ConflictPolicy.MANTIS_WINS)
    rows, settled = await customers(pool, job), await lines(pool, job)
    assert [rows[i]["first_name"] for i in (1, 2, 3)] == ["Mantis", "Mantis", "Store3"]
    assert {s["state"] for s in settled.values()} == {"done"}
    assert "kept MantisNXT's edit" in settled[2]["warning"]
    assert rows[2]["raw"]["first_name"] == "Store2"  # the store version seen
    assert rows[2]["synced_at"] > rows[2]["mantis_updated_at"]
    # The same store version again is no conflict, and changes nothing.
    before = await customers(pool, job)
    outcome = await sync(app_pool, job, [first(2, "Store2", NEW)])
    assert outcome.conflicts == () and (await customers(pool, job))[2] == before[2]


async def test_newest_wins_takes_the_newer_side(pool: asyncpg.Pool, app_pool: asyncpg.Pool) -> None:
    job = await conflicted_job(pool, app_pool, ConflictPolicy.NEWEST_WINS)
    rows, settled = await customers(pool, job), await lines(pool, job)
    # Customer 1's store change is dated before MantisNXT's edit, customer 2's after it.
    assert [rows[i]["first_name"] for i in (1, 2, 3)] == ["Mantis", "Store2", "Store3"]
    assert "kept" in settled[1]["warning"] and "overwrote" in settled[2]["warning"]


async def test_manual_holds_conflicts_with_both_versions_and_the_job_waits(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    job = await conflicted_job(pool, app_pool, ConflictPolicy.MANUAL)
    rows, settled = await customers(pool, job), await lines(pool, job)
    assert [rows[i]["first_name"] for i in (1, 2, 3)] == ["Mantis", "Mantis", "Store3"]
    assert {i: s["state"] for i, s in settled.items()} == {1: "conflict", 2: "conflict", 3: "done"}
    assert settled[2]["payload"]["first_name"] == "Store2"
    assert settled[2]["mantis_version"]["first_name"] == "Mantis"
    # A redelivery leaves the waiting lines alone.
    again = await sync(app_pool, job, [first(2, "Store2", NEW)])
    assert again.conflicts == (2,) and (await lines(pool, job))[2]["attempts"] == 1

    scope = for_org(app_pool, job.org_id)
    assert await tracker.recompute(scope, job.job_id) is None  # not finished
    status = await tracker_status(app_pool, job)
    assert (status.state, status.conflicts, status.pending, status.done) == ("processing", 2, 0, 1)
    assert status.conflict_policy == "manual"
    # Waiting for a person is no stall.
    assert await tracker.stall_job(scope, job.job_id, 0.0) is None
    stalled = await pool.fetch("SELECT id FROM woosync_stall_candidates(0)")
    assert job.job_id not in {r["id"] for r in stalled}


async def tracker_status(app_pool: asyncpg.Pool, job: Job) -> Any:
    return await get_status(for_org(app_pool, job.org_id), org_id=job.org_id, job_id=job.job_id)


# --- the api ------------------------------------------------------------------------------------


def resolve(api: Api, job: Job, take: str, **which: Any) -> dict[str, Any]:
    return {
        "action": "resolve-conflicts",
        "org_id": str(api.org_id),
        "job_id": str(job.job_id),
        "take": take,
        **which,
    }


async def test_the_api_lists_conflicts_with_both_versions_page_by_page(
    api: Api, app_pool: asyncpg.Pool
) -> None:
    job = await conflicted_job(api.pool, app_pool, ConflictPolicy.MANUAL, org_id=api.org_id)
    path = CONFLICTS_PATH.format(job_id=job.job_id)
    page = await api.get(path + "?limit=1")
    assert page.status_code == 200, page.text
    body = page.json()
    assert (body["total"], body["next_after"], len(body["conflicts"])) == (2, 1, 1)
    one = body["conflicts"][0]
    assert one["woo_id"] == 1 and one["woo"]["first_name"] == "Store1"
    assert one["mantis"]["first_name"] == "Mantis"
    assert {"field": "first_name", "woo": "Store1", "mantis": "Mantis"} in one["diff"]
    rest = (await api.get(path + "?limit=1&after=1")).json()
    assert [c["woo_id"] for c in rest["conflicts"]] == [2] and rest["next_after"] is None

    # The status shows the conflicts the tracker counted at its last recompute.
    await tracker.recompute(for_org(app_pool, job.org_id), job.job_id)
    status = (await api.get(JOB_PATH.format(job_id=job.job_id))).json()
    assert (status["conflicts"], status["state"]) == (2, "processing")


async def test_resolving_one_then_all_writes_the_chosen_versions_and_the_job_finishes(
    api: Api, app_pool: asyncpg.Pool
) -> None:
    job = await conflicted_job(api.pool, app_pool, ConflictPolicy.MANUAL, org_id=api.org_id)
    edited_at = (await customers(api.pool, job))[1]["mantis_updated_at"]

    one = await api.post(resolve(api, job, "woo", woo_id=1))
    assert one.status_code == 200, one.text
    assert (one.json()["resolved"], one.json()["conflicts"]) == (1, 1)
    row = (await customers(api.pool, job))[1]
    assert row["first_name"] == "Store1"
    assert row["mantis_updated_at"] == edited_at  # woosync's write is no MantisNXT edit
    again = await api.post(resolve(api, job, "woo", woo_id=1))
    assert error_of(again) == (409, "not_in_conflict")

    every = await api.post(resolve(api, job, "mantis", all=True))
    assert every.status_code == 200 and every.json()["resolved"] == 1
    rows, settled = await customers(api.pool, job), await lines(api.pool, job)
    assert rows[2]["first_name"] == "Mantis" and rows[2]["raw"]["first_name"] == "Store2"
    assert {s["state"] for s in settled.values()} == {"done"}
    assert "took the store's version" in settled[1]["warning"]
    assert "kept MantisNXT's version" in settled[2]["warning"]
    assert settled[2]["payload"] is None and settled[2]["mantis_version"] is None

    audit = await api.pool.fetch(
        "SELECT details FROM woo_sync_activity WHERE event = 'conflicts.resolved' ORDER BY id"
    )
    assert [(a["details"]["take"], a["details"]["woo_ids"]) for a in audit] == [
        ("woo", [1]),
        ("mantis", [2]),
    ]
    assert all(a["details"]["by"] == "api" for a in audit)

    done = await tracker.recompute(for_org(app_pool, job.org_id), job.job_id)
    assert done is not None and done.state == "done"


async def test_conflict_routes_keep_tenancy_and_refuse_bad_input_changing_nothing(
    api: Api, app_pool: asyncpg.Pool
) -> None:
    job = await conflicted_job(api.pool, app_pool, ConflictPolicy.MANUAL, org_id=api.org_id)
    path = CONFLICTS_PATH.format(job_id=job.job_id)
    before = (await lines(api.pool, job), await customers(api.pool, job))

    assert (await api.client.get(path)).status_code == 401
    unsigned = await api.client.post(SYNC_PATH, json=resolve(api, job, "woo", all=True))
    assert error_of(unsigned) == (401, "unauthorized")
    other_org, other_key = await create_org(api.pool, "other")
    assert error_of(await api.get(path, key=other_key)) == (404, "job_not_found")
    theirs = resolve(api, job, "woo", all=True) | {"org_id": str(other_org)}
    assert error_of(await api.post(theirs, key=other_key)) == (404, "job_not_found")
    assert error_of(await api.post(resolve(api, job, "woo", all=True), key=other_key)) == (
        403,
        "forbidden",
    )
    assert error_of(await api.get(CONFLICTS_PATH.format(job_id=uuid4()))) == (404, "job_not_found")

    for query in ("?limit=0", "?limit=201", "?limit=x", "?after=-1", "?limit=²"):
        response = await api.get(path + query)
        assert error_of(response) == (422, "invalid_request"), query
        assert query[1:].split("=")[0] in response.json()["error"]["message"]
    bad = {
        "take": resolve(api, job, "both", all=True),
        "woo_id": resolve(api, job, "woo"),  # neither one nor all
        "all": resolve(api, job, "woo", woo_id=1, all=True),  # both
    }
    for name, body in bad.items():
        response = await api.post(body)
        assert error_of(response) == (422, "invalid_request"), name
        assert name in response.json()["error"]["message"]
    assert error_of(await api.post(resolve(api, job, "woo", woo_id=3))) == (409, "not_in_conflict")
    assert (await lines(api.pool, job), await customers(api.pool, job)) == before
    assert not await api.pool.fetchval(
        "SELECT count(*) FROM woo_sync_activity WHERE event = 'conflicts.resolved'"
    )


async def test_start_takes_a_conflict_policy_for_its_job(api: Api, store: Any) -> None:
    bad = await api.start(store, conflict_policy="store_wins")
    assert error_of(bad) == (422, "invalid_request")
    assert "options.conflict_policy" in bad.json()["error"]["message"]
    assert await api.pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 0

    started = await api.start(store, conflict_policy="manual")
    assert started.status_code == 202, started.text
    job_id = UUID(started.json()["job_id"])
    assert (
        await api.pool.fetchval(
            "SELECT conflict_policy FROM woo_customer_sync_queue WHERE id = $1", job_id
        )
        == "manual"
    )
    status = (await api.get(JOB_PATH.format(job_id=job_id))).json()
    assert (status["conflict_policy"], status["conflicts"]) == ("manual", 0)


async def test_the_database_accepts_exactly_the_policies(pool: asyncpg.Pool) -> None:
    await make_sync_job(pool)
    assert await pool.fetchval("SELECT conflict_policy FROM woo_connections") == "woo_wins"
    for policy in ConflictPolicy:
        await pool.execute("UPDATE woo_connections SET conflict_policy = $1", policy.value)
        await pool.execute("UPDATE woo_customer_sync_queue SET conflict_policy = $1", policy.value)
    for table in ("woo_connections", "woo_customer_sync_queue"):
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(f"UPDATE {table} SET conflict_policy = 'store_wins'")


async def test_the_operator_sets_a_connections_policy_and_the_syncer_follows_it(
    settings: Settings, pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    job = await make_sync_job(pool)  # no policy of its own: the connection's
    shown = json.loads(await woosync(settings, "conflicts", "policy", str(job.connection_id)))
    assert shown["conflict_policy"] == "woo_wins"
    changed = json.loads(
        await woosync(settings, "conflicts", "policy", str(job.connection_id), "mantis_wins")
    )
    assert (changed["conflict_policy"], changed["previous"]) == ("mantis_wins", "woo_wins")
    audit = await pool.fetchrow(
        "SELECT org_id, details FROM woo_sync_activity WHERE event = 'connection.conflict_policy'"
    )
    assert audit["org_id"] == job.org_id and audit["details"]["by"] == "cli"

    await sync(app_pool, job, [first(1, "Woo")])
    await edit_in_mantis(pool, job, [1], "Mantis")
    await sync(app_pool, job, [first(1, "Store", NEW)])
    assert (await customers(pool, job))[1]["first_name"] == "Mantis"
