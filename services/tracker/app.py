"""The tracker process as one Starlette app: HTTP routes, and the broker and recompute loop in its
lifespan, so uvicorn's start and stop (SIGTERM included) drive everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TypedDict

import aio_pika
import asyncpg
from faststream.rabbit import RabbitBroker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.tracker import queries as q
from services.tracker.handlers import Tracker, announce
from services.tracker.sse import progress, progress_page
from shared.broker import make_broker
from shared.consuming import Parking, raw_body
from shared.crypto import ProgressTokens
from shared.db import create_pool
from shared.paths import PROGRESS_PATH
from shared.ratelimit import RateLimiter, StreamSlots
from shared.settings import Settings
from shared.topology import Topology, declare_topology

log = logging.getLogger("woosync.tracker")

READY_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 2.0
POOL_CLOSE_TIMEOUT_S = 3.0
FULL_SWEEP_INTERVAL_S = 5.0
# A stream renews its lease at every credential check; a lease outlives a few missed checks.
STREAM_LEASE_PER_RECHECK = 4


class State(TypedDict):
    """What the lifespan hands to every request, as ``request.state``."""

    pool: asyncpg.Pool
    broker: RabbitBroker
    settings: Settings
    tokens: ProgressTokens
    refusals: RateLimiter  # per client address, for refused keys and tokens
    streams: StreamSlots  # open progress streams per org


async def healthz(request: Request) -> Response:
    """Liveness: the process answers HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: PostgreSQL answers and the broker connection is up."""
    pool: asyncpg.Pool = request.state.pool
    broker: RabbitBroker = request.state.broker
    try:
        database = await asyncio.wait_for(pool.fetchval(q.PING), READY_TIMEOUT_S) == 1
    except Exception:
        database = False
    broker_ok = await broker.ping(timeout=READY_TIMEOUT_S)
    ok = database and broker_ok
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": {"database": database, "broker": broker_ok},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


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


def build_app(settings: Settings) -> Starlette:
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        pool = await create_pool(settings.database_url, name="woosync-tracker")
        try:
            broker = make_broker(settings, logger=logging.getLogger("woosync.tracker.broker"))
            tracker = Tracker(
                pool,
                partial(announce, broker, topology),
                sweep_interval_s=settings.tracker_sweep_interval_s,
                full_sweep_interval_s=FULL_SWEEP_INTERVAL_S,
                parking=Parking(broker, topology.parking(topology.tracker_queue).name),
                stall_timeout_s=settings.stall_timeout_s,
                fetchers_consuming=partial(
                    consumer_count, settings.amqp_url, topology.fetcher_queue.name
                ),
            )
            # Registered before start(); the queue itself is declared by declare_topology.
            subscriber = broker.subscriber(topology.tracker_queue, decoder=raw_body)
            subscriber(tracker.on_event)
            await broker.connect()
            try:
                await declare_topology(broker, topology)
                await broker.start()
                loop_task = asyncio.create_task(tracker.run(), name="tracker-recompute")
                log.info("tracking %s", topology.tracker_queue.name)
                try:
                    yield State(
                        pool=pool,
                        broker=broker,
                        settings=settings,
                        tokens=ProgressTokens.from_settings(settings),
                        refusals=RateLimiter(
                            pool,
                            "tracker:refused",
                            settings.refused_key_limit_per_minute,
                            settings.refused_key_limit_burst,
                        ),
                        streams=StreamSlots(
                            pool,
                            "tracker:streams",
                            settings.max_sse_streams_per_org,
                            lease_s=STREAM_LEASE_PER_RECHECK * settings.sse_recheck_interval_s,
                        ),
                    )
                finally:
                    # Stop taking events, stop the loop, settle what was acked (which may still
                    # publish sync.completed), and only then close the connection.
                    await subscriber.stop()
                    loop_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop_task
                    await tracker.drain(DRAIN_TIMEOUT_S)
            finally:
                await broker.stop()
        finally:
            try:
                await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
            except TimeoutError:
                pool.terminate()
            log.info("tracker stopped")

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route(PROGRESS_PATH, progress, methods=["GET"]),
            Route("/progress/{job_id}", progress_page, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
