"""The tracker against the real PostgreSQL and RabbitMQ, and its SSE stream over real HTTP.

Jobs and lines are written by SQL, as the fetcher and syncer would; events are published to the
real exchange. The app runs under uvicorn in-process (httpx's ASGI transport buffers streams).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import httpx
import pytest
from faststream.rabbit import RabbitBroker
from httpx_sse import ServerSentEvent, aconnect_sse
from itsdangerous.timed import TimestampSigner

from services.tracker.handlers import Tracker, announce, fail_job, recompute
from shared.auth import create_org
from shared.broker import make_broker, publish
from shared.consuming import Malformed as MalformedEvent
from shared.consuming import parse
from shared.crypto import ProgressTokens
from shared.db import for_org
from shared.messages import (
    TRACKER_EVENTS,
    FetchCompleted,
    FetchFailed,
    LineFailure,
    LinesDone,
    LinesFailed,
    SyncCompleted,
)
from shared.settings import Settings
from shared.topology import Topology, declare_topology
from tests.conftest import AMQP_URL
from tests.factories import add_lines, make_job
from tests.helpers import free_port, job_row, queue_depth, service_env, serving_tracker, tokens_for

WAIT_S = 10.0

# --- data helpers -------------------------------------------------------------------------


async def set_lines(pool: asyncpg.Pool, job_id: UUID, woo_ids: Sequence[int], state: str) -> None:
    await pool.execute(
        """UPDATE woo_customer_sync_queue_line SET state = $3, updated_at = now()
           WHERE job_id = $1 AND woo_id = ANY($2::bigint[])""",
        job_id,
        list(woo_ids),
        state,
    )


async def finish_fetch(pool: asyncpg.Pool, job_id: UUID) -> None:
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET fetch_done_at = now() WHERE id = $1", job_id
    )


async def activities(pool: asyncpg.Pool, job_id: UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT level, event, details FROM woo_sync_activity WHERE job_id = $1 ORDER BY id", job_id
    )


async def wait_for_state(pool: asyncpg.Pool, job_id: UUID, states: set[str]) -> asyncpg.Record:
    async with asyncio.timeout(WAIT_S):
        while (row := await job_row(pool, job_id))["state"] not in states:
            await asyncio.sleep(0.05)
    return row


# --- broker and server helpers ------------------------------------------------------------


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[RabbitBroker]:
    broker = make_broker(settings)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


@asynccontextmanager
async def completions(topology: Topology) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A private queue that receives every ``sync.completed`` (the app must be running)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.namespace, ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True, durable=False)
        await queue.bind(exchange, routing_key=SyncCompleted.routing_key)
        yield queue
    finally:
        await connection.close()


async def next_completion(queue: aio_pika.abc.AbstractQueue) -> SyncCompleted:
    async with asyncio.timeout(WAIT_S):
        while (message := await queue.get(no_ack=True, fail=False)) is None:
            await asyncio.sleep(0.05)
    return SyncCompleted.model_validate_json(message.body)


async def read_stream(
    client: httpx.AsyncClient, url: str, **kwargs: Any
) -> tuple[httpx.Response, list[ServerSentEvent]]:
    """Every event of a stream that must end by itself (a final job), within WAIT_S."""
    events: list[ServerSentEvent] = []
    async with asyncio.timeout(WAIT_S), aconnect_sse(client, "GET", url, **kwargs) as source:
        if source.response.status_code != 200:
            await source.response.aread()
            return source.response, events
        async for event in source.aiter_sse():
            events.append(event)
    return source.response, events


def backdated_token(tokens: ProgressTokens, job_id: UUID, org_id: UUID, age_s: int) -> str:
    """A token issued ``age_s`` seconds ago (the signer reads the clock only when signing)."""
    real = TimestampSigner.get_timestamp
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - age_s)
        return tokens.issue(job_id, org_id)


# --- recompute and fail_job ---------------------------------------------------------------


async def test_recompute_counts_lines_and_writes_only_on_change(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, range(1, 5), "done")
    await add_lines(pool, job_id, org_id, range(5, 7), "failed")
    await add_lines(pool, job_id, org_id, range(7, 10), "pending")
    await add_lines(pool, job_id, org_id, [10], "processing")

    assert await recompute(for_org(app_pool, org_id), job_id) is None
    row = await job_row(pool, job_id)
    assert (row["total"], row["done_count"], row["failed_count"]) == (10, 4, 2)
    assert row["state"] == "processing" and row["finished_at"] is None

    # Nothing changed: the row is not rewritten.
    assert await recompute(for_org(app_pool, org_id), job_id) is None
    assert (await job_row(pool, job_id))["updated_at"] == row["updated_at"]

    await finish_fetch(pool, job_id)  # every page read, but lines are still open
    assert await recompute(for_org(app_pool, org_id), job_id) is None
    assert (await job_row(pool, job_id))["state"] == "processing"
    assert await recompute(for_org(app_pool, org_id), uuid4()) is None  # unknown job


async def test_racing_recomputes_finish_the_job_exactly_once(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    jobs = [await make_job(pool, org_id, state=s) for s in ("processing", "queued") * 3]
    for job_id in jobs:
        await add_lines(pool, job_id, org_id, range(1, 51), "done")
        await finish_fetch(pool, job_id)

    scope = for_org(app_pool, org_id)
    results = await asyncio.gather(*(recompute(scope, j) for j in jobs for _ in range(4)))

    finished = [r for r in results if r is not None]
    assert sorted(r.job_id for r in finished) == sorted(jobs)  # one per job, not four
    for done in finished:
        assert (done.state, done.total, done.done, done.failed) == ("done", 50, 50, 0)
        assert done.org_id == org_id
        row = await job_row(pool, done.job_id)
        assert row["state"] == "done" and row["finished_at"] is not None
        assert row["last_error"] is None
        assert [a["event"] for a in await activities(pool, done.job_id)] == ["job.completed"]
    assert await recompute(for_org(app_pool, org_id), jobs[0]) is None  # final jobs stay final


async def test_failed_lines_fail_the_job_with_a_hint(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, range(1, 4), "done")
    await add_lines(pool, job_id, org_id, range(4, 6), "failed")
    await finish_fetch(pool, job_id)

    done = await recompute(for_org(app_pool, org_id), job_id)

    assert done is not None and (done.state, done.total, done.done, done.failed) == (
        "failed",
        5,
        3,
        2,
    )
    row = await job_row(pool, job_id)
    assert row["state"] == "failed" and row["finished_at"] is not None
    assert row["last_error"].startswith("2 customers failed; see the failed lines")
    [entry] = await activities(pool, job_id)
    assert (entry["level"], entry["event"]) == ("error", "job.failed")
    assert entry["details"] == {"total": 5, "done": 3, "failed": 2}


async def test_fetch_failed_fails_the_job_once(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    other_org, _ = await create_org(pool, "other")
    job_id = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, range(1, 4), "done")
    await add_lines(pool, job_id, org_id, range(4, 6), "pending")
    event = FetchFailed(job_id=job_id, org_id=org_id, error="store answered 401 Unauthorized")

    assert await fail_job(app_pool, event.model_copy(update={"org_id": other_org})) is None
    done = await fail_job(app_pool, event)

    assert done is not None and (done.state, done.total, done.done, done.failed) == (
        "failed",
        5,
        3,
        0,
    )
    row = await job_row(pool, job_id)
    assert (row["state"], row["last_error"]) == ("failed", "store answered 401 Unauthorized")
    assert await fail_job(app_pool, event) is None  # duplicate event
    # Its customers all synced, but pages were left unread: the job stays failed.
    await set_lines(pool, job_id, [4, 5], "done")
    assert await recompute(for_org(app_pool, org_id), job_id) is None
    assert (await job_row(pool, job_id))["state"] == "failed"
    [entry] = await activities(pool, job_id)
    assert (entry["level"], entry["event"]) == ("error", "job.failed")
    assert entry["details"]["error"] == "store answered 401 Unauthorized"


async def test_a_failed_job_whose_lines_all_end_done_recovers_once(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    """Parked customers moved back from the console and synced: the job becomes done."""
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, range(1, 4), "done")
    await add_lines(pool, job_id, org_id, [4], "failed")
    await finish_fetch(pool, job_id)
    scope = for_org(app_pool, org_id)
    failed = await recompute(scope, job_id)
    assert failed is not None and (failed.state, failed.failed) == ("failed", 1)

    await set_lines(pool, job_id, [4], "processing")  # on its way back: still failed, no change
    assert await recompute(scope, job_id) is None
    assert (await job_row(pool, job_id))["state"] == "failed"
    await set_lines(pool, job_id, [4], "done")
    results = await asyncio.gather(*(recompute(scope, job_id) for _ in range(4)))

    [recovered] = [r for r in results if r is not None]  # announced once, by one recompute
    assert (recovered.state, recovered.total, recovered.done, recovered.failed) == (
        "done", 4, 4, 0,
    )  # fmt: skip
    row = await job_row(pool, job_id)
    assert (row["state"], row["last_error"]) == ("done", None)
    entries = await activities(pool, job_id)
    events = [(a["event"], a["details"].get("recovered_from")) for a in entries]
    assert events == [("job.failed", None), ("job.completed", "failed")]
    assert await recompute(scope, job_id) is None  # done stays done


async def test_jobs_without_progress_are_failed_as_stalled_once(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    stuck = await make_job(pool, org_id)
    await add_lines(pool, stuck, org_id, range(1, 4))
    await set_lines(pool, stuck, [1], "done")
    moving = await make_job(pool, org_id)  # its job row is old, but a line just changed
    await add_lines(pool, moving, org_id, [1])
    waiting = await make_job(pool, org_id, state="queued")
    finished = await make_job(pool, org_id, state="done")
    await pool.execute("UPDATE woo_customer_sync_queue SET updated_at = now() - interval '1 hour'")
    await pool.execute(
        "UPDATE woo_customer_sync_queue_line SET updated_at = now() - interval '1 hour' "
        "WHERE job_id <> $1",
        moving,
    )
    announced: list[SyncCompleted] = []
    fetchers = [1]

    async def publish(done: SyncCompleted) -> None:
        announced.append(done)

    async def consuming() -> int:
        return fetchers[0]

    tracker = Tracker(
        app_pool, publish, sweep_interval_s=0.1, stall_timeout_s=60, fetchers_consuming=consuming
    )
    await tracker.detect_stalls()

    row = await job_row(pool, stuck)
    assert row["state"] == "failed" and row["finished_at"] is not None
    assert row["last_error"].startswith("stalled: no progress for 60 s")
    assert (row["total"], row["done_count"], row["failed_count"]) == (3, 1, 0)
    [entry] = await activities(pool, stuck)
    assert (entry["level"], entry["event"]) == ("error", "job.stalled")
    assert entry["details"]["previous_state"] == "processing"
    assert entry["details"]["fetch_complete"] is False
    assert [(a.job_id, a.state) for a in announced] == [(stuck, "failed")]
    assert (await job_row(pool, moving))["state"] == "processing"
    assert (await job_row(pool, waiting))["state"] == "queued"  # a fetcher will come to it
    assert (await job_row(pool, finished))["state"] == "done"

    fetchers[0] = 0  # no fetcher is left to take the queued job
    await tracker.detect_stalls()
    assert (await job_row(pool, waiting))["state"] == "failed"
    assert len(await activities(pool, stuck)) == 1  # failed once, recorded once
    assert [a.job_id for a in announced] == [stuck, waiting]


@asynccontextmanager
async def running_tracker(
    app_pool: asyncpg.Pool, tick_s: float, finished: list[tuple[UUID, UUID]]
) -> AsyncIterator[Tracker]:
    async def publish(done: SyncCompleted) -> None:
        pass

    tracker = Tracker(
        app_pool,
        publish,
        sweep_interval_s=tick_s,
        full_sweep_interval_s=60.0,
        on_finished=lambda org, job: finished.append((org, job)),
    )
    running = asyncio.create_task(tracker.run())
    try:
        yield tracker
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def within(seconds: float, predicate: Any) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_a_job_whose_crawl_ended_finishes_when_its_last_line_settles(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    """With a tick of 4 s: once a job's crawl has ended, any event of it may be its last, so it
    is recomputed at once; its last one finishes it then, and whoever follows it is told."""
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id, store_total=4)
    await add_lines(pool, job_id, org_id, range(1, 5))
    await set_lines(pool, job_id, [1, 2], "done")
    ids = {"job_id": job_id, "org_id": org_id}
    finished: list[tuple[UUID, UUID]] = []
    async with running_tracker(app_pool, 4.0, finished) as tracker:
        await asyncio.sleep(0.1)  # the start's sweep is over; the next tick is 4 s away
        await finish_fetch(pool, job_id)
        await tracker.on_event(FetchCompleted(pages=1, customers=4, **ids))

        async def recomputed() -> bool:
            return (await job_row(pool, job_id))["done_count"] == 2

        await within(0.5, recomputed)
        assert (await job_row(pool, job_id))["state"] == "processing" and not finished
        await set_lines(pool, job_id, [3, 4], "done")
        await tracker.on_event(LinesDone(woo_ids=[3, 4], **ids))

        async def told() -> bool:
            return bool(finished)

        await within(0.5, told)
    assert finished == [(org_id, job_id)]
    row = await job_row(pool, job_id)
    assert (row["state"], row["done_count"]) == ("done", 4)


async def test_an_idle_tracker_recomputes_an_event_when_it_comes(
    pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    """A burst of events costs one recompute per tick; an event after a quiet tick is not kept
    waiting for the next one."""
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id, store_total=4)
    await add_lines(pool, job_id, org_id, range(1, 5))
    finished: list[tuple[UUID, UUID]] = []
    async with running_tracker(app_pool, 1.0, finished) as tracker:
        await asyncio.sleep(1.3)  # the start's sweep and a quiet tick are over
        await set_lines(pool, job_id, [1], "done")
        await tracker.on_event(LinesDone(woo_ids=[1], job_id=job_id, org_id=org_id))

        async def recomputed() -> bool:
            return (await job_row(pool, job_id))["done_count"] == 1

        await within(0.3, recomputed)  # the next tick was 0.7 s away
    assert not finished


def parse_event(body: bytes, routing_key: str) -> Any:
    """The tracker's events as the consumer edge decodes them."""
    return parse(body, TRACKER_EVENTS, routing_key=routing_key)


def test_parse_event_by_routing_key_or_shape() -> None:
    ids = {"job_id": uuid4(), "org_id": uuid4()}
    done = LinesDone(woo_ids=[1, 2], **ids)
    failed = LinesFailed(failures=[LineFailure(woo_id=3, error="bad email", attempts=4)], **ids)
    body = done.model_dump_json().encode()

    assert parse_event(body, "line.done") == done
    # Replayed from the parking queue: the routing key is the queue name; the shape decides.
    assert parse_event(failed.model_dump_json().encode(), "ns.tracker.events") == failed
    with pytest.raises(MalformedEvent, match="not JSON"):
        parse_event(b"\xff{", "line.done")
    with pytest.raises(MalformedEvent, match="schema_version 2"):
        parse_event(body.replace(b'"schema_version":1', b'"schema_version":2'), "line.done")
    with pytest.raises(MalformedEvent, match="LinesFailed"):
        parse_event(body, "line.failed")  # body and routing key disagree
    with pytest.raises(MalformedEvent, match="JSON object"):
        parse_event(b"[1]", "line.done")


# --- through the broker -------------------------------------------------------------------


async def test_duplicated_and_reordered_events_finish_once_with_exact_counts(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id, store_total=6)
    await add_lines(pool, job_id, org_id, range(1, 7))
    ids = {"job_id": job_id, "org_id": org_id}
    late = LinesDone(woo_ids=[4, 5, 6], **ids)

    async with (
        serving_tracker(settings),
        completions(clean_broker) as completed,
        publisher(settings) as b,
    ):
        # Page 2 settles before page 1, the fetch completes in between, events come twice, and a
        # stale LinesFailed contradicts the table: only the table counts.
        await set_lines(pool, job_id, [4, 5, 6], "done")
        await publish(b, clean_broker, late)
        await publish(b, clean_broker, late)
        await finish_fetch(pool, job_id)
        await publish(b, clean_broker, FetchCompleted(pages=2, customers=6, **ids))
        await publish(
            b,
            clean_broker,
            LinesFailed(failures=[LineFailure(woo_id=4, error="x", attempts=4)], **ids),
        )
        await set_lines(pool, job_id, [1, 2, 3], "done")
        await publish(b, clean_broker, LinesDone(woo_ids=[1, 2, 3], **ids))
        await publish(b, clean_broker, late)

        row = await wait_for_state(pool, job_id, {"done", "failed"})
        announced = await next_completion(completed)
        await publish(b, clean_broker, FetchCompleted(pages=2, customers=6, **ids))
        await publish(b, clean_broker, late)
        # Another job finishing after those events shows the tracker went past them: a wrong
        # second completion of this job would have been announced before that one.
        later = await make_job(pool, org_id, store_total=1, fetch_done=True)
        await add_lines(pool, later, org_id, [1], "done")
        await publish(b, clean_broker, LinesDone(woo_ids=[1], job_id=later, org_id=org_id))
        assert (await next_completion(completed)).job_id == later
        assert await completed.get(no_ack=True, fail=False) is None

    assert (row["state"], row["total"], row["done_count"], row["failed_count"]) == ("done", 6, 6, 0)
    assert (announced.job_id, announced.org_id, announced.state) == (job_id, org_id, "done")
    assert (announced.total, announced.done, announced.failed) == (6, 6, 0)
    assert [a["event"] for a in await activities(pool, job_id)] == ["job.completed"]


async def test_fetch_failed_event_fails_the_job_and_announces_it(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, range(1, 4))
    event = FetchFailed(job_id=job_id, org_id=org_id, error="store kept answering 503")

    async with (
        serving_tracker(settings),
        completions(clean_broker) as completed,
        publisher(settings) as b,
    ):
        await publish(b, clean_broker, event)
        row = await wait_for_state(pool, job_id, {"done", "failed"})
        announced = await next_completion(completed)

    assert (row["state"], row["last_error"], row["total"]) == (
        "failed",
        "store kept answering 503",
        3,
    )
    assert (announced.job_id, announced.state, announced.total) == (job_id, "failed", 3)


async def test_malformed_events_are_parked_and_consuming_goes_on(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, [1], "done")
    await finish_fetch(pool, job_id)
    good = LinesDone(woo_ids=[1], job_id=job_id, org_id=org_id)
    future = good.model_dump_json().replace('"schema_version":1', '"schema_version":9')
    bodies = [b"this is not json", b'{"schema_version": 1, "job_id": "nope"}', future.encode()]
    parking = clean_broker.parking(clean_broker.tracker_queue).name

    async with serving_tracker(settings), publisher(settings) as b:
        for body in bodies:
            await b.publish(
                body,
                exchange=clean_broker.exchange,
                routing_key="line.done",
                persist=True,
                content_type="application/json",
            )
        await publish(b, clean_broker, good)
        row = await wait_for_state(pool, job_id, {"done", "failed"})
        async with asyncio.timeout(WAIT_S):
            while await queue_depth(parking) < len(bodies):
                await asyncio.sleep(0.1)

    assert row["state"] == "done"
    assert await queue_depth(parking) == len(bodies)
    assert await queue_depth(clean_broker.tracker_queue.name) == 0


async def test_announce_with_nobody_listening_is_not_an_error(
    settings: Settings, clean_broker: Topology
) -> None:
    done = SyncCompleted(
        job_id=uuid4(), org_id=uuid4(), state="done", total=1, done=1, failed=0
    )
    async with publisher(settings) as broker:
        await declare_topology(broker, clean_broker)
        await announce(broker, clean_broker, done)  # unroutable, yet no error to retry forever
        async with completions(clean_broker) as completed:
            await announce(broker, clean_broker, done)
            assert await next_completion(completed) == done


# --- SSE ------------------------------------------------------------------------------------


async def test_progress_stream_follows_the_job_to_completion(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id, store_total=20)
    # Old enough that its rate is measured (shared.jobs.MIN_RATE_SPAN_S).
    await pool.execute(
        "UPDATE woo_customer_sync_queue SET created_at = now() - interval '10 s' WHERE id = $1",
        job_id,
    )
    await add_lines(pool, job_id, org_id, range(1, 21))
    token = tokens_for(settings).issue(job_id, org_id)
    ids = {"job_id": job_id, "org_id": org_id}
    received: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()

    async def listen(url: str) -> None:
        async with (
            httpx.AsyncClient(timeout=WAIT_S) as client,
            aconnect_sse(client, "GET", url, params={"token": token}) as source,
        ):
            assert source.response.status_code == 200
            async for event in source.aiter_sse():
                await received.put(event)
        await received.put(None)  # the server ended the stream

    async with serving_tracker(settings) as base, publisher(settings) as b:
        listener = asyncio.create_task(listen(f"{base}/api/v1/integrations/sync/progress/{job_id}"))
        try:
            first = await asyncio.wait_for(received.get(), WAIT_S)
            events = [first]
            for step in range(4):
                batch = list(range(step * 5 + 1, step * 5 + 6))
                await set_lines(pool, job_id, batch, "done")
                await publish(b, clean_broker, LinesDone(woo_ids=batch, **ids))
                # The stream shows this step before the next one is taken.
                async with asyncio.timeout(WAIT_S):
                    while json.loads(events[-1].data)["done"] < batch[-1]:
                        event = await received.get()
                        assert event is not None, "the stream ended before the job"
                        events.append(event)
            await finish_fetch(pool, job_id)
            await publish(b, clean_broker, FetchCompleted(pages=1, customers=20, **ids))
            async with asyncio.timeout(WAIT_S):
                while (event := await received.get()) is not None:
                    events.append(event)
            await asyncio.wait_for(listener, WAIT_S)
        finally:
            listener.cancel()

    assert first.event == "progress"
    assert [e.event for e in events[:-1]] == ["progress"] * (len(events) - 1)
    statuses = [json.loads(e.data) for e in events]
    assert statuses[0]["job_id"] == str(job_id) and statuses[0]["total"] == 20
    done_counts = [s["done"] for s in statuses]
    assert done_counts == sorted(done_counts) and len(set(done_counts)) >= 2
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    # Progress carries the rate over the recent window and the ETA of the rest at that rate.
    moving = [s for s in statuses if s["state"] != "done" and 0 < s["done"] < 20]
    assert moving, statuses
    for status in moving:
        assert status["rate_per_s"] > 0, status
        assert status["eta_s"] == round(status["pending"] / status["rate_per_s"]), status
    last = events[-1]
    assert last.event == "complete"
    final = json.loads(last.data)
    assert (final["rate_per_s"], final["eta_s"]) == (None, None)
    assert (final["state"], final["done"], final["total"], final["percent"]) == (
        "done",
        20,
        20,
        100.0,
    )


async def test_progress_auth_tokens_keys_and_tenancy(
    settings: Settings, pool: asyncpg.Pool, app_pool: asyncpg.Pool
) -> None:
    org_id, key = await create_org(pool, "acme")
    other_org, other_key = await create_org(pool, "other")
    job_id = await make_job(pool, org_id)
    sibling_job = await make_job(pool, org_id)
    await add_lines(pool, job_id, org_id, [1, 2], "done")
    await finish_fetch(pool, job_id)
    # Final: its stream ends by itself.
    assert await recompute(for_org(app_pool, org_id), job_id) is not None
    tokens = tokens_for(settings)

    async with serving_tracker(settings) as base, httpx.AsyncClient(timeout=WAIT_S) as client:
        url = f"{base}/api/v1/integrations/sync/progress/{job_id}"
        bearer = {"Authorization": f"Bearer {key}"}

        response, events = await read_stream(client, url, headers=bearer)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert [e.event for e in events] == ["progress", "complete"]
        assert json.loads(events[1].data)["done"] == 2

        response, events = await read_stream(
            client, url, params={"token": tokens.issue(job_id, org_id)}
        )
        assert (response.status_code, [e.event for e in events]) == (200, ["progress", "complete"])
        # A reconnecting EventSource sends the last id it saw; ids carry on from there.
        response, events = await read_stream(client, url, headers={**bearer, "Last-Event-ID": "7"})
        assert [(e.event, e.id) for e in events] == [("progress", "8"), ("complete", "9")]

        refused = {
            "no credentials": {},
            "unknown key": {"headers": {"Authorization": "Bearer wsk_not-a-key"}},
            "token of another job": {"params": {"token": tokens.issue(sibling_job, org_id)}},
            "expired token": {
                "params": {
                    "token": backdated_token(
                        tokens, job_id, org_id, settings.progress_token_ttl_s + 60
                    )
                }
            },
            "tampered token": {"params": {"token": tokens.issue(job_id, org_id)[:-2] + "xx"}},
            "token signed with another secret": {
                "params": {"token": ProgressTokens("other-secret", 600).issue(job_id, org_id)}
            },
        }
        for case, kwargs in refused.items():
            response = await client.get(url, **kwargs)
            assert response.status_code == 401, case
            assert response.json()["error"]["code"] == "unauthorized", case

        for headers in ({"Authorization": f"Bearer {other_key}"}, bearer):
            target = job_id if headers is not bearer else uuid4()
            response = await client.get(
                f"{base}/api/v1/integrations/sync/progress/{target}", headers=headers
            )
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "job_not_found"
        # A token for another org's job names that org, so it cannot reach this one either.
        response = await client.get(url, params={"token": tokens.issue(job_id, other_org)})
        assert response.status_code == 404

        response = await client.get(
            f"{base}/api/v1/integrations/sync/progress/not-a-uuid", headers=bearer
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_job_id"

        assert (await client.get(f"{base}/healthz")).status_code == 200
        ready = await client.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": True, "broker": True}

        page = await client.get(f"{base}/progress/{job_id}", params={"token": "t"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "EventSource" in page.text and "<script src" not in page.text
        assert (await client.get(f"{base}/progress/nope")).status_code == 422


async def test_sigterm_stops_the_service_with_a_stream_open(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    port = free_port()
    env = service_env(
        settings,
        WOOSYNC_SECRET_KEY=settings.secret_key.get_secret_value(),
        WOOSYNC_TRACKER_PORT=str(port),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.tracker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=WAIT_S) as client:
            async with asyncio.timeout(15):
                while True:
                    assert process.returncode is None, "the tracker exited during start-up"
                    try:
                        if (await client.get(f"{base}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            url = f"{base}/api/v1/integrations/sync/progress/{job_id}"
            token = tokens_for(settings).issue(job_id, org_id)
            async with aconnect_sse(client, "GET", url, params={"token": token}) as source:
                stream = source.aiter_sse()
                assert (await anext(stream)).event == "progress"
                process.send_signal(signal.SIGTERM)
                # Open streams must not hold the shutdown up: it ends within the bound.
                _, stderr = await asyncio.wait_for(process.communicate(), WAIT_S)
                with pytest.raises((StopAsyncIteration, httpx.TransportError)):
                    await asyncio.wait_for(anext(stream), WAIT_S)  # the stream was closed
        # A clean shutdown ran the whole lifespan; uvicorn then re-raises the signal it caught.
        assert b"tracker stopped" in stderr
        assert process.returncode == -signal.SIGTERM
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
