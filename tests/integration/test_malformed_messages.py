"""Messages no consumer can understand are parked with their reason, once, and consuming goes on.

Bodies that are not JSON, JSON of the wrong shape, and a schema version from the future are
published to every work queue. Each must land in that queue's parking queue exactly once,
unchanged, with a ``parked-error`` header naming the reason, and be logged with its message id;
the work queue must be left empty (nothing requeued forever) and the consumer must take the
next good message. The fetcher is checked in-process; then all three consumers as real
processes, followed by a whole sync to prove each one still works.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from services.fetcher.app import build_app as build_fetcher
from shared.auth import create_org
from shared.crypto import SecretBox
from shared.messages import FetchCompleted, LinesDone, SyncRequested
from shared.settings import Settings
from shared.topology import PARKED_ERROR_HEADER, Topology
from tests.conftest import AMQP_URL
from tests.e2e.fault_stack import started_stack
from tests.e2e.harness import Stack, assert_exact, new_org, start_sync, wait_final
from tests.e2e.processes import infra_shared_lock
from tests.factories import queue_store_sync
from tools.woosim.testing import running_simulator, spawn_simulator

WAIT_S = 20.0


def malformed(valid: bytes) -> list[tuple[bytes, str]]:
    """(body, what its parked-error must say) for each kind of malformed message."""
    future = valid.replace(b'"schema_version":1', b'"schema_version":9')
    assert future != valid
    return [
        (b"\xff\xfe not json at all", "not JSON"),
        (b'["a", "list"]', "not a JSON object"),
        (b'{"schema_version": 1, "job_id": "not-a-uuid"}', "job_id"),
        (future, "schema_version 9"),
    ]


async def publish_raw(
    channel: aio_pika.abc.AbstractChannel, queue: str, body: bytes, message_id: str
) -> None:
    """Straight into the work queue, as a foreign or broken producer would."""
    await channel.default_exchange.publish(
        aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=queue,
    )


async def drain(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> list[Any]:
    """Take ``count`` messages from ``queue`` within WAIT_S. That no more arrive (a duplicate, a
    requeue loop) is checked once their consumer has gone past them (see the tests)."""
    declared = await channel.declare_queue(queue, passive=True)
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with asyncio.timeout(WAIT_S):
        while len(taken) < count:
            message = await declared.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                taken.append(message)
    return taken


async def depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


def assert_parked(
    parked: list[Any], sent: dict[str, tuple[bytes, str]], *, consumer: str
) -> None:
    by_id = {m.message_id: m for m in parked}
    assert set(by_id) == set(sent), f"{consumer}: parked {sorted(by_id)}, sent {sorted(sent)}"
    for message_id, (body, reason) in sent.items():
        message = by_id[message_id]
        assert message.body == body, f"{consumer}: {message_id} changed on its way"
        error = str(message.headers.get(PARKED_ERROR_HEADER, ""))
        assert reason in error, f"{consumer}: {message_id} parked with {error!r}"
        assert "retry-attempt" not in message.headers


@asynccontextmanager
async def broker_channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def seed_job(pool: asyncpg.Pool, settings: Settings, sim: Any) -> SyncRequested:
    org_id, _ = await create_org(pool, "acme")
    box = SecretBox.from_settings(settings)
    return await queue_store_sync(pool, org_id, sim, box, batch_size=10, concurrency=2)


@pytest.mark.timeout(60)
async def test_fetcher_parks_malformed_requests_and_goes_on(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    topology = clean_broker
    work, parking = topology.fetcher_queue.name, topology.parking(topology.fetcher_queue).name
    caplog.set_level(logging.INFO, logger="woosync.fetcher")
    async with running_simulator(customers=25, seed=5) as sim:
        request = await seed_job(pool, settings, sim)
        sent = {str(uuid.uuid4()): case for case in malformed(request.model_dump_json().encode())}
        # No syncer runs here to take the job's customers: its crawl must not wait for one
        # (services.fetcher.backlog).
        app = build_fetcher(settings.model_copy(update={"fetch_backlog_customers": 0}))
        await asyncio.wait_for(app.start(), WAIT_S)
        try:
            async with broker_channel() as channel:
                for message_id, (body, _) in sent.items():
                    await publish_raw(channel, work, body, message_id)
                await publish_raw(
                    channel, work, request.model_dump_json().encode(), str(request.message_id)
                )
                assert_parked(await drain(channel, parking, len(sent)), sent, consumer="fetcher")

                # The good request after them is read to the end.
                events = await drain(channel, topology.tracker_queue.name, 1)
                completed = FetchCompleted.model_validate_json(events[0].body)
                assert (completed.job_id, completed.customers) == (request.job_id, 25)
                assert await depth(channel, work) == 0
        finally:
            await asyncio.wait_for(app.stop(), WAIT_S)
        # The fetcher has stopped, so nothing more moves: a duplicate, a second event or a
        # message requeued in a loop would be in one of these queues now.
        async with broker_channel() as channel:
            for queue in (parking, topology.tracker_queue.name, work):
                assert await depth(channel, queue) == 0, f"{queue}: more than expected"

    logged = caplog.text
    for message_id in sent:
        assert f"parking message {message_id}: " in logged
    assert "body is not JSON" in logged and "schema_version 9" in logged


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    async with infra_shared_lock(), started_stack(settings, tmp_path) as stack:
        yield stack


@pytest.mark.timeout(120)
async def test_every_consumer_parks_malformed_messages_with_their_reason(
    settings: Settings, clean_broker: Topology, stack: Stack
) -> None:
    """Fetcher, syncer and tracker as real processes: each parks what it cannot read, logs it
    with the message id and the reason, stays up, and a whole sync afterwards is exact."""
    topology = clean_broker
    ids = {"job_id": uuid.uuid4(), "org_id": uuid.uuid4()}
    samples = {
        topology.fetcher_queue: SyncRequested(connection_id=uuid.uuid4(), **ids),
        topology.syncer_queue: LinesDone(woo_ids=[1], **ids),  # valid JSON, wrong model
        topology.tracker_queue: LinesDone(woo_ids=[1], **ids),
    }
    sent: dict[str, dict[str, tuple[bytes, str]]] = {}
    async with broker_channel() as channel:
        for queue, sample in samples.items():
            cases = malformed(sample.model_dump_json().encode())
            if queue is topology.syncer_queue:
                cases.append((sample.model_dump_json().encode(), "customers"))
            sent[queue.name] = {str(uuid.uuid4()): case for case in cases}
            for message_id, (body, _) in sent[queue.name].items():
                await publish_raw(channel, queue.name, body, message_id)
        for queue in samples:
            parked = await drain(channel, topology.parking(queue).name, len(sent[queue.name]))
            assert_parked(parked, sent[queue.name], consumer=queue.name)
            assert await depth(channel, queue.name) == 0

    for service, queue in (
        ("fetcher", topology.fetcher_queue),
        ("syncer", topology.syncer_queue),
        ("tracker", topology.tracker_queue),
    ):
        process = stack.processes[(service, 0)]
        assert process.poll() is None, f"{service} exited"
        log = (stack.log_dir / f"{service}-0.log").read_text(errors="replace")
        lines = log.splitlines()
        for message_id, (_, reason) in sent[queue.name].items():
            line = next((ln for ln in lines if f"parking message {message_id}" in ln), "")
            assert reason in line, f"{service} did not log {message_id} with its reason"
        assert "Traceback" not in log, log[-3000:]

    org = await new_org(settings)
    with spawn_simulator(customers=150, seed=9) as sim:
        store = await sim.customers()
        job = await start_sync(stack, org, sim)
        row = await wait_final(settings, job["job_id"], timeout_s=60)
        assert row["state"] == "done", row["last_error"]
        await assert_exact(settings, org, job["job_id"], store)

    # A whole sync has gone through every consumer since: a duplicate of a parked message, or
    # one requeued in a loop, would be in its parking queue by now.
    async with broker_channel() as channel:
        for queue in samples:
            parking = topology.parking(queue).name
            assert await depth(channel, parking) == 0, f"{parking}: more than expected"
