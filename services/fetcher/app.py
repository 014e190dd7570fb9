"""Wiring of the fetcher: settings, pool, broker, the one subscriber."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from faststream import FastStream
from faststream.rabbit.annotations import RabbitMessage

from services.fetcher.handlers import FetcherDeps, PageReader, handle_sync_requested
from shared import db
from shared.broker import make_broker, publish
from shared.consuming import Parking, consume, raw_body
from shared.crypto import SecretBox
from shared.messages import SyncRequested
from shared.settings import Settings
from shared.topology import Topology, declare_topology
from shared.woocommerce import StoreConfig, WooClient

log = logging.getLogger("woosync.fetcher")


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, logger=logging.getLogger("woosync.fetcher.broker"))
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
    state: dict[str, FetcherDeps] = {}
    stopping = asyncio.Event()
    parking = Parking(broker, topology.parking(topology.fetcher_queue).name)

    @asynccontextmanager
    async def open_client(config: StoreConfig, concurrency: int) -> AsyncIterator[PageReader]:
        async with WooClient.from_settings(config, settings, max_connections=concurrency) as client:
            yield client

    async def startup() -> None:
        pool: asyncpg.Pool = await db.create_pool(settings.database_url, name="woosync-fetcher")
        await broker.connect()
        await declare_topology(broker, topology)
        state["deps"] = FetcherDeps(
            pool=pool,
            secrets=SecretBox.from_settings(settings),
            open_client=open_client,
            publish=functools.partial(publish, broker, topology),
            allow_private_urls=settings.allow_private_urls,
            stopping=stopping,
            max_store_customers=settings.max_store_customers,
            slice_s=settings.crawl_slice_s,
            check_interval_s=settings.crawl_check_interval_s,
            max_message_bytes=settings.max_message_bytes,
        )

    async def stop_crawls() -> None:
        """Before the broker waits for running handlers: crawls give their messages back now
        instead of running on for the whole graceful timeout."""
        stopping.set()

    async def shutdown() -> None:
        if "deps" in state:
            await state.pop("deps").pool.close()

    @broker.subscriber(topology.fetcher_queue, decoder=raw_body)
    async def on_sync_requested(msg: RabbitMessage) -> None:
        deps = state["deps"]
        await consume(
            msg, SyncRequested, lambda r: handle_sync_requested(r, deps), log, parking=parking
        )

    return FastStream(
        broker,
        logger=log,
        on_startup=[startup],
        on_shutdown=[stop_crawls],
        after_shutdown=[shutdown],
    )
