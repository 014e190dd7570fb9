"""Orchestrate against real PostgreSQL and RabbitMQ: one parent job over several stores.

The api is served as for the other integration tests; the tracker's recompute runs as its handler
(tests/e2e runs the whole pipeline as processes against simulated stores).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx

from services.tracker.handlers import recompute
from shared.auth import create_org
from shared.db import for_org
from shared.paths import ORCHESTRATE_PATH
from tests.factories import make_connection, make_org
from tests.helpers import Api, error_of


async def _orchestrate(api: Api, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or api.key}"}
    return await api.client.post(ORCHESTRATE_PATH, json=body, headers=headers)


def _body(api: Api, connections: list[UUID], **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "org_id": str(api.org_id),
        "connection_ids": [str(c) for c in connections],
    }
    if options:
        body["options"] = options
    return body


async def _stores(api: Api, n: int) -> list[UUID]:
    return [await make_connection(api.pool, api.org_id) for _ in range(n)]


async def _jobs(api: Api) -> list[asyncpg.Record]:
    return await api.pool.fetch("SELECT * FROM woo_customer_sync_queue ORDER BY created_at, id")


async def _events(api: Api, job_id: UUID) -> list[str]:
    rows = await api.pool.fetch(
        "SELECT event FROM woo_sync_activity WHERE job_id = $1 ORDER BY id", job_id
    )
    return [r["event"] for r in rows]


async def _action(api: Api, action: str, job_id: Any) -> httpx.Response:
    return await api.post({"action": action, "org_id": str(api.org_id), "job_id": str(job_id)})


async def test_orchestrate_makes_a_parent_and_a_queued_child_per_store(api: Api) -> None:
    stores = await _stores(api, 3)
    answer = await _orchestrate(api, _body(api, stores, batch_size=7, conflict_policy="manual"))
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["kind"] == "orchestration" and body["state"] == "processing"
    assert [c["connection_id"] for c in body["children"]] == [str(s) for s in stores]
    assert {c["state"] for c in body["children"]} == {"queued"}
    parent_id = UUID(body["job_id"])

    parent, *children = await _jobs(api)
    assert parent["id"] == parent_id and parent["kind"] == "orchestration"
    assert parent["connection_id"] is None and parent["parent_id"] is None
    assert [c["connection_id"] for c in children] == stores
    assert all(c["parent_id"] == parent_id and c["kind"] == "sync" for c in children)
    assert {(c["batch_size"], c["conflict_policy"]) for c in children} == {(7, "manual")}
    requested = await api.drain(api.topology.fetcher_queue.name)
    assert sorted(r["job_id"] for r in requested) == sorted(str(c["id"]) for c in children)
    assert await _events(api, parent_id) == ["job.orchestrated"]
    assert await _events(api, children[0]["id"]) == ["job.created", "job.queued"]

    status = await api.get(body["status_url"].removeprefix(api.url))
    assert status.status_code == 200, status.text
    shown = status.json()
    assert shown["kind"] == "orchestration" and shown["connection_id"] is None
    assert [c["job_id"] for c in shown["children"]] == [str(c["id"]) for c in children]
    assert {c["state"] for c in shown["children"]} == {"queued"}
    assert (shown["total"], shown["done"], shown["failed"]) == (0, 0, 0)
    # A child's status names its parent.
    child = await api.get(f"/api/v1/integrations/woocommerce/sync/jobs/{children[0]['id']}")
    assert child.json()["parent_id"] == str(parent_id) and child.json()["children"] is None

    # The jobs list shows the parent (no store) and its children (naming it).
    listed = (await api.get("/api/v1/integrations/woocommerce/sync/jobs")).json()["items"]
    by_id = {item["job_id"]: item for item in listed}
    assert by_id[str(parent_id)]["kind"] == "orchestration"
    assert by_id[str(parent_id)]["store_url"] is None
    assert {by_id[str(c["id"])]["parent_id"] for c in children} == {str(parent_id)}


async def test_per_store_options_fill_in_from_the_shared_ones(api: Api) -> None:
    a, b = await _stores(api, 2)
    body = {
        "org_id": str(api.org_id),
        "connections": [
            {"connection_id": str(a), "options": {"batch_size": 3}},
            {"connection_id": str(b)},
        ],
        "options": {"batch_size": 9, "concurrency": 2},
    }
    answer = await _orchestrate(api, body)
    assert answer.status_code == 202, answer.text
    _, first, second = await _jobs(api)
    assert (first["batch_size"], first["concurrency"]) == (3, 2)
    assert (second["batch_size"], second["concurrency"]) == (9, 2)


async def _nothing_created(api: Api, before: int) -> None:
    assert len(await _jobs(api)) == before
    assert await api.drain(api.topology.fetcher_queue.name) == []


async def test_bad_requests_name_the_problem_and_create_nothing(api: Api, settings: Any) -> None:
    stores = await _stores(api, 3)
    other_org = await make_org(api.pool, "other")
    foreign = await make_connection(api.pool, other_org)
    missing = uuid4()

    cases: list[tuple[dict[str, Any], int, str, str]] = [
        (_body(api, [stores[0], stores[0]]), 422, "invalid_request", "named twice"),
        (_body(api, [stores[0]]), 422, "invalid_request", "connection_ids"),
        ({"org_id": str(api.org_id)}, 422, "invalid_request", "exactly one"),
        (_body(api, [stores[0], missing]), 404, "connection_not_found", str(missing)),
        (_body(api, [stores[0], foreign]), 404, "connection_not_found", str(foreign)),
        (_body(api, stores, batch_size=0), 422, "invalid_request", "batch_size"),
    ]
    for body, status, code, named in cases:
        answer = await _orchestrate(api, body)
        assert error_of(answer) == (status, code), (body, answer.text)
        assert named in answer.json()["error"]["message"], answer.text
        await _nothing_created(api, 0)

    other_key_body = _body(api, stores)
    other_key_body["org_id"] = str(other_org)
    assert error_of(await _orchestrate(api, other_key_body)) == (403, "forbidden")
    anonymous = await api.client.post(ORCHESTRATE_PATH, json=_body(api, stores))
    assert anonymous.status_code == 401
    await _nothing_created(api, 0)

    # A store with an open job: 409 naming it, and no child made for the others either.
    first = await _orchestrate(api, _body(api, stores[:2]))
    assert first.status_code == 202, first.text
    await api.drain(api.topology.fetcher_queue.name)
    busy = await _orchestrate(api, _body(api, [stores[2], stores[1]]))
    assert error_of(busy) == (409, "connection_busy")
    assert str(stores[1]) in busy.json()["error"]["message"]
    await _nothing_created(api, 3)


async def test_the_children_count_against_the_cap(api: Api) -> None:
    limit = api.settings.max_concurrent_syncs_per_org
    stores = await _stores(api, limit + 1)
    over = await _orchestrate(api, _body(api, stores))
    assert error_of(over) == (429, "too_many_syncs")
    assert f"limit of {limit}" in over.json()["error"]["message"]
    await _nothing_created(api, 0)


async def test_same_idempotency_key_answers_with_the_same_parent(api: Api) -> None:
    stores = await _stores(api, 2)
    first = await _orchestrate(api, _body(api, stores, idempotency_key="nightly-1"))
    again = await _orchestrate(api, _body(api, stores, idempotency_key="nightly-1"))
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    assert len(await _jobs(api)) == 3


async def test_pause_resume_cancel_of_the_parent_apply_to_every_child(api: Api) -> None:
    stores = await _stores(api, 3)
    parent_id = (await _orchestrate(api, _body(api, stores))).json()["job_id"]
    children = [r["id"] for r in (await _jobs(api))[1:]]
    # One child already finished: the actions leave it as it is.
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'done', fetch_done_at = now() WHERE id = $1",
        children[2],
    )

    paused = await _action(api, "pause", parent_id)
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert [c["state"] for c in paused.json()["children"]] == ["paused", "paused", "done"]
    assert await _events(api, UUID(parent_id)) == ["job.orchestrated", "job.paused"]
    assert (await _events(api, children[0]))[-1] == "job.paused"
    audit = await api.pool.fetchval(
        "SELECT details FROM woo_sync_activity WHERE job_id = $1 AND event = 'job.paused'",
        children[0],
    )
    assert audit["parent_id"] == parent_id

    # Paused again: nothing is pausable.
    assert error_of(await _action(api, "pause", parent_id)) == (409, "action_not_allowed")

    resumed = await _action(api, "resume", parent_id)
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["state"] == "processing"
    assert [c["state"] for c in resumed.json()["children"]] == ["queued", "queued", "done"]

    # The parent refuses what applies to a child only.
    assert error_of(await _action(api, "retry", parent_id)) == (409, "action_not_allowed")
    forced = await api.post(
        {"action": "force-done", "org_id": str(api.org_id), "job_id": parent_id, "reason": "x"}
    )
    assert error_of(forced) == (409, "action_not_allowed")

    cancelled = await _action(api, "cancel", parent_id)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert [c["state"] for c in cancelled.json()["children"]] == [
        "cancelled",
        "cancelled",
        "done",
    ]
    assert error_of(await _action(api, "cancel", parent_id)) == (409, "action_not_allowed")


async def test_another_orgs_parent_is_not_found(api: Api) -> None:
    stores = await _stores(api, 2)
    parent_id = (await _orchestrate(api, _body(api, stores))).json()["job_id"]
    other_org, other_key = await create_org(api.pool, "other")
    for action in ("pause", "resume", "cancel", "status"):
        answer = await api.post(
            {"action": action, "org_id": str(other_org), "job_id": parent_id}, key=other_key
        )
        assert error_of(answer) == (404, "job_not_found"), answer.text
    status = await api.get(f"/api/v1/integrations/woocommerce/sync/jobs/{parent_id}", key=other_key)
    assert status.status_code == 404
    assert [r["state"] for r in await _jobs(api)] == ["processing", "queued", "queued"]


async def _finish(pool: asyncpg.Pool, job_id: UUID, state: str, error: str | None = None) -> None:
    await pool.execute(
        """UPDATE woo_customer_sync_queue
           SET state = $2, last_error = $3, total = 4, done_count = 4 - $4::int,
               failed_count = $4::int, fetch_done_at = now(), finished_at = now()
           WHERE id = $1""",
        job_id,
        state,
        error,
        0 if state == "done" else 1,
    )


async def test_the_tracker_ends_the_parent_when_every_child_is_final(
    api: Api, app_pool: asyncpg.Pool
) -> None:
    stores = await _stores(api, 3)
    parent_id = UUID((await _orchestrate(api, _body(api, stores))).json()["job_id"])
    children = [r["id"] for r in (await _jobs(api))[1:]]
    scope = for_org(app_pool, api.org_id)

    await _finish(api.pool, children[0], "done")
    await _finish(api.pool, children[1], "failed", "store refused the key")
    assert await recompute(scope, parent_id) is None  # one child still open
    parent = await api.pool.fetchrow(
        "SELECT * FROM woo_customer_sync_queue WHERE id = $1", parent_id
    )
    assert (parent["state"], parent["total"], parent["done_count"]) == ("processing", 8, 7)

    await _finish(api.pool, children[2], "done")
    ended = await recompute(scope, parent_id)
    assert ended is not None and ended.state == "failed"
    assert (ended.total, ended.done, ended.failed) == (12, 11, 1)
    parent = await api.pool.fetchrow(
        "SELECT * FROM woo_customer_sync_queue WHERE id = $1", parent_id
    )
    assert parent["last_error"] == (
        f"job {children[1]} (connection {stores[1]}) failed: store refused the key"
    )
    assert (await _events(api, parent_id))[-1] == "job.failed"
    assert await recompute(scope, parent_id) is None  # ended once

    # Its failed child synced after all (a retry): the parent recovers to done.
    await _finish(api.pool, children[1], "done")
    recovered = await recompute(scope, parent_id)
    assert recovered is not None and recovered.state == "done"


async def test_every_child_done_ends_the_parent_done(api: Api, app_pool: asyncpg.Pool) -> None:
    stores = await _stores(api, 2)
    parent_id = UUID((await _orchestrate(api, _body(api, stores))).json()["job_id"])
    for child in [r["id"] for r in (await _jobs(api))[1:]]:
        await _finish(api.pool, child, "done")
    ended = await recompute(for_org(app_pool, api.org_id), parent_id)
    assert ended is not None and (ended.state, ended.total, ended.done) == ("done", 8, 8)
    status = await api.get(f"/api/v1/integrations/woocommerce/sync/jobs/{parent_id}")
    assert status.json()["state"] == "done" and status.json()["last_error"] is None


async def test_a_paused_parent_whose_children_ended_can_still_be_resumed(
    api: Api, app_pool: asyncpg.Pool
) -> None:
    stores = await _stores(api, 2)
    parent_id = (await _orchestrate(api, _body(api, stores))).json()["job_id"]
    children = [r["id"] for r in (await _jobs(api))[1:]]
    assert (await _action(api, "pause", parent_id)).status_code == 200
    # Each child ended on its own: one cancelled by hand, one done.
    assert (await _action(api, "cancel", children[0])).status_code == 200
    await _finish(api.pool, children[1], "done")

    resumed = await _action(api, "resume", parent_id)
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["state"] == "processing" and resumed.json()["released"] == 0
    ended = await recompute(for_org(app_pool, api.org_id), UUID(parent_id))
    assert ended is not None and ended.state == "failed"
    parent = await api.pool.fetchrow(
        "SELECT last_error FROM woo_customer_sync_queue WHERE id = $1", UUID(parent_id)
    )
    assert parent["last_error"].startswith(f"job {children[0]} (connection {stores[0]}) cancelled")
