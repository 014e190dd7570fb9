"""Tenants and abuse, end to end: API keys, isolation between orgs (api, SSE, DLQ replay), store
URL safety (SSRF), rate limits, concurrent syncs and the audit trail.

The api runs under uvicorn (tests/integration/test_api.py's ``serving``), the tracker too when a
test follows progress; stores are the simulator; PostgreSQL and RabbitMQ are the real servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from httpx_sse import aconnect_sse

from services.api.app import JOB_PATH, SYNC_PATH
from services.fetcher.handlers import FetcherDeps, PageReader, handle_sync_requested
from shared import auth
from shared.auth import create_key, create_org
from shared.crypto import SecretBox
from shared.messages import CustomerBatch, FetchFailed, Message
from shared.settings import Settings
from shared.topology import Topology
from shared.woocommerce import RequestGate, StoreConfig, WooClient
from tests.factories import add_failed_lines, queue_store_sync
from tests.helpers import (
    Api,
    assert_nothing_written,
    error_of,
    park_like_the_syncer,
    serving_api,
    serving_tracker,
    start_body,
)
from tools.woosim.testing import SimHandle, running_simulator

WAIT_S = 10.0
WOOSYNC = [sys.executable, "-m", "woosync.cli"]


def job_url(job_id: object) -> str:
    return JOB_PATH.format(job_id=job_id)


async def started_job(api: Api, store: SimHandle, **options: Any) -> dict[str, Any]:
    response = await api.start(store, **options)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def action(name: str, org_id: UUID, job_id: object, **extra: Any) -> dict[str, Any]:
    body = {"action": name, "org_id": str(org_id), "job_id": str(job_id), **extra}
    if name == "force-done":
        body.setdefault("reason", "closing")
    return body


# --- API keys ----------------------------------------------------------------------------------


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WOOSYNC_ADMIN_DATABASE_URL": database_url}
    return subprocess.run(
        [*WOOSYNC, "key", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_key_commands_create_once_list_without_secrets_and_revoke(api: Api) -> None:
    dsn = api.settings.admin_database_url
    created = cli("create", str(api.org_id), "--name", "billing robot", database_url=dsn)
    assert created.returncode == 0, created.stderr
    printed = json.loads(created.stdout)
    key, key_id = printed["api_key"], UUID(printed["key_id"])
    assert key.startswith("wsk_") and len(key) >= 40
    assert (printed["org_id"], printed["name"]) == (str(api.org_id), "billing robot")
    assert printed["prefix"] == key[:10] and printed["revoked_at"] is None

    # Stored only as its hash: the key itself is in no row of any table.
    row = await api.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    for table in ("api_keys", "woo_sync_activity", "orgs"):
        for text in await api.rows(table):
            assert key not in text, table

    assert (await api.get(job_url(uuid4()), key=key)).status_code == 404  # accepted
    listed = cli("list", "--org", str(api.org_id), database_url=dsn)
    assert listed.returncode == 0, listed.stderr
    keys = {item["key_id"]: item for item in map(json.loads, listed.stdout.splitlines())}
    assert len(keys) == 2 and keys[str(key_id)]["last_used_at"] is not None
    assert key not in listed.stdout and "api_key" not in listed.stdout
    assert all(set(item) == set(printed) - {"api_key"} for item in keys.values())

    revoked = cli("revoke", str(key_id), database_url=dsn)
    assert revoked.returncode == 0, revoked.stderr
    revoked_at = json.loads(revoked.stdout)["revoked_at"]
    assert revoked_at is not None
    assert error_of(await api.get(job_url(uuid4()), key=key)) == (401, "unauthorized")
    assert (await api.get(job_url(uuid4()))).status_code == 404  # the org's other key still works
    again = cli("revoke", str(key_id), database_url=dsn)
    assert again.returncode == 0 and json.loads(again.stdout)["revoked_at"] == revoked_at

    missing = cli("revoke", str(uuid4()), database_url=dsn)
    assert missing.returncode == 1 and "no key" in missing.stderr
    orphan = cli("create", str(uuid4()), database_url=dsn)
    assert orphan.returncode == 1 and "no org" in orphan.stderr
    assert cli("create", str(api.org_id), "--name", "", database_url=dsn).returncode == 2

    audit = await api.pool.fetch(
        "SELECT event, details, at FROM woo_sync_activity WHERE details->>'key_id' = $1"
        " ORDER BY id",
        str(key_id),
    )
    assert [(r["event"], r["details"]["by"]) for r in audit] == [
        ("key.created", "cli"),
        ("key.revoked", "cli"),  # once: revoking a revoked key records nothing
    ]
    assert all(r["at"] is not None for r in audit)


async def test_every_route_but_health_needs_a_valid_key_and_refusals_look_alike(
    api: Api,
) -> None:
    revoked, revoked_key = await create_key(api.pool, api.org_id, "old")
    await auth.revoke_key(api.pool, revoked.id)
    bad_headers: dict[str, dict[str, str]] = {
        "missing": {},
        "empty": {"Authorization": ""},
        "no token": {"Authorization": "Bearer"},
        "other scheme": {"Authorization": f"Basic {api.key}"},
        "no scheme": {"Authorization": api.key},
        "not a key": {"Authorization": "Bearer not-a-key"},
        "unknown": {"Authorization": "Bearer wsk_" + "A" * 43},
        "altered": {"Authorization": f"Bearer {api.key[:-1]}{'B' if api.key[-1] != 'B' else 'C'}"},
        "revoked": {"Authorization": f"Bearer {revoked_key}"},
    }
    body = action("status", api.org_id, uuid4())
    answers: list[httpx.Response] = []
    for headers in bad_headers.values():
        answers.append(await api.client.post(SYNC_PATH, json=body, headers=headers))
        answers.append(await api.client.get(job_url(uuid4()), headers=headers))
        answers.append(await api.client.get("/openapi.json", headers=headers))
    assert {error_of(r) for r in answers} == {(401, "unauthorized")}
    assert len({r.content for r in answers}) == 1  # byte for byte the same answer
    assert {r.headers["www-authenticate"] for r in answers} == {"Bearer"}

    for path in ("/healthz", "/readyz"):
        assert (await api.client.get(path)).status_code == 200
    assert (await api.get("/openapi.json")).status_code == 200


class SpyPool:
    """A real pool that notes every query it runs, to compare the work of different refusals."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.calls: list[tuple[str, tuple[type, ...]]] = []

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.calls.append((query, tuple(type(a) for a in args)))
        return await self.pool.fetchrow(query, *args)


async def test_every_refusal_does_the_same_database_work(pool: asyncpg.Pool) -> None:
    org_id, key = await create_org(pool, "acme")
    revoked, revoked_key = await create_key(pool, org_id, "old")
    await auth.revoke_key(pool, revoked.id)
    refused = [None, "", "Basic x", "Bearer junk", "Bearer wsk_unknown", f"Bearer {revoked_key}"]
    work = []
    for header in refused:
        spy = SpyPool(pool)
        assert await auth.authenticate(spy, header) is None  # type: ignore[arg-type]
        work.append(spy.calls)
    # One indexed lookup by a 32-byte digest each time: no early return, no comparison in Python.
    assert all(calls == [(auth.AUTHENTICATE_KEY, (bytes,))] for calls in work), work
    last_used = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", revoked.id)
    assert last_used is None

    spy = SpyPool(pool)
    caller = await auth.authenticate(spy, f"Bearer {key}")  # type: ignore[arg-type]
    assert caller is not None and caller.org_id == org_id
    assert spy.calls == work[0]


async def test_a_key_in_use_writes_its_row_at_most_once_a_minute(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    """Issue 12, item 3: no database write per request. A write makes a new row version (its
    xmin changes), so an unchanged xmin across requests means none of them wrote the row."""
    org_id, key = await create_org(pool, "acme")
    version = "SELECT xmin::text AS xmin, last_used_at FROM api_keys WHERE org_id = $1"
    assert (await pool.fetchrow(version, org_id))["last_used_at"] is None

    assert await auth.authenticate(app_pool, f"Bearer {key}") is not None
    first = await pool.fetchrow(version, org_id)
    assert first["last_used_at"] is not None  # a first use is recorded at once
    for _ in range(20):
        caller = await auth.authenticate(app_pool, f"Bearer {key}")
        assert caller is not None and caller.org_id == org_id
    assert await pool.fetchrow(version, org_id) == first

    # A minute later the next request records its use again.
    await pool.execute(
        "UPDATE api_keys SET last_used_at = now() - interval '61 seconds' WHERE org_id = $1",
        org_id,
    )
    stale = await pool.fetchrow(version, org_id)
    assert await auth.authenticate(app_pool, f"Bearer {key}") is not None
    fresh = await pool.fetchrow(version, org_id)
    assert fresh["last_used_at"] > stale["last_used_at"] and fresh["xmin"] != stale["xmin"]


# --- isolation between orgs --------------------------------------------------------------------


async def test_another_orgs_jobs_are_404_and_its_org_id_is_403_for_every_action(
    api: Api, store: SimHandle
) -> None:
    job_id = UUID((await started_job(api, store))["job_id"])
    # A failed line with a payload: a retry by the wrong org must not send it again.
    await add_failed_lines(api.pool, job_id, api.org_id, {99: {"id": 99}})
    await api.drain(api.topology.fetcher_queue.name)
    before = await api.pool.fetchrow("SELECT * FROM woo_customer_sync_queue WHERE id = $1", job_id)
    audit_before = await api.pool.fetchval("SELECT count(*) FROM woo_sync_activity")
    other_org, other_key = await create_org(api.pool, "other")
    audit_before += 1  # the other org's first key

    for name in ("status", "retry", "force-done", "replay"):
        theirs = await api.post(action(name, other_org, job_id), key=other_key)
        unknown = await api.post(action(name, other_org, uuid4()), key=other_key)
        assert error_of(theirs) == (404, "job_not_found"), name
        assert theirs.content == unknown.content, name  # indistinguishable from no job at all
        forbidden = await api.post(action(name, api.org_id, job_id), key=other_key)
        assert error_of(forbidden) == (403, "forbidden"), name
    theirs = await api.get(job_url(job_id), key=other_key)
    unknown = await api.get(job_url(uuid4()), key=other_key)
    assert error_of(theirs) == (404, "job_not_found") and theirs.content == unknown.content
    forbidden_start = await api.post(start_body(api.org_id, store), key=other_key)
    assert error_of(forbidden_start) == (403, "forbidden")

    after = await api.pool.fetchrow("SELECT * FROM woo_customer_sync_queue WHERE id = $1", job_id)
    assert dict(after) == dict(before)
    line = await api.pool.fetchrow("SELECT state FROM woo_customer_sync_queue_line")
    assert line["state"] == "failed"
    assert await api.pool.fetchval("SELECT count(*) FROM woo_sync_activity") == audit_before
    assert await api.drain(api.topology.syncer_queue.name) == []
    assert await api.drain(api.topology.fetcher_queue.name) == []


async def test_the_same_store_in_two_orgs_is_two_connections(api: Api, store: SimHandle) -> None:
    mine = await started_job(api, store)
    other_org, other_key = await create_org(api.pool, "other")
    theirs = await api.post(start_body(other_org, store), key=other_key)
    # Not answered with the first org's open job: connections are per org.
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["job_id"] != mine["job_id"]
    owners = await api.pool.fetch("SELECT org_id FROM woo_connections ORDER BY created_at")
    assert [r["org_id"] for r in owners] == [api.org_id, other_org]


async def test_progress_stream_follows_only_the_jobs_of_the_token_or_key(
    api: Api, store: SimHandle
) -> None:
    mine = await started_job(api, store)
    sibling = UUID((await api.post(
        start_body(api.org_id, store) | {"config": start_body(api.org_id, store)["config"]
                                         | {"url": store.url.replace("127.0.0.1", "localhost")}}
    )).json()["job_id"])
    token = parse_qs(urlsplit(mine["progress_url"]).query)["token"][0]
    other_org, other_key = await create_org(api.pool, "other")
    revoked, revoked_key = await create_key(api.pool, api.org_id, "old")
    await auth.revoke_key(api.pool, revoked.id)

    async with serving_tracker(api.settings) as base, httpx.AsyncClient(timeout=WAIT_S) as client:
        def progress(job_id: object) -> str:
            return f"{base}/api/v1/integrations/sync/progress/{job_id}"

        # The token from the api's answer opens that job's stream.
        async with asyncio.timeout(WAIT_S), aconnect_sse(
            client, "GET", progress(mine["job_id"]), params={"token": token}
        ) as source:
            assert source.response.status_code == 200
            first = await anext(source.aiter_sse())
            assert (first.event, json.loads(first.data)["job_id"]) == ("progress", mine["job_id"])

        refused = [
            await client.get(progress(sibling), params={"token": token}),  # another job
            await client.get(progress(uuid4()), params={"token": token}),
            await client.get(progress(mine["job_id"]), params={"token": token[:-3] + "abc"}),
            await client.get(
                progress(mine["job_id"]), headers={"Authorization": f"Bearer {revoked_key}"}
            ),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401, 401]
        other = await client.get(
            progress(mine["job_id"]), headers={"Authorization": f"Bearer {other_key}"}
        )
        none = await client.get(
            progress(uuid4()), headers={"Authorization": f"Bearer {other_key}"}
        )
        assert (other.status_code, other.content) == (404, none.content)
    assert other_org != api.org_id


async def test_replay_moves_only_the_callers_parked_batches(api: Api, store: SimHandle) -> None:
    job = await started_job(api, store)
    job_id = UUID(job["job_id"])
    connection_id = await api.pool.fetchval("SELECT connection_id FROM woo_customer_sync_queue")
    parked = {"id": 1, "email": "a@example.com"}
    await park_like_the_syncer(
        api.settings,
        api.topology,
        CustomerBatch(
            job_id=job_id,
            org_id=api.org_id,
            connection_id=connection_id,
            page=1,
            customers=[parked],
        ),
    )
    # As the syncer does when it parks: the customer's line is failed and keeps it (the api's
    # replay reads the lines, not the shared parking queue).
    await add_failed_lines(api.pool, job_id, api.org_id, {1: parked}, page=1)
    other_org, other_key = await create_org(api.pool, "other")
    async with running_simulator(customers=2, seed=9) as other_store:
        other_job = (await api.post(start_body(other_org, other_store), key=other_key)).json()

    stolen = await api.post(action("replay", other_org, job_id), key=other_key)
    assert error_of(stolen) == (404, "job_not_found")
    own = await api.post(action("replay", other_org, other_job["job_id"]), key=other_key)
    assert own.status_code == 200, own.text
    assert own.json()["replayed"] == 0  # the other org's parked batch is not theirs to move

    replayed = await api.post(action("replay", api.org_id, job_id))
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["replayed"] == 1  # still parked after both of the other org's tries
    moved = await api.drain(api.topology.syncer_queue.name)
    assert [b["job_id"] for b in moved] == [str(job_id)]


# --- store URL safety (SSRF) -------------------------------------------------------------------


@asynccontextmanager
async def strict_api(settings: Settings, pool: asyncpg.Pool, topology: Topology) -> Any:
    """The api with production's URL rule: no private, loopback or link-local stores."""
    async with serving_api(settings.model_copy(update={"allow_private_urls": False}), pool,
                       topology) as served:
        yield served


async def test_start_refuses_internal_store_addresses(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology, store: SimHandle
) -> None:
    port = urlsplit(store.url).port
    async with strict_api(settings, pool, clean_broker) as api:
        for url in (
            store.url,  # the simulator itself, on 127.0.0.1
            f"http://localhost:{port}",
            f"http://2130706433:{port}",  # 127.0.0.1 spelled as one number
            f"http://[::ffff:127.0.0.1]:{port}",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1",
            "http://[::1]",
            "http://0.0.0.0",
        ):
            body = start_body(api.org_id, store)
            body["config"]["url"] = url
            response = await api.post(body)
            assert error_of(response) == (422, "store_url_not_allowed"), url
            assert response.json()["error"]["message"].startswith("config.url: ")
            assert store.consumer_secret not in response.text
        unresolvable = start_body(api.org_id, store)
        unresolvable["config"]["url"] = "https://no-such-store.invalid"
        assert error_of(await api.post(unresolvable)) == (422, "store_unreachable")
        await assert_nothing_written(api)
    assert (await store.stats())["requests"] == 0  # no request ever reached the store


async def test_fetcher_checks_the_address_again_before_crawling(
    pool: asyncpg.Pool, store: SimHandle
) -> None:
    """A URL that was fine when the job started can resolve elsewhere by the time it is read."""
    org_id, _ = await create_org(pool, "acme")
    box = SecretBox("test-secret-key")
    request = await queue_store_sync(
        pool, org_id, store, box, auth_mode="basic", batch_size=10, concurrency=1
    )
    published: list[Message] = []

    async def publish(message: Message) -> None:
        published.append(message)

    @asynccontextmanager
    async def open_client(
        config: StoreConfig, concurrency: int, gate: RequestGate | None = None
    ) -> AsyncIterator[PageReader]:
        async with WooClient(config, max_connections=concurrency) as client:
            yield client

    deps = FetcherDeps(pool=pool, secrets=box, open_client=open_client, publish=publish)
    await handle_sync_requested(request, deps)

    assert [type(m) for m in published] == [FetchFailed]
    assert "not public" in published[0].error  # type: ignore[attr-defined]
    assert (await store.stats())["requests"] == 0
    failed = await pool.fetchrow(
        "SELECT details FROM woo_sync_activity WHERE event = 'fetch.failed' AND job_id = $1",
        request.job_id,
    )
    assert "not public" in failed["details"]["error"]


async def test_a_store_redirect_is_not_followed(api: Api, store: SimHandle) -> None:
    """A store that answers with a redirect to an internal service gets a 422, and the internal
    service never sees a request (the WooCommerce client has follow_redirects=False)."""
    internal_hits: list[bytes] = []

    async def internal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        internal_hits.append(await reader.read(1024))
        writer.close()

    async def redirecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        target = f"http://127.0.0.1:{internal_port}/wp-json/wc/v3/customers"
        writer.write(
            f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    internal_server = await asyncio.start_server(internal, "127.0.0.1", 0)
    redirect_server = await asyncio.start_server(redirecting, "127.0.0.1", 0)
    internal_port = internal_server.sockets[0].getsockname()[1]
    redirect_port = redirect_server.sockets[0].getsockname()[1]
    async with internal_server, redirect_server:
        body = start_body(api.org_id, store)
        body["config"]["url"] = f"http://127.0.0.1:{redirect_port}"
        response = await api.post(body)
    assert error_of(response) == (422, "store_bad_response")
    assert "redirect" in response.json()["error"]["message"]
    assert internal_hits == []
    await assert_nothing_written(api)


# --- rate limit and concurrent syncs -------------------------------------------------------------


async def test_rate_limit_per_org_answers_429_with_retry_after(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 3})
    async with serving_api(limited, pool, clean_broker) as api:
        other_org, other_key = await create_org(pool, "other")
        answers = [await api.get(job_url(uuid4())) for _ in range(3)]
        assert [r.status_code for r in answers] == [404, 404, 404]
        refused = [
            await api.get(job_url(uuid4())),
            await api.post(action("status", api.org_id, uuid4())),
            await api.get("/openapi.json"),
        ]
        for response in refused:
            assert error_of(response) == (429, "rate_limited")
            assert response.headers["retry-after"] == "10"  # one token every 60 / 6 seconds
        # Another org has its own bucket; refusals without a valid key take no token.
        assert (await api.client.get(job_url(uuid4()))).status_code == 401
        assert (await api.get(job_url(uuid4()), key=other_key)).status_code == 404
        # Health checks are not limited.
        assert (await api.client.get("/healthz")).status_code == 200
    assert other_org != api.org_id


async def test_refused_keys_are_rate_limited_per_client_address(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology
) -> None:
    limited = settings.model_copy(
        update={"refused_key_limit_per_minute": 6, "refused_key_limit_burst": 3}
    )
    async with serving_api(limited, pool, clean_broker) as api:
        assert (await api.get(job_url(uuid4()))).status_code == 404  # a valid key takes none
        guesses = [
            await api.get(job_url(uuid4()), key="wsk_" + "A" * 43),
            await api.client.get(job_url(uuid4())),  # no key at all
            await api.get(job_url(uuid4()), key="not-even-a-key"),
        ]
        assert [error_of(r) for r in guesses] == [(401, "unauthorized")] * 3
        # The address has spent its refusals: now even a valid key waits, without a lookup.
        last_used_sql = "SELECT last_used_at FROM api_keys WHERE org_id = $1"
        last_used = await pool.fetchval(last_used_sql, api.org_id)
        for response in (
            await api.get(job_url(uuid4()), key="wsk_" + "B" * 43),
            await api.get(job_url(uuid4())),
        ):
            assert error_of(response) == (429, "rate_limited")
            assert response.headers["retry-after"] == "10"
        assert await pool.fetchval(last_used_sql, api.org_id) == last_used
        assert (await api.client.get("/healthz")).status_code == 200  # health is never limited


async def test_one_open_job_per_connection_even_for_simultaneous_starts(
    api: Api, store: SimHandle
) -> None:
    first, second = await asyncio.gather(api.start(store), api.start(store))
    assert sorted([first.status_code, second.status_code]) == [200, 202]
    assert first.json()["job_id"] == second.json()["job_id"]
    assert await api.pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 1
    published = await api.drain(api.topology.fetcher_queue.name)
    assert len(published) == 1
    answered = await api.pool.fetchrow(
        "SELECT details FROM woo_sync_activity WHERE event = 'job.start_answered_by_open_job'"
    )
    assert answered["details"]["by"] == "api"

    # The database refuses a second job reading the same store, whoever tries.
    job = await api.pool.fetchrow("SELECT * FROM woo_customer_sync_queue")
    with pytest.raises(asyncpg.UniqueViolationError):
        await api.pool.execute(
            """INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, batch_size,
                                                    concurrency)
               VALUES ($1, $2, $3, 'queued', 10, 1)""",
            uuid4(),
            api.org_id,
            job["connection_id"],
        )


async def test_cap_on_open_syncs_per_org_and_busy_connection_on_retry(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology, store: SimHandle
) -> None:
    capped = settings.model_copy(update={"max_concurrent_syncs_per_org": 1})
    async with serving_api(capped, pool, clean_broker) as api:
        first = await started_job(api, store)
        elsewhere = start_body(api.org_id, store)
        elsewhere["config"]["url"] = store.url.replace("127.0.0.1", "localhost")  # 2nd connection
        refused = await api.post(elsewhere)
        assert error_of(refused) == (429, "too_many_syncs")
        assert int(refused.headers["retry-after"]) > 0
        assert await pool.fetchval("SELECT count(*) FROM woo_customer_sync_queue") == 1

        # The first job fails before reading every page; a new one starts on the same store.
        await pool.execute(
            "UPDATE woo_customer_sync_queue SET state = 'failed', finished_at = now()"
        )
        second = await started_job(api, store)
        assert second["job_id"] != first["job_id"]
        # Retrying the first would read the store while the second does: refused, unchanged.
        busy = await api.post(action("retry", api.org_id, first["job_id"]))
        assert error_of(busy) == (409, "connection_busy")
        assert second["job_id"] in busy.json()["error"]["message"]
        assert await pool.fetchval(
            "SELECT state FROM woo_customer_sync_queue WHERE id = $1", UUID(first["job_id"])
        ) == "failed"

        await api.post(action("force-done", api.org_id, second["job_id"]))
        resumed = await api.post(action("retry", api.org_id, first["job_id"]))
        assert resumed.status_code == 202 and resumed.json()["fetch_resumed"] is True
        # With the first job open again the cap is reached once more.
        assert error_of(await api.post(elsewhere)) == (429, "too_many_syncs")


# --- audit trail ---------------------------------------------------------------------------------


async def test_operator_actions_are_audited_with_the_key_that_asked(
    api: Api, store: SimHandle
) -> None:
    job_id = UUID((await started_job(api, store))["job_id"])
    first_key = await api.pool.fetchval("SELECT id FROM api_keys WHERE org_id = $1", api.org_id)
    second, second_key = await create_key(api.pool, api.org_id, "operator")
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'failed', fetch_done_at = now() WHERE id = $1",
        job_id,
    )
    await add_failed_lines(api.pool, job_id, api.org_id, {7: {"id": 7}})
    retried = await api.post(action("retry", api.org_id, job_id), key=second_key)
    assert retried.status_code == 202, retried.text
    forced = await api.post(action("force-done", api.org_id, job_id, reason="test"))
    assert forced.status_code == 200, forced.text
    connection_id = await api.pool.fetchval("SELECT connection_id FROM woo_customer_sync_queue")
    batch = CustomerBatch(
        job_id=job_id, org_id=api.org_id, connection_id=connection_id, page=None,
        customers=[{"id": 7}],
    )
    await park_like_the_syncer(api.settings, api.topology, batch)
    replayed = await api.post(action("replay", api.org_id, job_id), key=second_key)
    assert replayed.status_code == 202, replayed.text

    rows = await api.pool.fetch(
        "SELECT event, details, at FROM woo_sync_activity WHERE job_id = $1 ORDER BY id", job_id
    )
    who = [(r["event"], r["details"].get("api_key_id")) for r in rows]
    assert who == [
        ("job.created", str(first_key)),
        ("job.queued", str(first_key)),
        ("job.retried", str(second.id)),
        ("job.forced_done", str(first_key)),
        ("dlq.replayed", str(second.id)),
    ]
    assert all(r["details"]["by"] == "api" and r["at"] is not None for r in rows)
    retried_row = rows[2]["details"]
    assert (retried_row["previous_state"], retried_row["state"]) == ("failed", "processing")
    assert rows[3]["details"]["state"] == "done"
