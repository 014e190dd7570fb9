"""The api's pause, resume and cancel actions against real PostgreSQL and RabbitMQ, with the
fetcher's and the syncer's real handlers standing in for their processes (tests/e2e runs them
as processes against a slow store)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.fetcher.handlers import handle_sync_requested
from services.syncer.handlers import handle_customer_batch
from shared import messages as m
from shared.auth import create_org
from tests.helpers import Api, Recorder, error_of, fetcher_deps


def _body(api: Api, action: str, job_id: str, **extra: Any) -> dict[str, Any]:
    return {"action": action, "org_id": str(api.org_id), "job_id": job_id, **extra}


async def _job(api: Api, job_id: str) -> asyncpg.Record:
    return await api.pool.fetchrow(
        "SELECT * FROM woo_customer_sync_queue WHERE id = $1", UUID(job_id)
    )


async def _events(api: Api, job_id: str) -> list[str]:
    rows = await api.pool.fetch(
        "SELECT event FROM woo_sync_activity WHERE job_id = $1 ORDER BY id", UUID(job_id)
    )
    return [r["event"] for r in rows]


def _batch(api: Api, job_id: str, connection_id: UUID, ids: list[int]) -> m.CustomerBatch:
    return m.CustomerBatch(
        job_id=UUID(job_id),
        org_id=api.org_id,
        connection_id=connection_id,
        page=1,
        customers=[{"id": n, "email": f"c{n}@example.com"} for n in ids],
    )


async def test_pause_holds_batches_and_resume_sends_them_on(
    api: Api, store: Any, app_pool: asyncpg.Pool
) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    assert len(await api.drain(api.topology.fetcher_queue.name)) == 1
    await store.reset_stats()
    job = await _job(api, job_id)

    paused = await api.post(_body(api, "pause", job_id))
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert "job.paused" in await _events(api, job_id)

    # The syncer keeps a paused job's batch instead of writing it (a retry's attempt too).
    for attempt, ids in ((0, [1, 2]), (2, [3])):
        outcome = await handle_customer_batch(
            _batch(api, job_id, job["connection_id"], ids),
            attempt=attempt,
            pool=app_pool,
            max_attempts=3,
        )
        assert outcome.held and outcome.done is None
    assert await api.pool.fetchval("SELECT count(*) FROM customer") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM woo_customer_sync_hold") == 2

    # A fetcher taking the paused job's request reads nothing and records that it stopped.
    recorder = Recorder()
    request = m.SyncRequested(
        job_id=UUID(job_id), org_id=api.org_id, connection_id=job["connection_id"]
    )
    await handle_sync_requested(request, fetcher_deps(app_pool, recorder))
    assert recorder.messages == []
    assert (await _job(api, job_id))["crawl_stopped_at"] is not None
    assert await store.requests() == []  # the start's check was reset below

    again = await api.post(_body(api, "pause", job_id))
    assert error_of(again) == (409, "action_not_allowed")
    assert "paused" in again.json()["error"]["message"]
    force = await api.post(_body(api, "force-done", job_id, reason="x"))
    assert error_of(force) == (409, "action_not_allowed")
    retry = await api.post(_body(api, "retry", job_id))
    assert error_of(retry) == (409, "action_not_allowed")
    assert (await _job(api, job_id))["state"] == "paused"

    resumed = await api.post(_body(api, "resume", job_id))
    assert resumed.status_code == 202, resumed.text
    body = resumed.json()
    assert (body["state"], body["released"], body["fetch_resumed"]) == ("queued", 2, True)
    assert await api.pool.fetchval("SELECT count(*) FROM woo_customer_sync_hold") == 0
    drained = await api.drain(api.topology.syncer_queue.name)
    sent = [m.CustomerBatch.model_validate(b) for b in drained]
    assert sorted(c["id"] for b in sent for c in b.customers) == [1, 2, 3]
    requested = await api.drain(api.topology.fetcher_queue.name)
    assert [r["job_id"] for r in requested] == [job_id]
    assert "job.resumed" in await _events(api, job_id)

    not_paused = await api.post(_body(api, "resume", job_id))
    assert error_of(not_paused) == (409, "action_not_allowed")
    assert "queued" in not_paused.json()["error"]["message"]


async def test_cancel_settles_open_lines_and_frees_the_store_once_the_crawl_stopped(
    api: Api, store: Any, app_pool: asyncpg.Pool
) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    await api.drain(api.topology.fetcher_queue.name)
    # As if a fetcher took the job and recorded two customers, and the syncer wrote one.
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'processing', process_count = 1 WHERE id = $1",
        UUID(job_id),
    )
    await api.pool.executemany(
        "INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, state, page)"
        " VALUES ($1, $2, $3, $4, 1)",
        [(UUID(job_id), 1, api.org_id, "done"), (UUID(job_id), 2, api.org_id, "pending")],
    )
    cancelled = await api.post(_body(api, "cancel", job_id, reason="wrong store"))
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["state"], body["lines_cancelled"], body["crawl_stopped"]) == (
        "cancelled",
        1,
        False,
    )
    lines = await api.pool.fetch(
        "SELECT woo_id, state FROM woo_customer_sync_queue_line ORDER BY woo_id"
    )
    assert [(r["woo_id"], r["state"]) for r in lines] == [(1, "done"), (2, "cancelled")]
    assert body["finished_at"] is not None and "wrong store" in body["last_error"]

    # Its crawl may still be running: a new sync of the store waits, and nothing is created.
    refused = await api.start(store)
    assert error_of(refused) == (409, "crawl_not_stopped")
    assert refused.headers["Retry-After"]
    assert await api.pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 1

    # A batch of the cancelled job reaching the syncer is not written.
    job = await _job(api, job_id)
    outcome = await handle_customer_batch(
        _batch(api, job_id, job["connection_id"], [2, 7]),
        attempt=0,
        pool=app_pool,
        max_attempts=3,
    )
    assert outcome.dropped and outcome.done is None
    assert await api.pool.fetchval("SELECT count(*) FROM customer") == 0

    # The fetcher's crawl ends (here: its delivery finds the job cancelled) and says so.
    request = m.SyncRequested(
        job_id=UUID(job_id), org_id=api.org_id, connection_id=job["connection_id"]
    )
    await handle_sync_requested(request, fetcher_deps(app_pool, Recorder()))
    assert (await _job(api, job_id))["crawl_stopped_at"] is not None
    assert "fetch.stopped" in await _events(api, job_id)

    started = await api.start(store)
    assert started.status_code == 202, started.text
    assert started.json()["job_id"] != job_id

    for action, extra in (("cancel", {}), ("pause", {}), ("resume", {}), ("retry", {})):
        answer = await api.post(_body(api, action, job_id, **extra))
        assert error_of(answer) == (409, "action_not_allowed"), action
        assert "cancelled" in answer.json()["error"]["message"]


async def test_cancel_of_a_job_no_fetcher_took_frees_the_store_at_once(
    api: Api, store: Any
) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    cancelled = await api.post(_body(api, "cancel", job_id))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["crawl_stopped"] is True
    assert (await api.start(store)).status_code == 202


async def test_pause_resume_cancel_keep_tenancy_and_refuse_bad_input(api: Api, store: Any) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    other_org, other_key = await create_org(api.pool, "other")
    theirs = {"org_id": str(other_org), "job_id": job_id}
    for action in ("pause", "resume", "cancel"):
        answer = await api.post({"action": action, **theirs}, key=other_key)
        assert error_of(answer) == (404, "job_not_found"), action
        unknown = await api.post(_body(api, action, str(uuid4())))
        assert error_of(unknown) == (404, "job_not_found"), action
        foreign = await api.post(_body(api, action, job_id), key=other_key)
        assert error_of(foreign) == (403, "forbidden"), action
        anonymous = await api.client.post(
            "/api/v1/integrations/woocommerce/sync/customers", json=_body(api, action, job_id)
        )
        assert anonymous.status_code == 401, action
        missing = await api.post({"action": action, "org_id": str(api.org_id)})
        assert error_of(missing) == (422, "invalid_request"), action
        assert "job_id" in missing.json()["error"]["message"]
        extra = await api.post(_body(api, action, job_id, force=True))
        assert error_of(extra) == (422, "invalid_request"), action
    empty_reason = await api.post(_body(api, "cancel", job_id, reason=""))
    assert error_of(empty_reason) == (422, "invalid_request")
    assert "reason" in empty_reason.json()["error"]["message"]
    job = await _job(api, job_id)
    assert job["state"] == "queued"
    events = await _events(api, job_id)
    assert not {"job.paused", "job.resumed", "job.cancelled"} & set(events)
