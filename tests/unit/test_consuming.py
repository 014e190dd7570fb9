"""The consumer edge: what is requeued (only lost connections) and how bodies are decoded."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from pydantic import ValidationError

from shared.consuming import (
    Malformed,
    Requeue,
    consume,
    decode,
    delivery_count,
    is_infrastructure_error,
    parse,
    requeue_pause_s,
)
from shared.logs import current_context
from shared.messages import TRACKER_EVENTS, CustomerBatch, FetchFailed, LinesDone
from shared.topology import DELIVERY_LIMIT


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def body(customers: list[Any]) -> bytes:
    ids = {"job_id": str(uuid4()), "org_id": str(uuid4()), "connection_id": str(uuid4())}
    return json.dumps({"schema_version": 1, **ids, "customers": customers}).encode()


@pytest.mark.parametrize("depth", [200, 600])
def test_batch_with_a_deeply_nested_customer_still_decodes(depth: int) -> None:
    # pydantic's own JSON parser stops at about 200 levels and would spoil the whole batch.
    customers = [{"id": 1, "meta_data": nested(depth)}, {"id": 2}]
    decoded = decode(CustomerBatch, SimpleNamespace(body=body(customers)))  # type: ignore[arg-type]
    assert isinstance(decoded, CustomerBatch)
    assert decoded.customers == customers


def test_body_too_deep_for_json_is_malformed_not_a_crash() -> None:
    text = body([{"id": 1, "meta_data": "X"}]).replace(b'"X"', b"[" * 5000 + b"]" * 5000)
    reason = decode(CustomerBatch, SimpleNamespace(body=text))  # type: ignore[arg-type]
    assert reason == "malformed CustomerBatch: body is nested too deeply to parse"


def test_malformed_body_gives_a_reason() -> None:
    reason = decode(CustomerBatch, SimpleNamespace(body=b'{"schema_version": 1}'))  # type: ignore[arg-type]
    assert isinstance(reason, str) and reason.startswith("malformed CustomerBatch: ")


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        ConnectionResetError(),
        OSError("Multiple exceptions: [Errno 111] Connect call failed"),
        OSError(113, "No route to host"),
        socket.gaierror(-2, "Name or service not known"),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.InterfaceError("connection is closed"),
        ExceptionGroup("tasks", [ValueError(), ConnectionResetError()]),
    ],
)
def test_lost_connections_are_infrastructure(exc: BaseException) -> None:
    assert is_infrastructure_error(exc)


def _validation_error() -> ValidationError:
    try:
        CustomerBatch.model_validate({})
    except ValidationError as exc:
        return exc
    raise AssertionError


@pytest.mark.parametrize(
    "exc",
    [
        RecursionError(),
        _validation_error(),
        ValueError("bad"),
        FileNotFoundError(2, "No such file"),
        OSError(28, "No space left on device"),
        asyncpg.DataError("value out of range"),
        asyncpg.NumericValueOutOfRangeError("bigint out of range"),
        asyncpg.ProgramLimitExceededError("index row size"),
        asyncpg.UniqueViolationError("duplicate key"),
    ],
)
def test_data_errors_are_not_infrastructure(exc: BaseException) -> None:
    assert not is_infrastructure_error(exc)


def test_requeue_pause_grows_and_outlasts_a_long_outage() -> None:
    pauses = [requeue_pause_s(n) for n in range(DELIVERY_LIMIT)]
    assert pauses[:6] == [1, 2, 4, 8, 16, 30] and max(pauses) == 30
    total = sum(pauses)
    print(f"requeue pauses before the delivery limit: {total:.0f} s")
    assert total >= 20 * 60  # a 20-minute database outage does not exhaust the limit


def test_delivery_count_header() -> None:
    assert delivery_count(None) == 0
    assert delivery_count({"x-delivery-count": 3}) == 3
    assert delivery_count({"x-delivery-count": "junk"}) == 0


# --- one decoder for every consumer and the dead-letter tools ----------------------------------


def test_routing_key_picks_the_model_else_the_shape_decides() -> None:
    ids = {"job_id": uuid4(), "org_id": uuid4()}
    done = LinesDone(woo_ids=[1], **ids)
    failed = FetchFailed(error="store said 503", **ids)
    assert parse(done.model_dump_json().encode(), TRACKER_EVENTS, routing_key="line.done") == done
    # Replayed through the default exchange: the routing key is a queue name.
    assert parse(failed.model_dump_json().encode(), TRACKER_EVENTS, routing_key="q") == failed
    with pytest.raises(Malformed, match=r"^malformed LinesFailed: "):
        parse(done.model_dump_json().encode(), TRACKER_EVENTS, routing_key="line.failed")
    with pytest.raises(Malformed, match=r"not a LinesDone \(.*not a FetchFailed \("):
        parse(b'{"schema_version": 1}', TRACKER_EVENTS)


class FakeDelivery:
    """What ``consume`` needs of a RabbitMessage; records how it was settled."""

    def __init__(self, body: bytes, headers: dict[str, Any] | None = None) -> None:
        self.body = body
        self.headers = headers or {}
        self.message_id = "m-1"
        self.content_type = "application/json"
        self.raw_message = SimpleNamespace(routing_key="customer.batch")
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append("requeue" if requeue else "nack")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append("reject")


def _raises(exc: BaseException) -> Callable[[Any], Awaitable[None]]:
    async def handle(_: Any) -> None:
        raise exc

    return handle


async def _ok(_: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("body", "handle", "settled"),
    [
        (body([{"id": 1}]), _ok, "ack"),
        (b"not json", _ok, "reject"),  # malformed: parked (rejected to the parking queue)
        (body([{"id": 1}]), _raises(ValueError("a bug")), "reject"),  # the data's fault: parked
        (body([{"id": 1}]), _raises(Requeue("shutting down")), "requeue"),
        (body([{"id": 1}]), _raises(ConnectionResetError()), "requeue"),  # lost database
    ],
)
async def test_consume_is_the_one_place_deciding_park_or_requeue(
    body: bytes, handle: Callable[[Any], Awaitable[None]], settled: str
) -> None:
    delivery = FakeDelivery(body)
    log = logging.getLogger("test.consume")
    await consume(delivery, CustomerBatch, handle, log)  # type: ignore[arg-type]
    assert delivery.settled == [settled]


# --- every line logged while a message is handled names it -------------------------------------


class Lines(logging.Handler):
    """The context ids each record carried when it was logged."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__()
        self.seen: list[dict[str, str]] = []
        log.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append({"message": record.getMessage(), **current_context()})


@pytest.mark.parametrize("fails", [False, True])
async def test_consume_binds_message_job_and_org_for_the_handler_and_itself(fails: bool) -> None:
    job, org = uuid4(), uuid4()
    raw = json.dumps(
        {"schema_version": 1, "job_id": str(job), "org_id": str(org),
         "connection_id": str(uuid4()), "customers": []}
    ).encode()
    log = logging.getLogger(f"test.consume.ids.{fails}")
    lines = Lines(log)
    log.addHandler(lines)

    async def handle(_: CustomerBatch) -> None:
        log.info("handling")
        if fails:
            raise ValueError("a bug")

    try:
        await consume(FakeDelivery(raw), CustomerBatch, handle, log)  # type: ignore[arg-type]
    finally:
        log.removeHandler(lines)
    ids = {"job_id": str(job), "org_id": str(org), "message_id": "m-1"}
    assert lines.seen and all(line.items() >= ids.items() for line in lines.seen), lines.seen
    assert len(lines.seen) == (3 if fails else 1)  # handling; handler failed; parking
    assert current_context() == {}


async def test_a_malformed_body_is_parked_with_whatever_ids_it_has() -> None:
    job = uuid4()
    log = logging.getLogger("test.consume.malformed")
    lines = Lines(log)
    log.addHandler(lines)
    try:
        raw = json.dumps({"job_id": str(job), "org_id": "not-a-uuid\nforged"}).encode()
        await consume(FakeDelivery(raw), CustomerBatch, _ok, log)  # type: ignore[arg-type]
    finally:
        log.removeHandler(lines)
    [line] = lines.seen
    assert line["message"].startswith("parking message m-1: malformed CustomerBatch")
    assert line["job_id"] == str(job) and line["message_id"] == "m-1" and "org_id" not in line
