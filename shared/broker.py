"""Broker construction and publishing, the same for every service.

Publishing always goes through :func:`publish` (or its queue and raw-body variants): persistent
messages, publisher confirms, and an error when a message is unroutable, so a message is either
in a queue or the caller knows.

The connection is aio-pika's robust connection: when RabbitMQ goes away it reconnects by itself
and restores channels and consumers; :func:`make_broker` logs the loss and the recovery once
each, and doubles the pause between reconnect attempts (``RECONNECT_FIRST_S`` up to
``RECONNECT_MAX_S``) while the broker stays away. Handlers running when the connection drops
are cancelled by the client library; their messages were never acked, so the broker delivers
them again after the reconnect. A publish made while the connection is down, or whose confirm was
lost with it, raises; the publishers here retry it with exponential backoff and jitter for up
to ``PUBLISH_RETRY_BUDGET_S``, which outlasts a broker restart. A retried publish may have
reached the queue the first time (a lost confirm is not a refusal), so every consumer treats
duplicates as harmless; the message keeps its ``message_id`` across attempts.

Size. RabbitMQ closes the channel of a publisher whose message exceeds its ``max_message_size``
(16 MiB by default on 4.x, 128 MiB on 3.x), which would look like a broker failure and be retried.
So every publish first checks the body against ``WOOSYNC_MAX_MESSAGE_BYTES`` (16 MiB by default;
keep it at or below the broker's) and raises :class:`MessageTooLarge`, which is the data's fault
and never retried. :func:`split_customer_batch` cuts a ``CustomerBatch`` into parts under the
limit and names the customers too large to travel even alone, so they can fail alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import uuid5

import aiormq.exceptions as amqp
import orjson
import tenacity
from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker

from shared.messages import CustomerBatch, CustomerChanged, Envelope
from shared.settings import Settings
from shared.topology import Topology

log = logging.getLogger("woosync.broker")

RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 5.0
PUBLISH_TIMEOUT_S = 10.0  # one attempt, confirm included
PUBLISH_RETRY_BUDGET_S = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # RabbitMQ 4's default max_message_size
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 2.0

# Failures of the connection or channel: the robust connection is recovering, try again.
_TRANSIENT: tuple[type[BaseException], ...] = (
    amqp.AMQPConnectionError,  # includes ConnectionClosed
    amqp.ChannelInvalidStateError,  # publish on a channel that died with the connection
    amqp.ChannelClosed,
    amqp.DeliveryError,  # the broker nacked the publish (a queue not yet recovered)
    ConnectionError,
    TimeoutError,  # no confirm within PUBLISH_TIMEOUT_S
)
# Answers that another attempt cannot change: retrying would only delay the error.
_PERMANENT: tuple[type[BaseException], ...] = (
    amqp.PublishError,  # unroutable (basic.return): no queue is bound
    amqp.ChannelNotFoundEntity,
    amqp.ChannelAccessRefused,
    amqp.ChannelPreconditionFailed,
)


_limits: weakref.WeakKeyDictionary[RabbitBroker, int] = weakref.WeakKeyDictionary()


class MessageTooLarge(ValueError):
    """A body larger than ``WOOSYNC_MAX_MESSAGE_BYTES``, refused before it reached the broker."""

    def __init__(self, size: int, limit: int, target: str) -> None:
        super().__init__(
            f"message to {target} is {size} bytes, more than the {limit} bytes a message may "
            "carry (WOOSYNC_MAX_MESSAGE_BYTES)"
        )
        self.size = size
        self.limit = limit
        self.target = target


def max_message_bytes(broker: RabbitBroker) -> int:
    return _limits.get(broker, DEFAULT_MAX_MESSAGE_BYTES)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed publish is worth repeating once the connection is back."""
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, _PERMANENT)


@dataclass
class ConnectionWatch:
    """Connection callbacks: log the loss once and the recovery once, back off in between.

    aio-pika calls ``closed`` when the connection drops and again after every failed reconnect
    attempt, and sleeps ``reconnect_interval`` before the next one; doubling that attribute
    here turns its fixed pause into an exponential backoff.
    """

    log: logging.Logger
    lost_at: float | None = None

    def closed(self, connection: Any, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, asyncio.CancelledError):
            return  # our own close, at shutdown
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            self.log.warning("broker connection lost (%s); reconnecting", _describe(exc))
            return
        interval = getattr(connection, "reconnect_interval", None)
        if isinstance(interval, int | float):
            connection.reconnect_interval = min(interval * 2, RECONNECT_MAX_S)

    def reconnected(self, connection: Any) -> None:
        down_s = time.monotonic() - self.lost_at if self.lost_at is not None else 0.0
        self.lost_at = None
        connection.reconnect_interval = RECONNECT_FIRST_S
        self.log.warning("broker connection re-established after %.1fs; consumers restored", down_s)


def make_broker(
    settings: Settings, *, logger: logging.Logger | None = None, prefetch: int | None = None
) -> RabbitBroker:
    """A broker with manual acks and confirmed publishes that logs losing and regaining
    its connection to ``logger`` (``woosync.broker`` when not given). ``prefetch``: the
    messages each of its consumers holds at once (``WOOSYNC_PREFETCH`` when not given)."""
    watch = ConnectionWatch(logger or log)
    broker = RabbitBroker(
        settings.amqp_url,
        default_channel=Channel(
            prefetch_count=prefetch or settings.prefetch,
            publisher_confirms=True,
            on_return_raises=True,
        ),
        ack_policy=AckPolicy.MANUAL,  # every handler acks only after its effect is committed
        reconnect_interval=RECONNECT_FIRST_S,
        on_close=[watch.closed],
        on_reconnected=[watch.reconnected],
        graceful_timeout=10.0,
        logger=watch.log,
    )
    _limits[broker] = settings.max_message_bytes
    return broker


def encode(message: Envelope) -> bytes:
    """The message's JSON body. A ``CustomerBatch``'s customers are written by the standard
    library's ``json``: pydantic's serializer stops at about 250 levels of nesting, and customers
    are free-form (``meta_data``); the mapping decides what is too deep to store."""
    if isinstance(message, CustomerBatch):
        envelope = message.model_dump(mode="json", exclude={"customers"})
        return _json_bytes({**envelope, "customers": message.customers})
    if isinstance(message, CustomerChanged):
        envelope = message.model_dump(mode="json", exclude={"customer"})
        return _json_bytes({**envelope, "customer": message.customer})
    return message.model_dump_json().encode()


def _json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON. orjson when it can write the value exactly; it refuses what it
    cannot (a lone surrogate, an integer beyond 64 bits, a ``NonFiniteFloat`` from
    ``shared.jsondepth``, nesting past its limit), and ``json`` writes that instead: text that is
    not valid Unicode as ``\\u`` escapes, so it travels and fails only its own customer."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError included
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class Oversize:
    """A customer that cannot travel, even alone in a batch, and why."""

    customer: dict[str, Any]
    error: str


def split_customer_batch(
    batch: CustomerBatch, limit: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[list[CustomerBatch], list[Oversize]]:
    """``batch`` as batches whose bodies fit in ``limit`` bytes, in order, plus the customers
    that fit in no message (too large, or nested too deeply to encode).

    A batch that fits comes back as it is; parts of a split one get ids derived from its id, so
    a re-published split yields the same messages.
    """
    envelope = len(encode(batch.model_copy(update={"customers": []})))
    parts: list[list[dict[str, Any]]] = [[]]
    oversize: list[Oversize] = []
    size = envelope
    for customer in batch.customers:
        try:
            length = len(_json_bytes(customer))
        except (RecursionError, ValueError, TypeError) as exc:
            oversize.append(Oversize(customer, f"customer cannot be encoded as JSON: {exc}"[:200]))
            continue
        if envelope + length > limit:
            oversize.append(
                Oversize(
                    customer,
                    f"customer is {length} bytes as JSON, more than a message may carry "
                    f"({limit} bytes, WOOSYNC_MAX_MESSAGE_BYTES)",
                )
            )
            continue
        separator = 1 if parts[-1] else 0
        if parts[-1] and size + separator + length > limit:
            parts.append([])
            size, separator = envelope, 0
        parts[-1].append(customer)
        size += separator + length
    parts = [part for part in parts if part]
    if len(parts) == 1 and not oversize:
        return [batch], []
    return [
        batch.model_copy(
            update={"customers": part, "message_id": uuid5(batch.message_id, f"part-{index}")}
        )
        for index, part in enumerate(parts)
    ], oversize


async def publish(
    broker: RabbitBroker,
    topology: Topology,
    message: Envelope,
    *,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish to the topic exchange under the message's routing key; waits for the confirm."""
    await _confirmed(
        broker,
        encode(message),
        target=message.routing_key,
        exchange=topology.exchange,
        routing_key=message.routing_key,
        message_id=str(message.message_id),
        headers=headers,
    )


async def publish_to_queue(
    broker: RabbitBroker,
    queue: str,
    message: Envelope,
    *,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish straight to a queue (retry tiers, parking) through the default exchange."""
    await publish_body_to_queue(
        broker, queue, encode(message), message_id=str(message.message_id), headers=headers
    )


async def publish_body_to_queue(
    broker: RabbitBroker,
    queue: str,
    body: bytes,
    *,
    message_id: str | None,
    headers: Mapping[str, Any] | None = None,
    content_type: str | None = "application/json",
) -> None:
    """Publish bytes as they are to a queue: parking a message that is not a valid model."""
    await _confirmed(
        broker,
        body,
        target=queue,
        queue=queue,
        message_id=message_id,
        headers=headers,
        content_type=content_type,
    )


async def _confirmed(
    broker: RabbitBroker,
    body: bytes,
    *,
    target: str,
    headers: Mapping[str, Any] | None,
    content_type: str | None = "application/json",
    **where: Any,
) -> None:
    """One persistent, mandatory, confirmed publish, repeated while the failure is transient."""
    limit = max_message_bytes(broker)
    if len(body) > limit:
        raise MessageTooLarge(len(body), limit, target)
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_delay(PUBLISH_RETRY_BUDGET_S),
        wait=tenacity.wait_random_exponential(multiplier=_BACKOFF_FIRST_S, max=_BACKOFF_MAX_S),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=_log_retry(target),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            await broker.publish(
                body,
                persist=True,
                mandatory=True,
                timeout=PUBLISH_TIMEOUT_S,
                content_type=content_type,
                headers=dict(headers or {}),
                **where,
            )


def _log_retry(target: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        # The first failure is news; the rest of an outage is noise at INFO.
        level = logging.WARNING if state.attempt_number == 1 else logging.INFO
        log.log(
            level,
            "publish to %s failed (%s), attempt %d; retrying in %.2fs",
            target,
            _describe(failure),
            state.attempt_number,
            delay,
        )

    return before_sleep


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
