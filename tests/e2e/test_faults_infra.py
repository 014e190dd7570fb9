"""RabbitMQ and PostgreSQL restarted in the middle of a sync, with every service a real process.

Each test starts a 2,000-customer sync against a slowed-down simulated store, restarts the
server while pages are still being read and batches synced, checks that both ``readyz``
endpoints report the outage, and then that the job ends ``done`` with exactly the store's
customers, no service having been restarted by hand.

The restarts disturb every other test that uses the same server, so they are serialised with
an exclusive hold of ``tests.e2e.processes.infra_lock`` (other fault tests share it), kept
short, and the server is always started again in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest
from faststream.rabbit import RabbitQueue

from shared.broker import make_broker, publish_to_queue
from shared.messages import LinesDone
from shared.settings import Settings
from tests.e2e.fault_stack import started_stack
from tests.e2e.harness import Stack, assert_exact, new_org, start_sync, wait_final
from tests.e2e.processes import infra_lock
from tests.helpers import wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LOCK_WAIT_S = 180.0
CUSTOMERS = 2_000
# 20 pages of 100 read one at a time, 350 ms each: the crawl lasts about 7 s.
SLOW_PAGE_MS = 350


def exclusive_infra_lock() -> contextlib.AbstractAsyncContextManager[None]:
    """Exclusive, bounded wait: no two tests take a server down at the same time."""
    return infra_lock(exclusive=True, wait_s=LOCK_WAIT_S)


async def run(*argv: str, timeout_s: float = 60.0) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(argv)} took over {timeout_s:.0f}s") from None
    assert process.returncode == 0, f"{' '.join(argv)}: {stderr.decode(errors='replace')}"


async def wait_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} not accepting after {timeout_s:.0f}s")
        await asyncio.sleep(0.2)


During = Callable[[], Awaitable[None]]


async def restart_rabbitmq(during: During) -> None:
    """``stop_app``, run ``during`` while it is down, ``start_app`` (always) and wait for it.
    The caller holds :func:`exclusive_infra_lock`."""
    try:
        await run("rabbitmqctl", "stop_app")
        await during()
    finally:
        await run("rabbitmqctl", "start_app", timeout_s=120)
        await run("rabbitmqctl", "await_startup", timeout_s=120)
        await wait_port(5672)


async def restart_postgresql(during: During) -> None:
    """Stop the cluster (fast: sessions are terminated), run ``during``, start it (always).
    The caller holds :func:`exclusive_infra_lock`."""
    cluster = ("pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main")
    try:
        await run(*cluster, "stop", "--", "-m", "fast")
        await during()
    finally:
        await run(*cluster, "start", timeout_s=120)
        await run("pg_isready", "-h", "127.0.0.1", "-t", "60", timeout_s=90)


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster configured"
    return versions[-1]


async def readiness(stack: Stack) -> dict[str, int]:
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for name, url in (("api", stack.api_url), ("tracker", stack.tracker_url)):
            statuses[name] = (await client.get(url + "/readyz")).status_code
    return statuses


async def pages_read(settings: Settings, job_id: str) -> int:
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM woo_customer_sync_page WHERE job_id = $1::uuid", job_id
        )
        done: int = await conn.fetchval(
            "SELECT count(*) FROM woo_customer_sync_queue_line "
            "WHERE job_id = $1::uuid AND state = 'done'",
            job_id,
        )
    finally:
        await conn.close()
    return count if done else 0


async def wait_mid_sync(settings: Settings, job_id: str, pages: int = 3) -> None:
    """Until the crawl has read ``pages`` pages and the syncer committed some lines."""
    deadline = time.monotonic() + 60
    while await pages_read(settings, job_id) < pages:
        assert time.monotonic() < deadline, "the sync never got going"
        await asyncio.sleep(0.05)


@dataclass
class Probe:
    sent: list[str] = field(default_factory=list)
    queued: set[str] = field(default_factory=set)
    longest_s: float = 0.0  # the longest single publish: one that waited out the outage


@contextlib.asynccontextmanager
async def publishing_probe(settings: Settings) -> AsyncIterator[Probe]:
    """Publishes through ``shared.broker`` to a queue of its own, one message every 50 ms, for
    as long as the block runs; then collects what the queue holds. A publish that raises
    fails the test."""
    probe = Probe()
    queue = f"{settings.namespace}.probe"
    broker = make_broker(settings)
    await broker.connect()
    await broker.declare_queue(RabbitQueue(queue, durable=True))
    stop = asyncio.Event()

    async def publish_until_stopped() -> None:
        while not stop.is_set():
            message = LinesDone(job_id=uuid.uuid4(), org_id=uuid.uuid4(), woo_ids=[1])
            started = time.monotonic()
            await publish_to_queue(broker, queue, message)
            probe.longest_s = max(probe.longest_s, time.monotonic() - started)
            probe.sent.append(str(message.message_id))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(publish_until_stopped())
    try:
        yield probe
    finally:
        stop.set()
        await asyncio.wait_for(task, 90)
        try:
            connection = await aio_pika.connect(settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                declared = await channel.declare_queue(queue, passive=True)
                while (message := await declared.get(no_ack=True, fail=False)) is not None:
                    probe.queued.add(str(message.message_id))
                await declared.delete(if_unused=False, if_empty=False)
        finally:
            await broker.stop()


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    async with started_stack(settings, tmp_path) as stack:
        yield stack


# What the client libraries log when the broker closes the connection: aiormq's reader, and
# FastStream for a handler that the closing connection cancelled (its message is redelivered).
CONNECTION_LOSS = ("ConnectionClosed: [Errno 320]", "CancelledError: [Errno 320]")


def unexpected_errors(logs: str, allowed: tuple[str, ...]) -> list[str]:
    """The exception line ending each traceback in ``logs``, unless it names an allowed one."""
    found = []
    lines = logs.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            tail = next(
                (t for t in lines[index + 1 :] if t and not t.startswith((" ", "\t"))), ""
            )
            if not any(a in tail for a in allowed):
                found.append(tail)
    return found


# A handler or the tracker's loop that meets the stopped server: logged, then retried.
DATABASE_LOSS = ("AdminShutdownError", "CannotConnectNowError", "ConnectionRefusedError",
                 "ConnectionResetError", "ConnectionDoesNotExistError", "InterfaceError",
                 "BrokenPipeError", "TimeoutError", "InternalClientError")


def assert_recovered(stack: Stack, services: tuple[str, ...]) -> None:
    for service in services:
        process = stack.processes[(service, 0)]
        assert process.poll() is None, f"{service} exited ({process.returncode})"


async def test_rabbitmq_restart_mid_sync(settings: Settings, stack: Stack) -> None:
    org = await new_org(settings)
    with spawn_simulator(customers=CUSTOMERS, seed=21, latency_ms=SLOW_PAGE_MS) as sim:
        store = await sim.customers()
        seen: dict[str, int] = {}

        async def while_down() -> None:
            seen.update(await readiness(stack))
            await asyncio.sleep(1)

        async with exclusive_infra_lock(), publishing_probe(settings) as probe:
            # The lock first, so the outage surely falls mid-sync.
            job = await start_sync(stack, org, sim, concurrency=1)
            await wait_mid_sync(settings, job["job_id"])
            await restart_rabbitmq(while_down)
            # The probe publishes on after the restart (each publish confirmed).
            since = len(probe.sent)
            await wait_until(lambda: len(probe.sent) >= since + 10, "publishes after the restart")
        assert seen == {"api": 503, "tracker": 503}, seen
        # Every probe publish returned (retried until confirmed) and every one is queued.
        assert probe.sent and probe.queued >= set(probe.sent), len(set(probe.sent) - probe.queued)
        assert probe.longest_s > 2, "no publish met the outage"

        row = await wait_final(settings, job["job_id"], timeout_s=150)
        assert row["state"] == "done", (row["state"], row["last_error"])
        await assert_exact(settings, org, job["job_id"], store)
        await stack.wait_ready(timeout_s=30)
        assert_recovered(stack, ("api", "tracker", "fetcher", "syncer"))
        # The api publishes again on its recovered connection: a second sync runs through.
        again = await start_sync(stack, org, sim)
        assert (await wait_final(settings, again["job_id"], timeout_s=60))["state"] == "done"

    for service in ("fetcher", "syncer", "tracker", "api"):
        log = (stack.log_dir / f"{service}-0.log").read_text(errors="replace")
        assert log.count("broker connection lost") == 1, f"{service}: loss not logged once"
        assert "broker connection re-established after" in log, f"{service}: no recovery"
    assert unexpected_errors(stack.logs(), CONNECTION_LOSS) == []


async def test_postgresql_restart_mid_sync(settings: Settings, stack: Stack) -> None:
    org = await new_org(settings)
    with spawn_simulator(customers=CUSTOMERS, seed=22, latency_ms=SLOW_PAGE_MS) as sim:
        store = await sim.customers()
        seen: dict[str, int] = {}

        async def while_down() -> None:
            seen.update(await readiness(stack))
            await asyncio.sleep(1)

        async with exclusive_infra_lock():  # taken first, so the outage surely falls mid-sync
            job = await start_sync(stack, org, sim, concurrency=1)
            await wait_mid_sync(settings, job["job_id"])
            await restart_postgresql(while_down)
        assert seen == {"api": 503, "tracker": 503}, seen

        row = await wait_final(settings, job["job_id"], timeout_s=150)
        assert row["state"] == "done", (row["state"], row["last_error"])
        await assert_exact(settings, org, job["job_id"], store)
        await stack.wait_ready(timeout_s=30)
        assert_recovered(stack, ("api", "tracker", "fetcher", "syncer"))

    logs = stack.logs()
    assert "requeueing" in logs, "no handler met the outage"
    assert unexpected_errors(logs, DATABASE_LOSS) == []
