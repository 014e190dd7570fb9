"""The fetcher's one subscriber and its deps; the wiring is ``shared.runtime``.

``build_app`` is the FastStream app (tests run it in process); ``build_asgi`` is the same app
behind the fetcher's HTTP port, which the process serves (``python -m services.fetcher``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from faststream import FastStream
from faststream.asgi import AsgiFastStream
from faststream.rabbit.annotations import RabbitMessage

from services.fetcher.backlog import Backlog
from services.fetcher.handlers import FetcherDeps, PageReader, handle_sync_requested
from shared.broker import publish
from shared.consuming import Parking, consume, raw_body
from shared.crypto import SecretBox
from shared.messages import Contract, SyncRequested
from shared.metrics import FetcherMetrics
from shared.runtime import Runtime
from shared.settings import Settings
from shared.storelimit import StoreLimits
from shared.woocommerce import RequestGate, StoreConfig, WooClient

log = logging.getLogger("woosync.fetcher")


def build_app(settings: Settings) -> FastStream:
    return build_service(settings)[0]


def build_asgi(settings: Settings) -> AsgiFastStream:
    """The fetcher with its HTTP port: /healthz, /readyz, /metrics (``Runtime.asgi_app``)."""
    app, runtime = build_service(settings)
    return runtime.asgi_app(app)


def build_service(settings: Settings) -> tuple[FastStream, Runtime]:
    """The FastStream app and its runtime (whose registry holds the fetcher's metrics)."""
    # Its one consumer holds WOOSYNC_FETCHER_PREFETCH sync requests: that many crawls at once,
    # most of them waiting on their backlog. Set on the broker's channel, not on the subscriber:
    # FastStream reuses the queue the topology declared, and consumes on that queue's channel.
    runtime = Runtime("fetcher", settings, prefetch=settings.fetcher_prefetch)
    metrics = FetcherMetrics(runtime.registry)
    broker, topology = runtime.broker, runtime.topology
    state: dict[str, FetcherDeps] = {}
    stopping = asyncio.Event()
    parking = Parking(broker, topology.parking(topology.fetcher_queue).name)

    @asynccontextmanager
    async def open_client(
        config: StoreConfig, concurrency: int, gate: RequestGate | None
    ) -> AsyncIterator[PageReader]:
        async with WooClient.from_settings(
            config, settings, max_connections=concurrency, gate=gate
        ) as client:
            yield client

    async def started() -> None:
        state["deps"] = FetcherDeps(
            pool=runtime.pool,
            secrets=SecretBox.from_settings(settings),
            open_client=open_client,
            publish=functools.partial(publish, broker, topology),
            allow_private_urls=settings.allow_private_urls,
            stopping=stopping,
            max_store_customers=settings.max_store_customers,
            slice_s=settings.crawl_slice_s,
            check_interval_s=settings.crawl_check_interval_s,
            max_message_bytes=settings.max_message_bytes,
            preview_max_customers=settings.preview_job_max_customers,
            observe_page=metrics.observe_page,
            store_limits=StoreLimits(
                runtime.pool,
                start=settings.default_concurrency,
                ceiling=settings.max_store_concurrency,
                max_pause_s=settings.store_backoff_max_s,
            ),
            default_concurrency=settings.default_concurrency,
            backlog=(
                Backlog(settings.fetch_backlog_customers, settings.fetch_backlog_poll_s)
                if settings.fetch_backlog_customers
                else None
            ),
        )

    async def stop_crawls() -> None:
        """Before the broker waits for running handlers: crawls give their messages back now
        instead of running on for the whole graceful timeout."""
        stopping.set()

    @broker.subscriber(
        topology.fetcher_queue,
        decoder=raw_body,
        title="fetcher",
        description="Sync requests: read the job's store page by page. "
        + topology.binding_note(topology.fetcher_queue),
    )
    async def on_sync_requested(
        body: Annotated[bytes, Contract(SyncRequested)], msg: RabbitMessage
    ) -> None:
        deps = state["deps"]
        await consume(
            msg, SyncRequested, lambda r: handle_sync_requested(r, deps), log, parking=parking
        )

    return runtime.faststream_app(started=[started], stopping=[stop_crawls]), runtime
