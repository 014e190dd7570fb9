"""Wiring of the syncer: settings, pool, broker, the one subscriber, and publishing an outcome.

A delivery is acked only after its customers and lines are committed and everything the outcome
asks for is confirmed by the broker (retry batch, parked batch, ``line.done``, ``line.failed``).
A crash in between means a redelivery, which the handler makes harmless.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from faststream import FastStream
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from services.syncer.handlers import BatchOutcome, handle_customer_batch, read_attempt
from shared import db
from shared.broker import make_broker, publish, publish_to_queue
from shared.consuming import Parking, consume
from shared.messages import CustomerBatch
from shared.settings import Settings
from shared.topology import (
    ATTEMPT_HEADER,
    PARKED_ATTEMPTS_HEADER,
    PARKED_ERROR_HEADER,
    Topology,
    declare_topology,
)

log = logging.getLogger("woosync.syncer")


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """Subscriber decoder that leaves the body alone.

    FastStream's own decoder parses JSON before the handler runs; under manual acks a body it
    cannot parse would stay unacked forever. ``consume`` parses, and rejects what is malformed.
    """
    return message.body


async def publish_outcome(broker: RabbitBroker, topology: Topology, outcome: BatchOutcome) -> None:
    """Publish what a delivery produced, each publish confirmed, before the delivery is acked."""
    if outcome.retry is not None and outcome.retry_attempt is not None:
        tier = topology.retry_tiers[outcome.retry_attempt - 1]
        await publish_to_queue(
            broker, tier.name, outcome.retry, headers={ATTEMPT_HEADER: outcome.retry_attempt}
        )
    if outcome.park is not None:
        await publish_to_queue(
            broker,
            topology.parking(topology.syncer_queue).name,
            outcome.park.batch,
            headers={
                PARKED_ATTEMPTS_HEADER: outcome.park.attempts,
                PARKED_ERROR_HEADER: outcome.park.error_text(),
            },
        )
    if outcome.done is not None:
        await publish(broker, topology, outcome.done)
    if outcome.failed is not None:
        await publish(broker, topology, outcome.failed)


def build_app(settings: Settings) -> FastStream:
    """The syncer as a FastStream app; nothing connects until the app starts."""
    broker = make_broker(settings, logger=logging.getLogger("woosync.syncer.broker"))
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
    max_attempts = len(topology.retry_tiers)
    parking = Parking(broker, topology.parking(topology.syncer_queue).name)
    pools: dict[str, asyncpg.Pool] = {}

    async def startup() -> None:
        # Declared before broker.start(), which starts the subscriber on the (passive) queue.
        pools["db"] = await db.create_pool(settings.database_url, name="woosync-syncer")
        await broker.connect()
        await declare_topology(broker, topology)
        log.info(
            "syncing from %s, retry tiers %s ms",
            topology.syncer_queue.name,
            list(topology.retry_delays_ms),
        )

    async def shutdown() -> None:
        if "db" in pools:
            await pools.pop("db").close()

    @broker.subscriber(topology.syncer_queue, decoder=raw_body)
    async def on_customer_batch(msg: RabbitMessage) -> None:
        pool = pools["db"]
        attempt = read_attempt(msg.headers)

        async def handle(batch: CustomerBatch) -> None:
            outcome = await handle_customer_batch(
                batch, attempt=attempt, pool=pool, max_attempts=max_attempts
            )
            await publish_outcome(broker, topology, outcome)

        await consume(msg, CustomerBatch, handle, log, parking=parking)

    return FastStream(broker, logger=log, on_startup=[startup], after_shutdown=[shutdown])
