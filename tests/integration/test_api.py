"""The api served by uvicorn on a free port, with real PostgreSQL, RabbitMQ and a simulated store.

Each test gets its own database and broker namespace (see tests/conftest.py). Messages the api
published are read back from the real queues with aio-pika.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import httpx
import pytest

from services.api.app import SYNC_PATH
from shared import messages as m
from shared.auth import create_org
from shared.broker import make_broker
from shared.crypto import ProgressTokens, SecretBox
from shared.settings import Settings
from shared.topology import Topology, declare_topology
from shared.woocommerce import StoreConfig
from tests.conftest import AMQP_URL
from tests.helpers import (
    API_TABLES,
    Api,
    assert_nothing_written,
    error_of,
    serving_api,
    start_body,
)
from tools.woosim.testing import running_simulator

WAIT_S = 10.0


# --- health -----------------------------------------------------------------------------------


async def test_health_and_readiness(api: Api) -> None:
    health = await api.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "broker": "ok"}


# --- start ------------------------------------------------------------------------------------


async def test_start_stores_the_job_and_publishes_sync_requested(api: Api, store: Any) -> None:
    response = await api.start(store)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"job_id", "state", "status_url", "progress_url"}
    job_id = UUID(body["job_id"])
    assert body["state"] == "queued"
    assert body["status_url"] == (f"{api.url}/api/v1/integrations/woocommerce/sync/jobs/{job_id}")
    progress = urlsplit(body["progress_url"])
    assert f"{progress.scheme}://{progress.netloc}" == api.settings.tracker_base()
    assert progress.path == f"/api/v1/integrations/sync/progress/{job_id}"
    token = parse_qs(progress.query)["token"][0]
    tokens = ProgressTokens("test-secret-key", api.settings.progress_token_ttl_s)
    assert tokens.verify(token, job_id) == api.org_id

    job = await api.pool.fetchrow("SELECT * FROM woo_customer_sync_queue WHERE id = $1", job_id)
    assert job["org_id"] == api.org_id
    assert job["state"] == "queued" and job["queued_at"] is not None
    # No concurrency option: the fetcher adapts it to the store.
    assert (job["batch_size"], job["concurrency"]) == (100, None)
    assert job["store_total"] == 5

    connection = await api.pool.fetchrow("SELECT * FROM woo_connections")
    assert connection["id"] == job["connection_id"]
    assert connection["store_url"] == store.url.rstrip("/")
    assert connection["auth_mode"] == "oauth1" and connection["verify_tls"] is True
    box = SecretBox("test-secret-key")
    assert box.decrypt(connection["consumer_secret_enc"]) == store.consumer_secret
    for table in API_TABLES:
        for row in await api.rows(table):
            assert store.consumer_secret not in row, table

    created, queued = await api.pool.fetch(
        "SELECT * FROM woo_sync_activity WHERE job_id = $1 ORDER BY id", job_id
    )
    assert (created["event"], queued["event"]) == ("job.created", "job.queued")
    assert created["details"]["connection_id"] == str(connection["id"])
    key_id = await api.pool.fetchval("SELECT id FROM api_keys WHERE org_id = $1", api.org_id)
    for row in (created, queued):
        assert row["details"]["by"] == "api"
        assert row["details"]["api_key_id"] == str(key_id)

    published = await api.drain(api.topology.fetcher_queue.name)
    assert len(published) == 1
    assert store.consumer_secret not in json.dumps(published[0])
    message = m.SyncRequested.model_validate(published[0])
    assert (message.job_id, message.org_id) == (job_id, api.org_id)
    assert message.connection_id == connection["id"] and message.reason == "start"


async def test_start_applies_options(api: Api, store: Any) -> None:
    response = await api.start(store, batch_size=7, concurrency=2)
    assert response.status_code == 202, response.text
    job = await api.pool.fetchrow("SELECT batch_size, concurrency FROM woo_customer_sync_queue")
    assert (job["batch_size"], job["concurrency"]) == (7, 2)


async def test_idempotency_key_returns_the_same_job_and_publishes_once(
    api: Api, store: Any
) -> None:
    first = await api.start(store, idempotency_key="order-42")
    second = await api.start(store, idempotency_key="order-42")
    assert first.status_code == second.status_code == 202
    assert second.json()["job_id"] == first.json()["job_id"]
    assert second.json()["state"] == "queued"
    assert len(await api.rows("woo_customer_sync_queue")) == 1
    assert len(await api.drain(api.topology.fetcher_queue.name)) == 1

    # A new key for the same store while its job is open: the open job, not a second one.
    other = await api.start(store, idempotency_key="order-43")
    assert other.status_code == 200 and other.json()["job_id"] == first.json()["job_id"]
    assert len(await api.rows("woo_customer_sync_queue")) == 1
    assert len(await api.rows("woo_connections")) == 1  # same store and key: one connection

    await api.pool.execute("UPDATE woo_customer_sync_queue SET state = 'done'")
    later = await api.start(store, idempotency_key="order-43")
    assert later.status_code == 202 and later.json()["job_id"] != first.json()["job_id"]


async def test_broker_failure_leaves_a_draft_that_the_same_key_publishes_again(
    api: Api, store: Any
) -> None:
    # Without the exchange the publish cannot be confirmed.
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await (await connection.channel()).exchange_delete(api.topology.namespace)

    failed = await api.start(store, idempotency_key="k1")
    assert error_of(failed) == (503, "broker_unavailable")
    job = await api.pool.fetchrow("SELECT id, state FROM woo_customer_sync_queue")
    assert job["state"] == "draft"

    broker = make_broker(api.settings)
    await broker.connect()
    try:
        await declare_topology(broker, api.topology)
    finally:
        await broker.stop()
    # The api's channel reopens on its own after the broker closed it; bounded wait for that.
    async with asyncio.timeout(WAIT_S):
        while (again := await api.start(store, idempotency_key="k1")).status_code == 503:
            await asyncio.sleep(0.2)
    assert again.status_code == 202, again.text
    assert again.json()["job_id"] == str(job["id"]) and again.json()["state"] == "queued"
    published = await api.drain(api.topology.fetcher_queue.name)
    assert [p["job_id"] for p in published] == [str(job["id"])]


# --- store checks -----------------------------------------------------------------------------


async def test_refused_credentials_are_422_without_the_secret(api: Api) -> None:
    async with running_simulator(customers=3, seed=2) as sim:
        body = start_body(api.org_id, sim)
        wrong = "cs_" + "0" * 40
        body["config"]["consumer_secret"] = wrong
        response = await api.post(body)
    assert error_of(response) == (422, "store_credentials_refused")
    assert wrong not in response.text and sim.consumer_secret not in response.text
    await assert_nothing_written(api)


async def test_unreachable_store_is_422(api: Api, store: Any) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    body = start_body(api.org_id, store)
    body["config"]["url"] = f"http://127.0.0.1:{port}"
    response = await api.post(body)
    assert error_of(response) == (422, "store_unreachable")
    assert store.consumer_secret not in response.text
    assert "Traceback" not in response.text
    await assert_nothing_written(api)


# --- request errors ---------------------------------------------------------------------------


async def test_bad_keys_are_401_with_one_message(api: Api) -> None:
    revoked_org, revoked_key = await create_org(api.pool, "gone")
    await api.pool.execute("UPDATE api_keys SET revoked_at = now() WHERE org_id = $1", revoked_org)
    body = {"action": "status", "org_id": str(api.org_id), "job_id": str(uuid4())}
    answers = [
        await api.client.post(SYNC_PATH, json=body),
        await api.client.post(SYNC_PATH, json=body, headers={"Authorization": "Bearer wsk_nope"}),
        await api.client.post(SYNC_PATH, json=body, headers={"Authorization": "Basic abc"}),
        await api.client.post(SYNC_PATH, json=body, headers={"Authorization": api.key}),
        await api.post(body | {"org_id": str(revoked_org)}, key=revoked_key),
        await api.client.get(f"/api/v1/integrations/woocommerce/sync/jobs/{uuid4()}"),
    ]
    assert {error_of(r) for r in answers} == {(401, "unauthorized")}
    assert len({r.json()["error"]["message"] for r in answers}) == 1


async def test_malformed_requests_are_refused_and_change_nothing(api: Api, store: Any) -> None:
    auth = {"Authorization": f"Bearer {api.key}"}
    json_type = auth | {"Content-Type": "application/json"}
    good = start_body(api.org_id, store)

    async def raw(content: Any, headers: dict[str, str]) -> httpx.Response:
        return await api.client.post(SYNC_PATH, content=content, headers=headers)

    async def chunked_megabytes() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (512 * 1024)

    cases: list[tuple[httpx.Response, tuple[int, str]]] = [
        (
            await raw(json.dumps(good), auth | {"Content-Type": "text/plain"}),
            (415, "unsupported_media_type"),
        ),
        (await raw(json.dumps(good), auth), (415, "unsupported_media_type")),
        (await raw(b"{" + b" " * (1024 * 1024) + b"}", json_type), (413, "payload_too_large")),
        (await raw(chunked_megabytes(), json_type), (413, "payload_too_large")),
        (await raw(b'{"action": "start",', json_type), (400, "invalid_json")),
        (await raw(b"", json_type), (400, "invalid_json")),
        (await raw(b'{"a": NaN}', json_type), (400, "invalid_json")),
        (await raw(b"\xff\xfe", json_type), (400, "invalid_json")),
        (await raw(b"[1, 2]", json_type), (400, "invalid_body")),
        (await api.post({"org_id": str(api.org_id)}), (400, "unknown_action")),
        (await api.post(good | {"action": "delete"}), (400, "unknown_action")),
        (await api.post(good | {"action": 7}), (400, "unknown_action")),
        (await api.post(good | {"org_id": "acme"}), (422, "invalid_request")),
        (await api.post(good | {"config": {"url": store.url}}), (422, "invalid_request")),
        (await api.post(good | {"unexpected": 1}), (422, "invalid_request")),
        (await api.post(good | {"org_id": str(uuid4())}), (403, "forbidden")),
    ]
    for response, expected in cases:
        assert error_of(response) == expected, response.text
        assert "Traceback" not in response.text

    unknown = cases[10][0].json()["error"]["message"]
    assert all(name in unknown for name in ("start", "status", "retry", "force-done"))
    assert cases[12][0].json()["error"]["message"] == "org_id: invalid UUID"
    missing = cases[13][0].json()["error"]["message"]
    assert "config.consumer_key: field required" in missing
    assert "config.consumer_secret: field required" in missing

    for bad_config in (
        {"url": "ftp://shop.example"},
        {"url": store.url + "/?page=1"},
        {"url": "http://user:pw@127.0.0.1"},
        {"auth": "digest"},
        {"verify_tls": "yes"},
    ):
        body = good | {"config": good["config"] | bad_config}
        response = await api.post(body)
        assert error_of(response) == (422, "invalid_request"), bad_config
        assert response.json()["error"]["message"].startswith("config.")
        assert store.consumer_secret not in response.text
    for options, field in [
        ({"batch_size": 0}, "options.batch_size"),
        ({"batch_size": 101}, "options.batch_size"),
        ({"batch_size": 2.5}, "options.batch_size"),
        ({"concurrency": 17}, "options.concurrency"),
        ({"concurrency": "4"}, "options.concurrency"),
        ({"idempotency_key": ""}, "options.idempotency_key"),
        ({"colour": "blue"}, "options.colour"),
    ]:
        response = await api.post(good | {"options": options})
        assert error_of(response) == (422, "invalid_request"), options
        assert response.json()["error"]["message"].startswith(f"{field}: "), response.text
    for name in ("status", "retry", "force-done", "replay"):
        body = {"action": name, "org_id": str(api.org_id), "job_id": "job-1", "reason": "r"}
        if name != "force-done":
            del body["reason"]
        response = await api.post(body)
        assert error_of(response) == (422, "invalid_request"), name
        assert response.json()["error"]["message"] == "job_id: invalid UUID", name

    too_long = good | {"config": good["config"] | {"consumer_secret": "cs_" + "9" * 300}}
    response = await api.post(too_long)
    assert error_of(response) == (422, "invalid_request")
    assert "9" * 300 not in response.text

    await assert_nothing_written(api)
    assert (await api.pool.fetchval("SELECT count(*) FROM orgs")) == 1


async def test_unexpected_errors_are_a_bare_500_and_logged_redacted(
    settings: Settings,
    pool: asyncpg.Pool,
    clean_broker: Topology,
    store: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenClient:
        """A store client with a bug whose text carries the secret."""

        def __init__(self, config: StoreConfig) -> None:
            self.secret = config.consumer_secret.get_secret_value()

        async def __aenter__(self) -> BrokenClient:
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            return None

        async def check_connection(self) -> int:
            raise RuntimeError(f"GET /customers?consumer_secret={self.secret} exploded")

    async with serving_api(settings, pool, clean_broker, store_client=BrokenClient) as api:
        with caplog.at_level(logging.ERROR, logger="woosync.api"):
            response = await api.start(store)
            assert error_of(response) == (500, "internal_error")
            assert "RuntimeError" not in response.text and "Traceback" not in response.text
            assert store.consumer_secret not in response.text
            await assert_nothing_written(api)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged and "Traceback" in logged
    assert store.consumer_secret not in logged


async def test_readiness_and_start_report_a_lost_broker(api: Api, store: Any) -> None:
    await api.app.state.deps.broker.stop()
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "database": "ok", "broker": "unavailable"}
    assert error_of(await api.start(store)) == (503, "broker_unavailable")
    assert await api.pool.fetchval("SELECT state FROM woo_customer_sync_queue") == "draft"


async def test_unknown_routes_and_methods_use_the_envelope(api: Api) -> None:
    assert error_of(await api.client.get("/nope")) == (404, "not_found")
    assert error_of(await api.client.get(SYNC_PATH)) == (405, "method_not_allowed")


# --- status -----------------------------------------------------------------------------------


async def test_status_action_and_status_url(api: Api, store: Any) -> None:
    started = (await api.start(store)).json()
    job_id = started["job_id"]
    status = await api.post({"action": "status", "org_id": str(api.org_id), "job_id": job_id})
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["job_id"] == job_id and body["state"] == "queued"
    assert (body["total"], body["done"], body["failed"]) == (5, 0, 0)
    assert (body["pending"], body["percent"], body["fetch_complete"]) == (5, 0.0, False)
    assert body["started_at"] is None and body["finished_at"] is None
    assert body["last_error"] is None and body["status_url"] == started["status_url"]
    assert body["progress_url"].startswith(api.settings.tracker_base())

    by_url = await api.get(urlsplit(started["status_url"]).path)
    assert by_url.status_code == 200
    assert {k: v for k, v in by_url.json().items() if k != "progress_url"} == {
        k: v for k, v in body.items() if k != "progress_url"
    }


async def test_other_orgs_and_unknown_jobs_are_404(api: Api, store: Any) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    other_org, other_key = await create_org(api.pool, "other")
    mine = {"org_id": str(api.org_id), "job_id": job_id}
    theirs = {"org_id": str(other_org), "job_id": job_id}
    answers = [
        await api.post({"action": "status", **theirs}, key=other_key),
        await api.post({"action": "retry", **theirs}, key=other_key),
        await api.post({"action": "force-done", "reason": "x", **theirs}, key=other_key),
        await api.get(f"/api/v1/integrations/woocommerce/sync/jobs/{job_id}", key=other_key),
        await api.post({"action": "status", "org_id": str(api.org_id), "job_id": str(uuid4())}),
        await api.get(f"/api/v1/integrations/woocommerce/sync/jobs/{uuid4()}"),
    ]
    assert {error_of(r) for r in answers} == {(404, "job_not_found")}
    assert len({r.json()["error"]["message"] for r in answers}) == 1
    not_an_id = await api.get("/api/v1/integrations/woocommerce/sync/jobs/not-a-uuid")
    assert error_of(not_an_id) == (422, "invalid_request")
    assert not_an_id.json()["error"]["message"] == "job_id: invalid UUID"
    # Naming another org's id with one's own key is refused before any lookup.
    assert error_of(await api.post({"action": "status", **mine}, key=other_key)) == (
        403,
        "forbidden",
    )
    state = await api.pool.fetchval("SELECT state FROM woo_customer_sync_queue")
    assert state == "queued"


# --- retry and force-done ---------------------------------------------------------------------


async def _settle_job(
    api: Api, job_id: str, *, state: str, fetched: bool, lines: list[tuple[int, str, Any]]
) -> None:
    """Put a started job where the fetcher, syncer and tracker would have left it."""
    await api.pool.execute(
        """UPDATE woo_customer_sync_queue
           SET state = $2, fetch_done_at = CASE WHEN $3 THEN now() END,
               finished_at = CASE WHEN $2 IN ('done', 'failed') THEN now() END,
               last_error = CASE WHEN $2 = 'failed' THEN 'store said no' END,
               total = $4,
               done_count = $5,
               failed_count = $6
           WHERE id = $1""",
        UUID(job_id),
        state,
        fetched,
        len(lines),
        sum(1 for _, s, _ in lines if s == "done"),
        sum(1 for _, s, _ in lines if s == "failed"),
    )
    await api.pool.executemany(
        """INSERT INTO woo_customer_sync_queue_line
               (job_id, woo_id, org_id, state, page, attempts, last_error, payload)
           VALUES ($1, $2, $3, $4, 1, CASE WHEN $4 = 'failed' THEN 4 ELSE 1 END,
                   CASE WHEN $4 = 'failed' THEN 'bad email' END, $5)""",
        [(UUID(job_id), woo_id, api.org_id, s, payload) for woo_id, s, payload in lines],
    )
    await api.drain(api.topology.fetcher_queue.name)


async def test_retry_republishes_the_payloads_of_failed_lines(api: Api, store: Any) -> None:
    job_id = (await api.start(store, batch_size=2)).json()["job_id"]
    failed = [
        {"id": n, "email": f"c{n}@example.com", "billing": {"city": "Åre"}} for n in (3, 5, 9)
    ]
    await _settle_job(
        api,
        job_id,
        state="failed",
        fetched=True,
        lines=[(1, "done", None), (2, "failed", None)] + [(c["id"], "failed", c) for c in failed],
    )
    body = {"action": "retry", "org_id": str(api.org_id), "job_id": job_id}
    response = await api.post(body)
    assert response.status_code == 202, response.text
    result = response.json()
    assert (result["requeued"], result["fetch_resumed"]) == (3, False)
    assert result["state"] == "processing"
    assert (result["done"], result["failed"], result["finished_at"]) == (1, 1, None)
    assert result["last_error"] is None

    lines = {
        r["woo_id"]: r for r in await api.pool.fetch("SELECT * FROM woo_customer_sync_queue_line")
    }
    for woo_id in (3, 5, 9):
        assert (lines[woo_id]["state"], lines[woo_id]["attempts"]) == ("pending", 0)
        assert lines[woo_id]["last_error"] is None
    assert lines[2]["state"] == "failed"  # nothing to resend without its payload

    batches = [
        m.CustomerBatch.model_validate(b) for b in await api.drain(api.topology.syncer_queue.name)
    ]
    assert [len(b.customers) for b in batches] == [2, 1]
    assert [c for b in batches for c in b.customers] == failed
    assert all(b.page is None and str(b.job_id) == job_id for b in batches)
    assert await api.drain(api.topology.fetcher_queue.name) == []
    events = await api.pool.fetch("SELECT event, details FROM woo_sync_activity ORDER BY id")
    assert events[-1]["event"] == "job.retried" and events[-1]["details"]["requeued"] == 3


async def test_retry_resumes_an_unfinished_fetch(api: Api, store: Any) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    await _settle_job(api, job_id, state="failed", fetched=False, lines=[(1, "done", None)])
    response = await api.post({"action": "retry", "org_id": str(api.org_id), "job_id": job_id})
    assert response.status_code == 202, response.text
    assert (response.json()["fetch_resumed"], response.json()["state"]) == (True, "queued")
    published = [
        m.SyncRequested.model_validate(b) for b in await api.drain(api.topology.fetcher_queue.name)
    ]
    assert [(str(p.job_id), p.reason) for p in published] == [(job_id, "retry")]


async def test_retry_of_a_running_job_with_nothing_failed_is_a_no_op(api: Api, store: Any) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    await api.drain(api.topology.fetcher_queue.name)
    response = await api.post({"action": "retry", "org_id": str(api.org_id), "job_id": job_id})
    assert response.status_code == 200, response.text
    assert (response.json()["requeued"], response.json()["fetch_resumed"]) == (0, False)
    assert response.json()["state"] == "queued"
    assert await api.drain(api.topology.fetcher_queue.name) == []
    assert await api.drain(api.topology.syncer_queue.name) == []


async def test_force_done_closes_a_job_once(api: Api, store: Any) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    body = {
        "action": "force-done",
        "org_id": str(api.org_id),
        "job_id": job_id,
        "reason": "store closed for good",
    }
    response = await api.post(body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["state"] == "done" and result["finished_at"] is not None
    assert result["last_error"] == "forced done: store closed for good"
    event = await api.pool.fetchrow(
        "SELECT details FROM woo_sync_activity WHERE event = 'job.forced_done'"
    )
    assert event["details"]["reason"] == "store closed for good"
    assert event["details"]["previous_state"] == "queued"

    assert error_of(await api.post(body)) == (409, "job_final")
    assert error_of(await api.post(body | {"reason": ""})) == (422, "invalid_request")
