"""The topology declares on the real broker, twice, and routes each message to its queue."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import aio_pika
import pytest

from shared import messages as m
from shared.broker import make_broker, publish
from shared.settings import Settings
from shared.topology import DELIVERY_LIMIT, Topology, TopologyMismatch, declare_topology
from tests.conftest import AMQP_URL
from tests.helpers import wait_until


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
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queues = [*clean_broker.work_queues, *clean_broker.retry_tiers]

        async def routed() -> bool:  # every message published is in some queue
            return sum([await _depth(channel, queue.name) for queue in queues]) >= 4

        await wait_until(routed, "the 4 messages routed", 10)
        assert await _depth(channel, clean_broker.fetcher_queue.name) == 1
        assert await _depth(channel, clean_broker.syncer_queue.name) == 1
        assert await _depth(channel, clean_broker.tracker_queue.name) == 2
        for tier in clean_broker.retry_tiers:
            assert await _depth(channel, tier.name) == 0


async def test_work_queue_dead_letters_past_its_delivery_limit(clean_broker: Topology) -> None:
    """Issue 8: an explicit limit on every work queue, the same on 3.x and 4.x; a message
    returned more often is parked (dead-lettered), not dropped and not looping."""
    assert DELIVERY_LIMIT > 0  # never -1: RabbitMQ 3.x would dead-letter on the first requeue
    for queue in clean_broker.work_queues:
        assert (queue.arguments or {})["x-delivery-limit"] == DELIVERY_LIMIT
    for queue in [*(clean_broker.parking(q) for q in clean_broker.work_queues)]:
        assert "x-delivery-limit" not in (queue.arguments or {})
    broker = make_broker(Settings(namespace=clean_broker.namespace))
    await broker.connect()
    try:
        await declare_topology(broker, clean_broker)
    finally:
        await broker.stop()
    name = clean_broker.tracker_queue.name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=name)
        queue = await channel.declare_queue(name, passive=True)
        deliveries = 0
        counts = []
        for _ in range(DELIVERY_LIMIT + 5):
            message = None
            for _ in range(100):
                message = await queue.get(no_ack=False, fail=False)
                if message is not None:
                    break
                await asyncio.sleep(0.02)
            if message is None:
                break
            deliveries += 1
            counts.append((message.headers or {}).get("x-delivery-count", 0))
            await message.nack(requeue=True)
        parking = await channel.declare_queue(f"{name}.parking", passive=True)
        parked = None
        for _ in range(100):
            parked = await parking.get(no_ack=True, fail=False)
            if parked is not None:
                break
            await asyncio.sleep(0.05)
    print(f"deliveries before parking: {deliveries}; last x-delivery-count {counts[-1]}")
    assert deliveries == DELIVERY_LIMIT + 1
    assert counts[:3] == [0, 1, 2]  # what the consumer's growing pause reads
    assert parked is not None and parked.body == b"{}"
    assert parked.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_a_queue_declared_by_an_older_version_is_a_clear_error(
    clean_broker: Topology,
) -> None:
    """Upgrading: the work queues of an older deployment have no delivery limit, and RabbitMQ
    refuses to change arguments in place; the services say what to do instead of crashing."""
    name = clean_broker.fetcher_queue.name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{name}.parking",
            },
        )
    broker = make_broker(Settings(namespace=clean_broker.namespace))
    await broker.connect()
    try:
        with pytest.raises(TopologyMismatch) as info:
            await declare_topology(broker, clean_broker)
    finally:
        await broker.stop()
    assert name in str(info.value) and "docs/operations.md" in str(info.value)
    assert "x-delivery-limit" in str(info.value)
