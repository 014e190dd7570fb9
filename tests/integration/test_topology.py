"""The topology declares on the real broker, twice, and routes each message to its queue."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import aio_pika

from shared import messages as m
from shared.broker import make_broker, publish
from shared.settings import Settings
from shared.topology import Topology, declare_topology
from tests.conftest import AMQP_URL


async def _depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


async def test_declare_is_idempotent_and_routes(settings: Settings, clean_broker: Topology) -> None:
    broker = make_broker(settings)
    await broker.connect()
    try:
        await declare_topology(broker, clean_broker)
        await declare_topology(broker, clean_broker)  # second time: no PRECONDITION_FAILED
        ids = {"job_id": uuid4(), "org_id": uuid4()}
        await publish(broker, clean_broker, m.SyncRequested(connection_id=uuid4(), **ids))
        batch = m.CustomerBatch(connection_id=uuid4(), customers=[], **ids)
        await publish(broker, clean_broker, batch)
        await publish(broker, clean_broker, m.LinesDone(woo_ids=[1], **ids))
        await publish(broker, clean_broker, m.FetchCompleted(pages=1, customers=1, **ids))
    finally:
        await broker.stop()
    await asyncio.sleep(0.2)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        assert await _depth(channel, clean_broker.fetcher_queue.name) == 1
        assert await _depth(channel, clean_broker.syncer_queue.name) == 1
        assert await _depth(channel, clean_broker.tracker_queue.name) == 2
        for tier in clean_broker.retry_tiers:
            assert await _depth(channel, tier.name) == 0
