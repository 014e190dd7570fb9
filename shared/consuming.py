"""The consumer edge shared by the fetcher, syncer and tracker: decode, run, then settle.

Every broker message is read here: subscribers take the raw body (:func:`raw_body`, typed
with ``shared.messages.Contract`` so the AsyncAPI document shows their models), :func:`consume`
decodes it with :func:`parse` (the dead-letter tools classify parked messages with the same
function) and decides park or requeue.

A message that cannot be decoded into its model (not JSON, wrong schema, unknown version) is
parked: copied as it came to its queue's parking queue with a ``parked-error`` header naming
the reason, then acked; the reason is also logged with the message id. It is never requeued
forever and never crashes the consumer. Bodies are parsed with the standard library's ``json``
and then validated, not with pydantic's JSON parser, whose nesting limit (about 200 levels) would
make one deeply nested customer spoil its whole batch; a body nested past what ``json`` parses
(about 1000 levels) is parked like any malformed one.

Only a handler that fails because PostgreSQL or RabbitMQ is unreachable (``INFRASTRUCTURE_ERRORS``)
gets the message back (nack + requeue), after a pause that grows with the message's
``x-delivery-count`` (:func:`requeue_pause_s`), so a database outage of many minutes does not use
up the work queue's delivery limit (``shared.topology.DELIVERY_LIMIT``). Anything else that
escapes a handler is the data's fault or a bug (a ``RecursionError``, a ``ValidationError``, a
message too large for the broker, a value the database refuses): it is logged and the message
parked at once, with the reason, so one bad message can neither stall nor loop.

Settling (ack, nack, reject) can itself fail when the broker connection was lost while the
handler ran: the channel that delivered the message is gone. That is logged, not raised; the
broker redelivers every unacked message of a lost channel, and handlers make a redelivery
harmless.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from uuid import UUID

import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker
from faststream.rabbit.message import RabbitMessage
from pydantic import BaseModel, ValidationError

from shared import jsondepth
from shared.broker import publish_body_to_queue
from shared.logs import log_context, redact
from shared.messages import SCHEMA_VERSION
from shared.topology import ATTEMPT_HEADER, PARKED_ERROR_HEADER

M = TypeVar("M", bound=BaseModel)

# A lost or refused connection, a server that is restarting or overloaded: the same message will
# pass once it is back. Deliberately not here: OSError in general (a file or resource error of the
# handler's own making would requeue forever; only network errnos count, see NETWORK_ERRNOS),
# RecursionError, pydantic errors and asyncpg's data errors (the data's fault: parked).
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted: the socket to PostgreSQL or RabbitMQ
    socket.gaierror,  # the broker's or database's host name does not resolve (DNS outage)
    # Connecting to the database or broker, or waiting for a publisher confirm, timed out.
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,  # disk full, out of memory: transient for us
    asyncpg.OperatorInterventionError,  # admin shutdown (a restart), cancelled statements
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure: try again
    asyncpg.InternalClientError,  # a pooled connection the server cut mid-operation (restart)
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel died with the link
)

# OSErrors of a socket (asyncio's "Multiple exceptions: ... Connect call failed" has no errno).
NETWORK_ERRNOS = frozenset(
    {
        None,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.EADDRNOTAVAIL,
    }
)

REQUEUE_PAUSE_S = 1.0  # before the first requeue; doubled per earlier delivery, up to the max
REQUEUE_PAUSE_MAX_S = 30.0
DELIVERY_COUNT_HEADER = "x-delivery-count"
REASON_LIMIT = 1000

Settlement = Literal["ack", "requeue", "reject"]


class Requeue(Exception):
    """Raised by a handler that stops before it is done, as on a graceful shutdown mid-work:
    the message goes straight back to its queue for this or another consumer to take up."""


@dataclass(frozen=True)
class Parking:
    """Where a consumer parks what it cannot process: its queue's parking queue."""

    broker: RabbitBroker
    queue: str


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for an unreachable database or broker, also inside an exception group (a task group
    whose tasks lost the database): retrying the whole message later is then the answer."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_infrastructure_error(inner) for inner in exc.exceptions)
    if isinstance(exc, INFRASTRUCTURE_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """The one subscriber decoder: it leaves the body alone.

    FastStream's own decoder parses JSON before the handler runs, and under the manual ack policy
    a body it cannot parse would stay unacked forever; :func:`consume` parses and parks instead.
    """
    return message.body


class Malformed(ValueError):
    """A body that is none of the messages expected: parked with this reason, never retried."""


def parse(
    body: bytes,
    models: type[M] | Sequence[type[M]],
    *,
    routing_key: str | None = None,
) -> M:
    """The body as the one model of ``models`` it is valid for; raises :class:`Malformed`.

    The routing key picks the model when it is one of theirs; a message replayed from a parking
    queue through the default exchange carries the queue's name instead, and then the shape
    decides (unambiguous: every message forbids extra fields and has a field of its own).
    Parsed by ``json`` then validated as Python objects: no nesting limit of pydantic's parser
    applies to the free-form parts (a customer's ``meta_data``), which the syncer checks itself.
    """
    candidates = (models,) if isinstance(models, type) else tuple(models)
    label = "|".join(model.__name__ for model in candidates)
    try:
        data = jsondepth.parse(body)
    except RecursionError:
        raise Malformed(f"malformed {label}: body is nested too deeply to parse") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise Malformed(f"malformed {label}: body is not JSON") from None
    if not isinstance(data, dict):
        raise Malformed(f"malformed {label}: body is not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise Malformed(f"malformed {label}: unsupported schema_version {version!r}"[:200])
    by_key = {getattr(model, "routing_key", None): model for model in candidates}
    if routing_key is not None and routing_key in by_key:
        candidates = (by_key[routing_key],)
        label = candidates[0].__name__
    matches: list[M] = []
    problems: list[str] = []
    for model in candidates:
        try:
            matches.append(model.model_validate(data))
        except ValidationError as exc:
            problems.append(_problems(model, exc, several=len(candidates) > 1))
        except RecursionError:
            raise Malformed(f"malformed {label}: body is nested too deeply to validate") from None
    if len(matches) > 1:
        raise Malformed(f"malformed {label}: matches several of them")
    if not matches:
        raise Malformed(f"malformed {label}: " + "; ".join(problems))
    return matches[0]


def _problems(model: type[BaseModel], exc: ValidationError, *, several: bool) -> str:
    errors = exc.errors(include_input=False, include_url=False)[: 2 if several else 5]
    text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
    return f"not a {model.__name__} ({text})" if several else text


def decode(
    models: type[M] | Sequence[type[M]],
    msg: RabbitMessage,
    *,
    routing_key: str | None = None,
) -> M | str:
    """The message as one of ``models`` (see :func:`parse`), or the reason it is none."""
    try:
        return parse(msg.body, models, routing_key=routing_key)
    except Malformed as exc:
        return str(exc)


def delivery_count(headers: dict[str, Any] | None) -> int:
    """How many earlier deliveries of this message were returned (RabbitMQ's quorum queues say
    so in ``x-delivery-count``; absent on the first delivery)."""
    value = (headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def requeue_pause_s(count: int) -> float:
    """The pause before requeueing a message returned ``count`` times already:
    1, 2, 4, 8, 16, then 30 s each (see ``shared.topology.DELIVERY_LIMIT`` for the arithmetic)."""
    return min(REQUEUE_PAUSE_S * 2 ** min(count, 16), REQUEUE_PAUSE_MAX_S)


async def consume(
    msg: RabbitMessage,
    models: type[M] | Sequence[type[M]],
    handle: Callable[[M], Awaitable[None]],
    log: logging.Logger,
    *,
    parking: Parking | None = None,
) -> None:
    """Decode, run ``handle``, settle. Never raises: every outcome ends in a settlement.

    The one place that decides: a body none of ``models`` parked at once, ``Requeue`` and a lost
    database or broker back to the queue (the latter after a pause), anything else parked.

    Without ``parking``, what should be parked is rejected instead, which dead-letters it to the
    same parking queue through the queue's own dead-letter route, without the reason header.

    Every line logged meanwhile, by this edge or the handler, carries the AMQP message id and the
    message's job and org (``shared.logs.log_context``); a body that is no model still gives its
    ids when it has them, so the line that parks it names the job.
    """
    with log_context(message_id=msg.message_id or None):
        message = decode(models, msg, routing_key=_routing_key(msg))
        if isinstance(message, str):
            with log_context(**_ids_of(msg.body)):
                await park(msg, message, parking, log)
            return
        ids = {name: getattr(message, name, None) for name in ("job_id", "org_id")}
        with log_context(**ids):
            await _run(msg, message, handle, log, parking)


async def _run(
    msg: RabbitMessage,
    message: M,
    handle: Callable[[M], Awaitable[None]],
    log: logging.Logger,
    parking: Parking | None,
) -> None:
    """Run ``handle`` on a decoded message and settle it by how that went."""
    try:
        await handle(message)
    except Requeue as exc:
        log.info("giving %s back to its queue: %s", msg.message_id, exc)
        await settle(msg, "requeue", log)
        return
    except Exception as exc:
        if is_infrastructure_error(exc):
            pause = requeue_pause_s(delivery_count(msg.headers))
            log.warning(
                "infrastructure error on %s, requeueing in %.0fs: %r", msg.message_id, pause, exc
            )
            await asyncio.sleep(pause)
            await settle(msg, "requeue", log)
            return
        log.exception("handler failed on %s; parking it", msg.message_id)
        await park(msg, f"handler error: {type(exc).__name__}: {exc}", parking, log)
        return
    await settle(msg, "ack", log)


async def park(
    msg: RabbitMessage, reason: str, parking: Parking | None, log: logging.Logger
) -> None:
    """Move ``msg`` to its parking queue with ``reason`` in the ``parked-error`` header.

    Publish (confirmed), then ack. If the publish fails the message is rejected instead, so the
    queue's dead-letter route still parks it; the reason is in the log either way.
    """
    reason = _storable(redact(reason))[:REASON_LIMIT]
    log.error("parking message %s: %s", msg.message_id, reason)
    if parking is None:
        await settle(msg, "reject", log)
        return
    headers = {
        key: value
        for key, value in (msg.headers or {}).items()
        if not key.startswith("x-") and key != ATTEMPT_HEADER  # a replay starts afresh
    }
    headers[PARKED_ERROR_HEADER] = reason
    try:
        await publish_body_to_queue(
            parking.broker,
            parking.queue,
            msg.body,
            message_id=msg.message_id or None,
            headers=headers,
            content_type=msg.content_type or None,
        )
    except Exception as exc:
        log.warning(
            "could not park %s with its reason (%r); rejecting it to the parking queue",
            msg.message_id,
            exc,
        )
        await settle(msg, "reject", log)
        return
    await settle(msg, "ack", log)


async def settle(msg: RabbitMessage, how: Settlement, log: logging.Logger) -> None:
    """Ack, requeue or reject; a settlement lost with the channel is logged, not raised."""
    try:
        if how == "ack":
            await msg.ack()
        elif how == "requeue":
            await msg.nack(requeue=True)
        else:
            await msg.reject(requeue=False)
    except Exception as exc:
        if not is_infrastructure_error(exc):
            log.exception("could not %s %s", how, msg.message_id)
            return
        log.warning(
            "could not %s %s, its channel is gone (%r); the broker will redeliver it",
            how,
            msg.message_id,
            exc,
        )


def _ids_of(body: bytes) -> dict[str, str]:
    """``job_id`` and ``org_id`` of a body that may be no valid message, for its log lines:
    only well-formed UUIDs, so a malformed body cannot write what it likes into the log."""
    try:
        data = jsondepth.parse(body)
    except (RecursionError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    ids: dict[str, str] = {}
    for name in ("job_id", "org_id"):
        try:
            ids[name] = str(UUID(str(data[name])))
        except (KeyError, ValueError, TypeError):
            continue
    return ids


def _routing_key(msg: RabbitMessage) -> str | None:
    raw = getattr(msg, "raw_message", None)
    return getattr(raw, "routing_key", None)


def _storable(text: str) -> str:
    """Text an AMQP header accepts: no NUL, valid UTF-8."""
    return text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")
