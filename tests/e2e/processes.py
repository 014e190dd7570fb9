"""Helpers of the process-fault tests: a running stack, bounded waits, what the job looks like.

Tests that kill services share the machine with tests that restart RabbitMQ or PostgreSQL; they
hold a *shared* lock on the file those take exclusively, so no server restart lands in the middle
of a test that did not ask for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
import httpx
from httpx_sse import aconnect_sse

from shared import db
from shared.jobs import JobStatus, get_status
from shared.settings import Settings
from shared.topology import Topology
from tests.e2e.harness import Org, Stack
from tests.helpers import wait_until

INFRA_LOCK = "/tmp/woosync-infra.lock"
LOCK_WAIT_S = 240.0
AMQP_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def infra_lock(*, exclusive: bool, wait_s: float = LOCK_WAIT_S) -> AsyncIterator[None]:
    """The lock on PostgreSQL and RabbitMQ being up, with a bounded wait: tests that take a
    server down hold it exclusively, tests that need both servers up share it."""
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    fd = os.open(INFRA_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{INFRA_LOCK} locked for {wait_s:.0f}s") from None
                await asyncio.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def infra_shared_lock() -> contextlib.AbstractAsyncContextManager[None]:
    return infra_lock(exclusive=False)


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    log_dir: Path,
    *,
    fetchers: int = 1,
    syncers: int = 1,
    apis: int = 1,
    trackers: int = 1,
    **env: str,
) -> AsyncIterator[Stack]:
    """Every service as a process (``apis`` … ``syncers`` of each), ready; all stopped
    afterwards. ``env``: extra WOOSYNC_*."""
    async with infra_shared_lock():
        stack = Stack(settings, log_dir, extra_env=env)
        stack.start_all(fetchers=fetchers, syncers=syncers, apis=apis, trackers=trackers)
        try:
            await stack.wait_ready()
            for queue, count in (("fetcher", fetchers), ("syncer", syncers)):
                await wait_consumers(settings, queue, count)
            yield stack
        finally:
            stack.stop_all()


async def fetchval(settings: Settings, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def fetch(settings: Settings, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows, jsonb decoded."""
    conn = await db.connect(settings.admin_database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def pages_recorded(settings: Settings, job_id: str) -> set[int]:
    """The pages of a job's crawl recorded so far."""
    rows = await fetch(
        settings, "SELECT page FROM woo_customer_sync_page WHERE job_id = $1::uuid", job_id
    )
    return {r["page"] for r in rows}


@dataclass(frozen=True)
class Progress:
    pages: int
    done: int
    fetch_complete: bool
    state: str
    process_count: int


async def progress(settings: Settings, job_id: str) -> Progress:
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        row = await conn.fetchrow(
            """SELECT j.state, j.process_count, j.fetch_done_at IS NOT NULL AS fetched,
                      (SELECT count(*) FROM woo_customer_sync_page p WHERE p.job_id = j.id)
                          AS pages,
                      (SELECT count(*) FROM woo_customer_sync_queue_line l
                       WHERE l.job_id = j.id AND l.state = 'done') AS done
               FROM woo_customer_sync_queue j WHERE j.id = $1::uuid""",
            job_id,
        )
    finally:
        await conn.close()
    return Progress(row["pages"], row["done"], row["fetched"], row["state"], row["process_count"])


async def wait_progress(
    settings: Settings,
    job_id: str,
    *,
    pages: int = 0,
    done: int = 0,
    timeout_s: float = 60.0,
) -> Progress:
    """Until the job read ``pages`` pages and synced ``done`` customers; fails if it ended."""

    async def check() -> Progress | None:
        now = await progress(settings, job_id)
        assert now.state not in ("done", "failed"), f"the job ended first: {now}"
        return now if now.pages >= pages and now.done >= done else None

    result: Progress = await wait_until(check, f"job {job_id} at {pages} pages", timeout_s)
    return result


async def queue_info(settings: Settings, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of one of the three work queues: fetcher, syncer, tracker."""
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
    name = {
        "fetcher": topology.fetcher_queue.name,
        "syncer": topology.syncer_queue.name,
        "tracker": topology.tracker_queue.name,
    }[queue]
    connection = await aio_pika.connect(settings.amqp_url, timeout=AMQP_TIMEOUT_S)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(name, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await connection.close()


async def wait_consumers(settings: Settings, queue: str, count: int) -> None:
    async def check() -> bool:
        return (await queue_info(settings, queue))[1] >= count

    await wait_until(check, f"{count} consumers on the {queue} queue", 60.0, 0.2)


@dataclass
class StatusWatch:
    """Samples the job's status (what the api and every SSE event show) until stopped, and
    remembers anything a client should never see."""

    settings: Settings
    org: Org
    job_id: str
    seen: list[JobStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def run(self) -> None:
        org_id, job_id = UUID(self.org.org_id), UUID(self.job_id)
        while True:
            try:
                conn = await asyncpg.connect(self.settings.admin_database_url)
                try:
                    status = await get_status(conn, org_id=org_id, job_id=job_id)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.1)
                continue
            if status is None:
                self.problems.append("the job disappeared")
                return
            self.check(status)
            self.seen.append(status)
            await asyncio.sleep(0.05)

    def check(self, status: JobStatus) -> None:
        if status.done + status.failed > status.total:
            self.problems.append(f"more settled than total: {status}")
        if status.percent > 100:
            self.problems.append(f"percent over 100: {status}")
        if self.seen and status.done < self.seen[-1].done:
            self.problems.append(f"done went back from {self.seen[-1].done}: {status}")


@contextlib.asynccontextmanager
async def watching(settings: Settings, org: Org, job_id: str) -> AsyncIterator[StatusWatch]:
    watch = StatusWatch(settings, org, job_id)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def follow_progress(
    progress_url: str,
    timeout_s: float = 120.0,
    events: list[tuple[str, dict[str, Any]]] | None = None,
) -> list[tuple[str, dict]]:
    """Every SSE event of a job until ``complete``, reconnecting while the tracker is down
    (with ``Last-Event-ID``, as a browser does). ``events``: a list to append them to as they
    come, for a test that waits for one while the stream runs."""
    events = [] if events is None else events
    last_id = "0"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0)) as client,
                aconnect_sse(
                    client, "GET", progress_url, headers={"Last-Event-ID": last_id}
                ) as source,
            ):
                source.response.raise_for_status()
                async for event in source.aiter_sse():
                    if not event.data:
                        continue
                    last_id = event.id or last_id
                    events.append((event.event, json.loads(event.data)))
                    if event.event == "complete":
                        return events
        except (httpx.HTTPError, OSError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"no complete event after {timeout_s:.0f}s")


class Timeline:
    """Prints what happened when (pytest shows it for a failed test)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        print(f"{time.monotonic() - self.started:7.2f}s  {what}")
