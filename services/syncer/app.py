"""The syncer's subscriber and publishing an outcome; the wiring is ``shared.runtime``.

A delivery is acked only after its customers and lines are committed and everything the outcome
asks for is confirmed by the broker (retry batch, parked batch, ``line.done``, ``line.failed``).
A crash in between means a redelivery, which the handler makes harmless. The syncer's counters
(``shared.metrics.SyncerMetrics``) move only once the outcome is published.
"""

from __future__ import annotations

import logging
from typing import Annotated

from faststream import FastStream
from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from services.syncer.handlers import BatchOutcome, handle_customer_batch, read_attempt
from shared.broker import publish, publish_to_queue
from shared.consuming import Parking, consume, raw_body
from shared.messages import Contract, CustomerBatch
from shared.metrics import SyncerMetrics
from shared.runtime import Runtime
from shared.settings import Settings
from shared.topology import (
    ATTEMPT_HEADER,
    PARKED_ATTEMPTS_HEADER,
    PARKED_ERROR_HEADER,
    Topology,
)

log = logging.getLogger("woosync.syncer")


def count_outcome(metrics: SyncerMetrics, topology: Topology, outcome: BatchOutcome) -> None:
    """Once a delivery's outcome is published: customers synced, parked, sent to a tier."""
    if outcome.done is not None:
        metrics.synced.inc(len(outcome.done.woo_ids))
    if outcome.park is not None:
        metrics.failed.inc(len(outcome.park.batch.customers))
    if outcome.retry is not None and outcome.retry_attempt is not None:
        tier = f"{topology.retry_delays_ms[outcome.retry_attempt - 1]}ms"
        metrics.retries.labels(tier).inc()
        metrics.retried_customers.labels(tier).inc(len(outcome.retry.customers))


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
    return build_service(settings)[0]


def build_asgi(settings: Settings) -> AsgiFastStream:
    """The syncer with its HTTP port: /healthz, /readyz, /metrics (``Runtime.asgi_app``)."""
    app, runtime = build_service(settings)
    return runtime.asgi_app(app)


def build_service(settings: Settings) -> tuple[FastStream, Runtime]:
    """The FastStream app and its runtime (whose registry holds the syncer's metrics)."""
    runtime = Runtime("syncer", settings)
    metrics = SyncerMetrics(runtime.registry)
    broker, topology = runtime.broker, runtime.topology
    max_attempts = len(topology.retry_tiers)
    parking = Parking(broker, topology.parking(topology.syncer_queue).name)

    async def started() -> None:
        log.info(
            "syncing from %s, retry tiers %s ms",
            topology.syncer_queue.name,
            list(topology.retry_delays_ms),
        )

    @broker.subscriber(
        topology.syncer_queue,
        decoder=raw_body,
        title="syncer",
        description="Customer batches to write; failed customers go through the retry tiers. "
        + topology.binding_note(topology.syncer_queue),
    )
    async def on_customer_batch(
        body: Annotated[bytes, Contract(CustomerBatch)], msg: RabbitMessage
    ) -> None:
        pool = runtime.pool
        attempt = read_attempt(msg.headers)

        async def handle(batch: CustomerBatch) -> None:
            outcome = await handle_customer_batch(
                batch, attempt=attempt, pool=pool, max_attempts=max_attempts
            )
            await publish_outcome(broker, topology, outcome)
            count_outcome(metrics, topology, outcome)

        await consume(msg, CustomerBatch, handle, log, parking=parking)

    return runtime.faststream_app(started=[started]), runtime
