"""The parking (dead-letter) queues: which one belongs to which work queue, and reading one
without consuming it.

Reading a parking queue without consuming it
--------------------------------------------
Messages are taken with ``basic.get`` and *held unacknowledged* until the scan ends, so no
message is seen twice, and are then given back with ``basic.nack(requeue=True)`` in the order they
were read. A crash, a timeout or a lost connection gives them back too (the broker requeues what
a closed channel held), so listing can never lose a message. On a quorum queue a requeue counts
as a delivery; parking queues have no delivery limit, so that is harmless. While a scan runs,
its messages are invisible to other readers, and a message parked during the scan lands before
the ones given back: order is kept among the messages that were read, not across the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from shared.parked import QUEUE_MODELS, ParkedMessage, QueueName, describe, matches
from shared.topology import (
    ATTEMPT_HEADER,
    PARKED_ATTEMPTS_HEADER,
    PARKED_ERROR_HEADER,
    Topology,
)

DEFAULT_LIMIT = 1000
DEFAULT_TIMEOUT_S = 60.0
GET_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Listing:
    queue: str
    messages: tuple[ParkedMessage, ...]
    more: bool  # the scan stopped at its limit; more messages are parked


def replay_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers a replayed copy keeps: not ours about parking or retries, not the broker's."""
    dropped = {PARKED_ATTEMPTS_HEADER, PARKED_ERROR_HEADER, ATTEMPT_HEADER}
    return {k: v for k, v in (headers or {}).items() if k not in dropped and not k.startswith("x-")}


async def open_connection(amqp_url: str, timeout_s: float = 10.0) -> AbstractConnection:
    """A plain (not robust) connection: a replay that loses the broker should stop, not wait."""
    return await aio_pika.connect(amqp_url, timeout=timeout_s)


async def take_all(
    channel: AbstractChannel, queue: str, limit: int
) -> tuple[list[AbstractIncomingMessage], bool]:
    """Up to ``limit`` messages of ``queue``, held unacked; and whether more remain."""
    declared = await channel.declare_queue(queue, passive=True)
    held: list[AbstractIncomingMessage] = []
    while len(held) < limit:
        message = await declared.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
        if message is None:
            return held, False
        held.append(message)
    probe = await channel.declare_queue(queue, passive=True)
    return held, bool(probe.declaration_result.message_count)


async def give_back(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Requeue in the order the messages were read (delivery tags grow on a channel)."""
    for message in sorted(messages, key=lambda msg: msg.delivery_tag or 0):
        await message.nack(requeue=True)


def parking_queue(topology: Topology, queue: QueueName) -> str:
    work = {
        "syncer": topology.syncer_queue,
        "fetcher": topology.fetcher_queue,
        "tracker": topology.tracker_queue,
    }[queue]
    return topology.parking(work).name


async def list_parked(
    connection: AbstractConnection,
    topology: Topology,
    *,
    queue: QueueName = "syncer",
    job_id: UUID | None = None,
    org_id: UUID | None = None,
    limit: int = DEFAULT_LIMIT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Listing:
    """The messages of a parking queue, left in place (see "Reading a parking queue").

    With ``job_id`` or ``org_id``, only the messages of that job or org (malformed ones, which
    name neither, only when no filter is given).
    """
    name = parking_queue(topology, queue)
    async with asyncio.timeout(timeout_s):
        channel = await connection.channel(publisher_confirms=False)
        try:
            held, more = await take_all(channel, name, limit)
            try:
                infos = [
                    describe(msg.body, msg.headers, msg.message_id, QUEUE_MODELS[queue])[0]
                    for msg in held
                ]
            finally:
                await give_back(held)
        finally:
            await channel.close()
    shown = tuple(i for i in infos if matches(i, job_id, org_id))
    return Listing(queue=name, messages=shown, more=more)
