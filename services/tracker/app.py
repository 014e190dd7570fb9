"""The tracker process as one Starlette app: its subscriber and routes here, the wiring in
``shared.runtime`` run as the lifespan, so uvicorn's start and stop (SIGTERM included) drive
everything; the recompute loop, the scheduled cleanup (``services.tracker.cleanup``) and the
schedules (``services.tracker.scheduler``) run between the runtime's open and close. The jobs
page (``services.tracker.jobs_page``) is served here too.

``/metrics`` (``shared.metrics``) reads jobs by state and every queue's depth when scraped: the
tracker is the one service that already looks across orgs and queues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Annotated, TypedDict

import aio_pika
import asyncpg
import httpx
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.asyncapi import Served
from services.tracker.cleanup import Cleaner, replica_name
from services.tracker.feeds import JobFeeds, SharedChecks, pool_reader
from services.tracker.handlers import Tracker, announce
from services.tracker.jobs_page import API_TIMEOUT_S, JobsPage
from services.tracker.scheduler import Scheduler, publish_confirmed
from services.tracker.sse import key_checker, progress, progress_page
from services.tracker.webhooks import WebhookWatcher
from shared import web
from shared.auth import authenticate
from shared.consuming import Parking, consume, raw_body
from shared.crypto import ProgressTokens
from shared.messages import (
    TRACKER_EVENTS,
    Contract,
    FetchCompleted,
    FetchFailed,
    LinesDone,
    LinesFailed,
)
from shared.metrics import HttpMetrics, RequestMetrics, TrackerMetrics, metrics_endpoint
from shared.paths import PROGRESS_PAGE_PATH, PROGRESS_PATH
from shared.ratelimit import StreamSlots
from shared.runtime import Runtime
from shared.settings import Settings
from shared.topology import Topology
from shared.web import READY_TIMEOUT_S, ApiError, RefusedCallers, error_response

log = logging.getLogger("woosync.tracker")

DRAIN_TIMEOUT_S = 2.0
FULL_SWEEP_INTERVAL_S = 5.0
# A stream renews its lease at every credential check; a lease outlives a few missed checks.
STREAM_LEASE_PER_RECHECK = 4

Event = Annotated[bytes, Contract(LinesDone, LinesFailed, FetchCompleted, FetchFailed)]


class State(TypedDict):
    """What the lifespan hands to every request, as ``request.state``."""

    pool: asyncpg.Pool
    broker: RabbitBroker
    settings: Settings
    tokens: ProgressTokens
    refusals: RefusedCallers  # per client address, for refused keys and tokens
    streams: StreamSlots  # open progress streams per org
    feeds: JobFeeds  # one status poller per followed job, shared by its streams
    checks: SharedChecks  # the streams' credential rechecks and lease renewals, shared
    api: httpx.AsyncClient  # the api, for the jobs page's requests (services.tracker.jobs_page)


readyz = web.readyz(lambda r: (r.state.pool, r.state.broker), web.readiness_body)


async def consumer_count(amqp_url: str, queue: str) -> int:
    """How many consumers ``queue`` has, on a short-lived connection of its own (a passive
    declare; the broker's own channels cache declarations)."""
    connection = await aio_pika.connect(amqp_url, timeout=READY_TIMEOUT_S)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.consumer_count or 0)
    finally:
        await connection.close()


async def asyncapi(request: Request) -> Response:
    """``GET /asyncapi.json``: the messages' AsyncAPI document, for an API key."""
    refusals: RefusedCallers = request.state.refusals
    try:
        await refusals.check(request)
    except ApiError as exc:
        return exc.response()
    if await authenticate(request.state.pool, request.headers.get("authorization")) is None:
        await refusals.refused(request)
        return error_response(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    served: Served = request.app.state.asyncapi
    return JSONResponse(await served.get())


# Jobs of every org by state, aggregates only (migration 0014): the tracker runs as woosync_app,
# which row-level security confines to one org per transaction.
SELECT_JOB_STATE_COUNTS = "SELECT state, jobs FROM woosync_job_state_counts()"


async def queue_depths(amqp_url: str, topology: Topology) -> list[tuple[str, str, int, int]]:
    """(queue, role, messages ready, consumers) of every queue of the topology, by passive
    declares on a short-lived connection of its own (the broker's channels cache declarations)."""
    roles = [(q.name, "work") for q in topology.work_queues]
    roles += [(topology.parking(q).name, "parking") for q in topology.work_queues]
    roles += [(q.name, "retry") for q in topology.retry_tiers]
    connection = await aio_pika.connect(amqp_url, timeout=READY_TIMEOUT_S)
    try:
        channel = await connection.channel()
        depths = []
        for name, role in roles:
            result = (await channel.declare_queue(name, passive=True)).declaration_result
            depths.append(
                (name, role, int(result.message_count or 0), int(result.consumer_count or 0))
            )
        return depths
    finally:
        await connection.close()


def metrics_refresh(runtime: Runtime, metrics: TrackerMetrics) -> Callable[[], Awaitable[None]]:
    """Read jobs by state and queue depths for a scrape; a source that cannot be read keeps its
    last values and counts a refresh error."""

    async def refresh() -> None:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                rows = await runtime.pool.fetch(SELECT_JOB_STATE_COUNTS)
            metrics.set_jobs({row["state"]: row["jobs"] for row in rows})
        except Exception:
            log.warning("metrics: jobs by state unreadable", exc_info=True)
            metrics.refresh_errors.labels("database").inc()
        try:
            async with asyncio.timeout(READY_TIMEOUT_S * 2):
                depths = await queue_depths(runtime.settings.amqp_url, runtime.topology)
            for queue, role, messages, consumers in depths:
                metrics.set_queue(queue, role, messages, consumers)
        except Exception:
            log.warning("metrics: queue depths unreadable", exc_info=True)
            metrics.refresh_errors.labels("broker").inc()

    return refresh


def build_app(settings: Settings) -> Starlette:
    runtime = Runtime("tracker", settings)
    broker, topology = runtime.broker, runtime.topology
    http_metrics = HttpMetrics(runtime.registry)
    tracker_metrics = TrackerMetrics(runtime.registry)
    parking = Parking(broker, topology.parking(topology.tracker_queue).name)
    trackers: dict[str, Tracker] = {}

    @broker.subscriber(
        topology.tracker_queue,
        decoder=raw_body,
        title="tracker",
        description="Job events: lines done or failed, fetches completed or failed. "
        + topology.binding_note(topology.tracker_queue),
    )
    async def on_event(body: Event, msg: RabbitMessage) -> None:
        await consume(msg, TRACKER_EVENTS, trackers["tracker"].on_event, log, parking=parking)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with runtime.serving() as pool:
            feeds = JobFeeds(pool_reader(pool), settings.progress_interval_s)
            tracker = trackers["tracker"] = Tracker(
                pool,
                partial(announce, broker, topology),
                sweep_interval_s=settings.tracker_sweep_interval_s,
                full_sweep_interval_s=FULL_SWEEP_INTERVAL_S,
                stall_timeout_s=settings.stall_timeout_s,
                fetchers_consuming=partial(
                    consumer_count, settings.amqp_url, topology.fetcher_queue.name
                ),
                on_finished=feeds.poke,
            )
            await runtime.start_consuming()
            loop_task = asyncio.create_task(tracker.run(), name="tracker-recompute")
            cleaner = Cleaner(
                settings.leader_database_url(),
                statement_cache_size=settings.db_statement_cache_size,
                retention=timedelta(days=settings.retention_days),
                interval_s=settings.cleanup_interval_s,
                batch_size=settings.cleanup_batch_size,
            )
            cleanup_task = asyncio.create_task(cleaner.run(), name="tracker-cleanup")
            watcher = WebhookWatcher(pool, settings, name=replica_name())
            webhook_task = asyncio.create_task(watcher.run(), name="tracker-webhooks")
            scheduler = Scheduler(
                settings.leader_database_url(),
                pool,
                partial(publish_confirmed, broker, topology),
                settings,
            )
            schedule_task = asyncio.create_task(scheduler.run(), name="tracker-scheduler")
            log.info("tracking %s", topology.tracker_queue.name)
            api = httpx.AsyncClient(base_url=settings.jobs_page_api_base(), timeout=API_TIMEOUT_S)
            streams = StreamSlots(
                pool,
                "tracker:streams",
                settings.max_sse_streams_per_org,
                lease_s=STREAM_LEASE_PER_RECHECK * settings.sse_recheck_interval_s,
            )
            try:
                yield State(
                    pool=pool,
                    broker=broker,
                    settings=settings,
                    tokens=ProgressTokens.from_settings(settings),
                    refusals=RefusedCallers(
                        pool, "tracker", settings, "a refused API key or token"
                    ),
                    streams=streams,
                    api=api,
                    feeds=feeds,
                    checks=SharedChecks(
                        key_checker(pool), streams.renew_many, settings.sse_recheck_interval_s
                    ),
                )
            finally:
                await api.aclose()
                # Stop taking events, stop the loop, settle what was acked (which may still
                # publish sync.completed); the runtime then closes the broker and the pool.
                await runtime.stop_consuming()
                # The scheduler, the cleaner and the watcher let go of their locks.
                for task in (schedule_task, cleanup_task, webhook_task, loop_task):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await tracker.drain(DRAIN_TIMEOUT_S)
        log.info("tracker stopped")

    app = Starlette(
        routes=[
            Route("/healthz", web.healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route(PROGRESS_PATH, progress, methods=["GET"]),
            Route(PROGRESS_PAGE_PATH, progress_page, methods=["GET"]),
            Route("/asyncapi.json", asyncapi, methods=["GET"]),
            *JobsPage.load().routes(),
            Route(
                "/metrics",
                metrics_endpoint(runtime.registry, metrics_refresh(runtime, tracker_metrics)),
                methods=["GET"],
            ),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RequestMetrics, metrics=http_metrics)],
    )
    app.state.runtime = runtime  # its broker declares the subscriber (the AsyncAPI document)
    app.state.asyncapi = Served(settings)
    return app
