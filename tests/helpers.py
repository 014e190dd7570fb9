"""Helpers the tests share that are not database rows (see factories.py): waiting on a
condition, ports and servers, the services in-process, the environment of a service run as its
own process, the ``woosync`` command, the queues.

Test modules import from here, from factories.py and from tests/e2e's harness modules, never
from one another (tests/unit/test_test_layout.py holds them to that)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette

from services.api.app import SYNC_PATH
from services.api.app import build_app as build_api
from services.api.deps import StoreClientFactory
from services.fetcher.handlers import FetcherDeps, PageReader
from services.syncer.app import build_app as build_syncer
from services.tracker.app import build_app as build_tracker
from shared.auth import create_org
from shared.broker import make_broker, publish_to_queue
from shared.crypto import ProgressTokens, SecretBox
from shared.messages import CustomerBatch, Message, SyncRequested
from shared.settings import Settings
from shared.storelimit import StoreLimits
from shared.topology import PARKED_ATTEMPTS_HEADER, PARKED_ERROR_HEADER, Topology
from shared.woocommerce import RequestGate, RetryPolicy, StoreConfig, WooClient
from tests.conftest import AMQP_URL
from tests.factories import Job, make_org, queue_store_sync
from tools.woosim.testing import SimHandle


async def wait_until(
    check: Callable[[], Awaitable[Any] | Any],
    what: str,
    timeout_s: float = 60.0,
    every_s: float = 0.05,
) -> Any:
    """Poll ``check`` (a function, or one returning an awaitable) until it gives something
    truthy, and return that; fail naming ``what`` after ``timeout_s``.

    To show that something did NOT happen, wait on a positive sign that
    the system has gone past the point where it would have (a later event, a queue drained, a
    count settled), then assert it is absent, rather than sleeping for a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s (last: {value!r})")
        await asyncio.sleep(every_s)


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now, for a process that binds it itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1: handed to uvicorn, no one can take the port
    between choosing and serving it. TCP named and Nagle off, as tools.woosim.server does: with
    protocol 0 asyncio leaves Nagle on, and each kept-alive request waited 44 ms for an ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def uvicorn_serving(
    config: uvicorn.Config, sock: socket.socket, *, failure: str, wait_s: float
) -> AsyncIterator[None]:
    """Serve ``config``'s app on ``sock`` from start-up (``failure`` if it ends before) until the
    block ends; then shut it down and close ``sock``."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(wait_s):
            while not server.started:
                assert not task.done(), failure
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, wait_s)
        sock.close()


@asynccontextmanager
async def running_syncer(settings: Settings, wait_s: float = 20.0) -> AsyncIterator[None]:
    """The syncer app consuming in this process until the block ends."""
    app = build_syncer(settings)
    await asyncio.wait_for(app.start(), wait_s)
    try:
        yield
    finally:
        await asyncio.wait_for(app.stop(), wait_s)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment plus the test's database, broker namespace and retry tiers,
    for a service or the ``woosync`` command run as a process of its own."""
    return {
        **os.environ,
        "WOOSYNC_DATABASE_URL": settings.database_url,
        "WOOSYNC_AMQP_URL": settings.amqp_url,
        "WOOSYNC_NAMESPACE": settings.namespace,
        "WOOSYNC_RETRY_DELAYS_MS": json.dumps(settings.retry_delays_ms),
        # A consumer process's HTTP port: a free one, as tests run side by side.
        "WOOSYNC_FETCHER_PORT": "0",
        "WOOSYNC_SYNCER_PORT": "0",
        **extra,
    }


async def park_like_the_syncer(
    settings: Settings, topology: Topology, batch: CustomerBatch
) -> None:
    """Put a batch in the syncer's parking queue exactly as the syncer parks one."""
    broker = make_broker(settings)
    await broker.connect()
    try:
        await publish_to_queue(
            broker,
            topology.parking(topology.syncer_queue).name,
            batch,
            headers={PARKED_ATTEMPTS_HEADER: 4, PARKED_ERROR_HEADER: "customer: refused"},
        )
    finally:
        await broker.stop()


# --- the api and the tracker, served in-process ---------------------------------------------

SERVE_WAIT_S = 10.0
# What the api writes to: a refused request must leave every one of them as it was.
API_TABLES = (
    "woo_connections",
    "woo_customer_sync_queue",
    "woo_customer_sync_queue_line",
    "woo_sync_activity",
)


@dataclass
class Api:
    """The api served on a port, with a client and one org's key."""

    url: str
    client: httpx.AsyncClient
    settings: Settings
    pool: asyncpg.Pool
    topology: Topology
    org_id: UUID
    key: str
    app: Starlette

    async def post(self, body: Any, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"} | kwargs.pop("headers", {})
        return await self.client.post(SYNC_PATH, json=body, headers=headers, **kwargs)

    async def get(self, path: str, *, key: str | None = None) -> httpx.Response:
        return await self.client.get(path, headers={"Authorization": f"Bearer {key or self.key}"})

    async def start(self, store: Any, **options: Any) -> httpx.Response:
        return await self.post(start_body(self.org_id, store, **options))

    async def drain(self, queue: str) -> list[dict[str, Any]]:
        """Every message now in ``queue``, taken off it, as decoded JSON."""
        connection = await aio_pika.connect(AMQP_URL)
        bodies = []
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            while (message := await declared.get(no_ack=True, fail=False)) is not None:
                bodies.append(json.loads(message.body))
        return bodies

    async def rows(self, table: str, where: str = "true") -> list[str]:
        """Every row of ``table`` as JSON text, to search for values that must not be there."""
        query = f"SELECT row_to_json(t)::text FROM {table} t WHERE {where}"
        return [r[0] for r in await self.pool.fetch(query)]


def start_body(org_id: UUID, store: Any, **options: Any) -> dict[str, Any]:
    """The api's ``start`` request for a simulated ``store``."""
    body: dict[str, Any] = {
        "action": "start",
        "org_id": str(org_id),
        "config": {
            "url": store.url + "/",
            "consumer_key": store.consumer_key,
            "consumer_secret": store.consumer_secret,
            "auth": "oauth1",
        },
    }
    if options:
        body["options"] = options
    return body


@asynccontextmanager
async def serving_api(
    settings: Settings,
    pool: asyncpg.Pool,
    topology: Topology,
    store_client: StoreClientFactory | None = None,
) -> AsyncIterator[Api]:
    """The api under uvicorn on a free port, with one org and its key."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"api_port": port})
    app = build_api(settings, store_client=store_client)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    async with uvicorn_serving(config, sock, failure="the api did not start", wait_s=SERVE_WAIT_S):
        org_id, key = await create_org(pool, "acme")
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=SERVE_WAIT_S) as client:
            yield Api(url, client, settings, pool, topology, org_id, key, app)


async def assert_nothing_written(api: Api) -> None:
    for table in API_TABLES:
        # The org's first key was created (and audited) before the test began.
        where = "event <> 'key.created'" if table == "woo_sync_activity" else "true"
        assert await api.rows(table, where) == [], table
    assert await api.drain(api.topology.fetcher_queue.name) == []


def error_of(response: httpx.Response) -> tuple[int, str]:
    """The status and error code of an error envelope, after checking its shape."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


@asynccontextmanager
async def serving_tracker(settings: Settings) -> AsyncIterator[str]:
    """The tracker app under uvicorn on a free port; yields its base URL."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_tracker(settings), log_config=None, lifespan="on", timeout_graceful_shutdown=2
    )
    failure = "the tracker failed to start"
    async with uvicorn_serving(config, sock, failure=failure, wait_s=SERVE_WAIT_S):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def running_tracker(settings: Settings, wait_s: float = 20.0) -> AsyncIterator[None]:
    """The tracker's whole lifespan (consumer and recompute loop), without serving HTTP."""
    app = build_tracker(settings)
    async with asyncio.timeout(wait_s):
        context = app.router.lifespan_context(app)
        await context.__aenter__()
    try:
        yield
    finally:
        async with asyncio.timeout(wait_s):
            await context.__aexit__(None, None, None)


def tokens_for(settings: Settings) -> ProgressTokens:
    """The tracker's progress tokens under ``settings``' key."""
    return ProgressTokens(settings.secret_key.get_secret_value(), settings.progress_token_ttl_s)


# --- the fetcher's handler, in-process ------------------------------------------------------

FETCHER_SECRETS = SecretBox("test-secret-key")
FAST_RETRIES = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05, budget_s=5)


async def queue_new_org_sync(
    pool: asyncpg.Pool, sim: Any, *, batch_size: int = 100, concurrency: int | None = 4
) -> SyncRequested:
    """A new org's queued job for the simulated store ``sim``, its secret sealed with
    FETCHER_SECRETS: the request the fetcher's handler is given."""
    org_id = await make_org(pool)
    return await queue_store_sync(
        pool, org_id, sim, FETCHER_SECRETS, batch_size=batch_size, concurrency=concurrency
    )


class Recorder:
    """Stands in for the fetcher's publisher: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def customer_ids(self) -> list[int]:
        return [c["id"] for b in self.of(CustomerBatch) for c in b.customers]


def fetcher_deps(
    pool: asyncpg.Pool, recorder: Recorder, *, store_limits: StoreLimits | None = None
) -> FetcherDeps:
    """The fetcher's dependencies: real store client with quick retries, ``recorder`` as the
    publisher; ``store_limits`` for jobs that adapt their concurrency to the store."""

    @asynccontextmanager
    async def open_client(
        config: StoreConfig, concurrency: int, gate: RequestGate | None = None
    ) -> AsyncIterator[PageReader]:
        async with WooClient(
            config, policy=FAST_RETRIES, max_connections=concurrency, gate=gate
        ) as client:
            yield client

    return FetcherDeps(
        pool=pool, secrets=FETCHER_SECRETS, open_client=open_client, publish=recorder,
        allow_private_urls=True,  # the simulator listens on 127.0.0.1
        store_limits=store_limits,
    )  # fmt: skip


# --- the woosync command --------------------------------------------------------------------


async def woosync(settings: Settings, *args: str, stdin: str | None = None) -> str:
    """Run the real ``woosync`` command; its stdout, after asserting it succeeded."""
    code, stdout, stderr = await woosync_run(settings, *args, stdin=stdin)
    assert code == 0, stderr[-2000:]
    return stdout


async def woosync_run(
    settings: Settings, *args: str, stdin: str | None = None, **env: str
) -> tuple[int, str, str]:
    """Run the real ``woosync`` command: its exit code, stdout and stderr. ``env``: extra
    WOOSYNC_* settings."""
    environment = service_env(
        settings, WOOSYNC_ADMIN_DATABASE_URL=settings.admin_database_url, **env
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "woosync.cli", *args, env=environment,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        data = stdin.encode() if stdin is not None else None
        stdout, stderr = await asyncio.wait_for(process.communicate(data), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode(errors="replace")


# --- queues ---------------------------------------------------------------------------------


@asynccontextmanager
async def channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the test broker, closed with its connection at the end of the block."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        yield await connection.channel()


async def queue_depth(name: str) -> int:
    """How many messages wait in queue ``name`` now."""
    async with channel() as ch:
        queue = await ch.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


# --- the database, read ---------------------------------------------------------------------


async def job_row(pool: asyncpg.Pool, job_id: UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM woo_customer_sync_queue WHERE id = $1", job_id)
    assert row is not None, job_id
    return row


async def wait_state(
    pool: asyncpg.Pool, job: Job, state: str, timeout_s: float = 20.0
) -> asyncpg.Record:
    """The job's row once it is in ``state``."""

    async def check() -> asyncpg.Record | None:
        row = await job_row(pool, job.job_id)
        return row if row["state"] == state else None

    return await wait_until(check, f"job {job.job_id} {state}", timeout_s)


async def line_states(pool: asyncpg.Pool, job: Job) -> dict[int, str]:
    rows = await pool.fetch(
        "SELECT woo_id, state FROM woo_customer_sync_queue_line WHERE job_id = $1", job.job_id
    )
    return {r["woo_id"]: r["state"] for r in rows}


async def customer_ids(pool: asyncpg.Pool, job: Job) -> list[int]:
    """The woo ids of the customers stored for the job's org and connection."""
    rows = await pool.fetch(
        "SELECT woo_id FROM customer WHERE org_id = $1 AND connection_id = $2 ORDER BY woo_id",
        job.org_id,
        job.connection_id,
    )
    return [r["woo_id"] for r in rows]


# --- the simulated store ----------------------------------------------------------------------


async def store_settled(
    sim: SimHandle, counter: str = "requests", every_s: float = 0.5, timeout_s: float = 60.0
) -> int:
    """The simulator's ``counter`` (``requests`` answered, ``received`` arrived) once it stops
    growing: the sign that a client has sent, or been answered, all it was going to."""
    seen: list[int] = []

    async def unchanged() -> bool:
        seen.append((await sim.stats())[counter])
        return len(seen) > 1 and seen[-1] == seen[-2]

    await wait_until(unchanged, f"the store's {counter} settled", timeout_s, every_s)
    return seen[-1]
