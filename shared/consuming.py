"""The consumer edge shared by the fetcher, syncer and tracker: decode, run, then settle.

A message that cannot be decoded into its model (not JSON, wrong schema, unknown version) is
rejected, which dead-letters it to its queue's parking queue: never requeued forever, never a
crash. A handler that fails because PostgreSQL or RabbitMQ is unreachable gets the message back
(nack + requeue) after a pause. Anything else that escapes a handler is a bug: it is logged and
the message parked, so one bad message cannot stall a queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
from faststream.message import StreamMessage
from faststream.rabbit.message import RabbitMessage
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,  # disk full, out of memory: transient for us
    asyncpg.OperatorInterventionError,  # admin shutdown (a restart), cancelled statements
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure: try again
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    asyncio.TimeoutError,
)

REQUEUE_PAUSE_S = 1.0


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """Subscriber decoder that leaves the body alone.

    FastStream's own decoder parses JSON before the handler runs, and under the manual ack policy
    a body it cannot parse would stay unacked forever; :func:`consume` parses and rejects instead.
    """
    return message.body


def decode(model: type[M], msg: RabbitMessage, log: logging.Logger) -> M | None:
    try:
        return model.model_validate_json(msg.body)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or e["type"] for e in exc.errors()[:5])
        log.error("rejecting malformed %s message %s: %s", model.__name__, msg.message_id, fields)
        return None


async def consume(
    msg: RabbitMessage,
    model: type[M],
    handle: Callable[[M], Awaitable[None]],
    log: logging.Logger,
) -> None:
    message = decode(model, msg, log)
    if message is None:
        await msg.reject(requeue=False)
        return
    try:
        await handle(message)
    except INFRASTRUCTURE_ERRORS as exc:
        log.warning("infrastructure error on %s, requeueing: %r", msg.message_id, exc)
        await asyncio.sleep(REQUEUE_PAUSE_S)
        await msg.nack(requeue=True)
        return
    except Exception:
        log.exception("handler failed on %s; parking it", msg.message_id)
        await msg.reject(requeue=False)
        return
    await msg.ack()
