"""Broker construction and publishing, the same for every service.

Publishing always goes through :func:`publish`: persistent messages, publisher confirms, and an
error when a message is unroutable, so a message is either in a queue or the caller knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker

from shared.messages import Message
from shared.settings import Settings
from shared.topology import Topology


def make_broker(settings: Settings, *, logger: Any = None) -> RabbitBroker:
    kwargs: dict[str, Any] = {}
    if logger is not None:
        kwargs["logger"] = logger
    return RabbitBroker(
        settings.amqp_url,
        default_channel=Channel(
            prefetch_count=settings.prefetch, publisher_confirms=True, on_return_raises=True
        ),
        ack_policy=AckPolicy.MANUAL,  # every handler acks only after its effect is committed
        reconnect_interval=2.0,
        graceful_timeout=10.0,
        **kwargs,
    )


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()


async def publish(
    broker: RabbitBroker,
    topology: Topology,
    message: Message,
    *,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish to the topic exchange under the message's routing key; waits for the confirm."""
    await broker.publish(
        encode(message),
        exchange=topology.exchange,
        routing_key=message.routing_key,
        persist=True,
        mandatory=True,
        message_id=str(message.message_id),
        content_type="application/json",
        headers=dict(headers or {}),
    )


async def publish_to_queue(
    broker: RabbitBroker,
    queue: str,
    message: Message,
    *,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish straight to a queue (retry tiers, parking) through the default exchange."""
    await broker.publish(
        encode(message),
        queue=queue,
        persist=True,
        mandatory=True,
        message_id=str(message.message_id),
        content_type="application/json",
        headers=dict(headers or {}),
    )
