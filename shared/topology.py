"""The whole broker wiring in one place: exchange, queues, bindings, retry tiers, parking queues.

::

    <ns> (topic exchange)
      sync.requested  -> <ns>.fetcher.sync-requested
      customer.batch  -> <ns>.syncer.customer-batch
      customer.changed -> <ns>.syncer.customer-batch   (webhook deliveries, no job)
      line.* fetch.*  -> <ns>.tracker.events
      sync.completed  -> (no queue yet; published for integrations)

    <ns>.syncer.retry.<D>ms  quorum, TTL D, dead-letters back to <ns>.syncer.customer-batch
    <queue>.parking          one per work queue: rejected (malformed) and exhausted messages

Who publishes what where is :meth:`Topology.publications`; every service registers its own as
FastStream publishers (:func:`declare_publishers`), so the AsyncAPI document shows them
(``services.asyncapi``, committed as ``docs/asyncapi.json``).

Every work queue is a quorum queue whose own dead-letter target is its parking queue, so a message
rejected by a consumer is kept, never dropped.

Delivery limit. Every work queue declares ``x-delivery-limit`` = :data:`DELIVERY_LIMIT` (50)
explicitly, so it behaves the same on RabbitMQ 3.x (no default: unlimited) and 4.x (default 20);
a negative value is never sent (3.x would dead-letter on the first requeue). A message returned
more often than that is dead-lettered (reason ``delivery_limit``) to its parking queue: nothing
loops forever, nothing is dropped. What counts as a return: a consumer's requeue (up to 4.2; 4.3
counts only rejects), a channel or connection lost with the message unacked (a crash, a broker
connection loss, ``consumer_timeout``). Data errors never requeue (``shared.consuming``), so the
returns are outages and crashes. A consumer pauses before each requeue for 1, 2, 4, 8, 16, then
30 s (``shared.consuming.requeue_pause_s``, by ``x-delivery-count``), so 50 deliveries span at
least 1+2+4+8+16+30*45 s = 1381 s: a database outage of about 23 minutes is outlasted by every
message, while a message that can never be processed reaches its parking queue within the hour.
Parking queues and retry tiers have no delivery limit: a parking queue is only read by people
(peeking in the management console counts as a delivery), a tier is never consumed.
 Retry tiers use at-least-once dead-lettering so a
message in flight between a tier and the work queue survives a broker restart. Queue arguments
cannot change in place: a change here is a migration (new names, or delete and re-declare).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import aiormq.exceptions
from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

from shared import messages as m

DELIVERY_LIMIT = 50
ATTEMPT_HEADER = "retry-attempt"
PARKED_ATTEMPTS_HEADER = "parked-attempts"
PARKED_ERROR_HEADER = "parked-error"


def _work_queue(name: str) -> RabbitQueue:
    return RabbitQueue(
        name,
        queue_type=QueueType.QUORUM,
        durable=True,
        declare=False,  # declared (and bound) by declare_topology, before subscribers start
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}.parking",
            "x-delivery-limit": DELIVERY_LIMIT,
        },
    )


def _parking_queue(work: RabbitQueue) -> RabbitQueue:
    # No delivery limit: peeking in the management console counts as a delivery. On 4.x, whose
    # default is 20, "declared without one" means that default; peeks are rare and never loop.
    return RabbitQueue(f"{work.name}.parking", queue_type=QueueType.QUORUM, durable=True)


def _retry_tier(work: RabbitQueue, delay_ms: int) -> RabbitQueue:
    return RabbitQueue(
        f"{work.name}.retry.{delay_ms}ms",
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


@dataclass(frozen=True)
class Topology:
    namespace: str = "woosync"
    retry_delays_ms: tuple[int, ...] = (5_000, 30_000, 120_000)
    exchange: RabbitExchange = field(init=False)
    fetcher_queue: RabbitQueue = field(init=False)
    syncer_queue: RabbitQueue = field(init=False)
    tracker_queue: RabbitQueue = field(init=False)
    bindings: dict[str, tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        ns = self.namespace
        s = object.__setattr__
        s(self, "exchange", RabbitExchange(ns, type=ExchangeType.TOPIC, durable=True))
        s(self, "fetcher_queue", _work_queue(f"{ns}.fetcher.sync-requested"))
        s(self, "syncer_queue", _work_queue(f"{ns}.syncer.customer-batch"))
        s(self, "tracker_queue", _work_queue(f"{ns}.tracker.events"))
        s(
            self,
            "bindings",
            {
                self.fetcher_queue.name: (m.SyncRequested.routing_key,),
                self.syncer_queue.name: (
                    m.CustomerBatch.routing_key,
                    m.CustomerChanged.routing_key,
                ),
                self.tracker_queue.name: ("line.*", "fetch.*"),
            },
        )

    @property
    def work_queues(self) -> tuple[RabbitQueue, ...]:
        return (self.fetcher_queue, self.syncer_queue, self.tracker_queue)

    def parking(self, work: RabbitQueue) -> RabbitQueue:
        return _parking_queue(work)

    @property
    def retry_tiers(self) -> tuple[RabbitQueue, ...]:
        return tuple(_retry_tier(self.syncer_queue, d) for d in self.retry_delays_ms)

    def all_queues(self) -> list[RabbitQueue]:
        return [
            *self.work_queues,
            *(self.parking(q) for q in self.work_queues),
            *self.retry_tiers,
        ]

    def queue_names(self) -> list[str]:
        return [q.name for q in self.all_queues()]

    def consumed(self, work: RabbitQueue) -> tuple[type[m.Envelope], ...]:
        """The messages a work queue carries (and so its parking queue)."""
        return {
            self.fetcher_queue.name: (m.SyncRequested,),
            self.syncer_queue.name: (m.CustomerBatch, m.CustomerChanged),
            self.tracker_queue.name: m.TRACKER_EVENTS,
        }[work.name]

    def binding_note(self, work: RabbitQueue) -> str:
        """A work queue's bindings in words, for its subscriber's AsyncAPI description."""
        keys = ", ".join(f"`{key}`" for key in self.bindings[work.name])
        return f"Queue `{work.name}`, bound to {keys} on the `{self.exchange.name}` exchange."

    def publications(self, service: str) -> tuple[Publication, ...]:
        """What ``service`` publishes, and where: the publishers of the AsyncAPI document."""
        fetcher, syncer, tracker = self.work_queues

        def parking(work: RabbitQueue) -> Publication:
            return Publication(
                self.consumed(work),
                self.parking(work).name,
                "What this service cannot process, as it came, with `parked-error`.",
            )

        table: dict[str, tuple[Publication, ...]] = {
            "api": (
                Publication((m.SyncRequested,), None, "start and retry hand a job to a fetcher."),
                Publication((m.CustomerBatch,), None, "replay: a job's parked customers."),
                Publication(
                    (m.CustomerChanged,), None, "A store's webhook delivery, signature verified."
                ),
            ),
            "fetcher": (
                Publication((m.CustomerBatch,), None, "Each page read, its lines recorded first."),
                Publication((m.FetchCompleted,), None, "Every page read: the job can finish."),
                Publication((m.FetchFailed,), None, "The store refused or kept failing."),
                Publication((m.SyncRequested,), None, "A crawl slice hands its job on."),
                parking(fetcher),
            ),
            "syncer": (
                Publication((m.LinesDone,), None, "Lines committed as done."),
                Publication((m.LinesFailed,), None, "Lines failed for good (parked)."),
                *(
                    Publication(
                        (m.CustomerBatch,),
                        tier.name,
                        f"Failed customers, attempt {n}; back to `{syncer.name}` after the TTL.",
                    )
                    for n, tier in enumerate(self.retry_tiers, 1)
                ),
                Publication(
                    (m.CustomerBatch,),
                    self.parking(syncer).name,
                    "Customers that failed every attempt (`parked-attempts`, `parked-error`), "
                    "and batches the syncer cannot process.",
                ),
            ),
            "tracker": (
                Publication((m.SyncCompleted,), None, "A job reached a final state."),
                Publication(
                    (m.SyncRequested,), None, "A schedule fired: its job goes to a fetcher."
                ),
                parking(tracker),
            ),
        }
        return table.get(service, ())


@dataclass(frozen=True)
class Publication:
    """Messages one service publishes: to the topic exchange under each model's routing key
    (``queue`` None), or straight to a queue through the default exchange."""

    models: tuple[type[m.Envelope], ...]
    queue: str | None
    description: str


def declare_publishers(broker: RabbitBroker, topology: Topology, service: str) -> None:
    """Register ``service``'s publications as FastStream publishers, so the AsyncAPI document
    generated from the broker shows what it sends next to what it consumes.

    They describe; publishing itself goes through ``shared.broker`` (confirms, retries, size
    checks), whose routes these mirror. Starting them declares nothing new: the exchange they
    name is the topology's, and the default exchange needs no declaration.
    """
    for publication in topology.publications(service):
        if publication.queue is None:
            for model in publication.models:
                broker.publisher(
                    exchange=topology.exchange,
                    routing_key=model.routing_key,
                    persist=True,
                    title=f"{service}:{model.routing_key}",
                    description=publication.description,
                    schema=model,
                )
            continue
        models = publication.models
        broker.publisher(
            queue=RabbitQueue(publication.queue, declare=False),
            persist=True,
            title=f"{service}:{publication.queue}",
            description=publication.description,
            schema=models[0] if len(models) == 1 else Annotated[bytes, m.Contract(*models)],
        )


class TopologyMismatch(RuntimeError):
    """A queue exists with other arguments than this version declares (an upgrade step)."""


async def declare_topology(broker: RabbitBroker, topology: Topology) -> None:
    """Declare everything idempotently; every service calls this before it consumes."""
    exchange = await broker.declare_exchange(topology.exchange)
    for queue in topology.all_queues():
        try:
            declared = await broker.declare_queue(_declarable(queue))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"queue {queue.name} exists with other arguments than this version declares "
                f"({exc}); queue arguments cannot change in place: see docs/operations.md, "
                "'Delivery limit', for the upgrade steps"
            ) from exc
        for key in topology.bindings.get(queue.name, ()):
            await declared.bind(exchange, routing_key=key)


def _declarable(queue: RabbitQueue) -> RabbitQueue:
    if queue.declare:
        return queue
    args: dict[str, Any] = dict(queue.arguments or {})
    args.pop("x-queue-type", None)
    return RabbitQueue(
        queue.name, queue_type=QueueType.QUORUM, durable=True, arguments=args, declare=True
    )
