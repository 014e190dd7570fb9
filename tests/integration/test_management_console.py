"""What an operator sees and does in the RabbitMQ management console, through its HTTP API.

Needs the ``rabbitmq_management``, ``rabbitmq_shovel`` and ``rabbitmq_shovel_management`` plugins,
which ``./scripts/bootstrap`` enables; the console tests skip only when port 15672 is closed.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from services.fetcher.app import build_app as build_fetcher
from shared.broker import make_broker, publish
from shared.settings import Settings
from shared.topology import DELIVERY_LIMIT, Topology, declare_topology
from tests.factories import (
    CONSTRAINT,
    POISON,
    add_poison_rule,
    fix_the_cause,
    make_read_job,
    small_customer,
)
from tests.helpers import (
    customer_ids,
    line_states,
    queue_depth,
    running_syncer,
    running_tracker,
    wait_state,
    wait_until,
    woosync,
)

CONSOLE = "http://127.0.0.1:15672"
VHOST = quote("/", safe="")
OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def console_is_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 15672), timeout=1):
            return True
    except OSError:
        return False


needs_console = pytest.mark.skipif(
    not console_is_up(),
    reason="the management console is not on 127.0.0.1:15672 "
    "(./scripts/bootstrap enables rabbitmq_management and the shovel plugins)",
)


@pytest.fixture
async def console() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"{CONSOLE}/api", auth=("guest", "guest"), timeout=10
    ) as client:
        yield client


async def declared(settings: Settings, topology: Topology) -> None:
    broker = make_broker(settings)
    await broker.connect()
    try:
        await declare_topology(broker, topology)
    finally:
        await broker.stop()


def expected_arguments(topology: Topology) -> dict[str, dict[str, Any]]:
    """Every queue's x-arguments, written out rather than derived from the topology code."""
    work = topology.syncer_queue.name
    expected: dict[str, dict[str, Any]] = {}
    for name in (topology.fetcher_queue.name, work, topology.tracker_queue.name):
        expected[name] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}.parking",
            "x-delivery-limit": DELIVERY_LIMIT,  # explicit, the same on 3.x and 4.x (issue 8)
        }
        expected[f"{name}.parking"] = {"x-queue-type": "quorum"}
    for delay in topology.retry_delays_ms:
        expected[f"{work}.retry.{delay}ms"] = {
            "x-queue-type": "quorum",
            "x-message-ttl": delay,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return expected


@needs_console
async def test_queues_exchange_and_bindings_are_readable_in_the_console(
    settings: Settings, clean_broker: Topology, console: httpx.AsyncClient
) -> None:
    topology = clean_broker
    await declared(settings, topology)
    expected = expected_arguments(topology)
    assert sorted(expected) == sorted(topology.queue_names())

    async def listed() -> dict[str, Any] | None:
        response = await console.get(
            f"/queues/{VHOST}",
            params={"columns": "name,type,durable,arguments", "name": f"^{topology.namespace}\\.",
                    "use_regex": "true", "page": 1, "page_size": 500},
        )  # fmt: skip
        response.raise_for_status()
        queues = {q["name"]: q for q in response.json()["items"]}
        return queues if set(queues) >= set(expected) else None

    queues = await wait_until(listed, "every queue listed by the console", timeout_s=15)
    assert set(queues) == set(expected)
    for name, arguments in expected.items():
        assert (queues[name]["type"], queues[name]["durable"]) == ("quorum", True), name
        assert queues[name]["arguments"] == arguments, name

    # One queue's own page: the work, retry and parking queues as an operator opens them.
    for name in (
        topology.syncer_queue.name,
        topology.retry_tiers[0].name,
        topology.parking(topology.syncer_queue).name,
    ):
        page = await console.get(f"/queues/{VHOST}/{quote(name, safe='')}")
        assert page.status_code == 200, page.text
        assert page.json()["arguments"] == expected[name]
        # Work queues have an explicit limit (issue 8); a parking queue, which operators peek
        # into, has none.
        if name != topology.syncer_queue.name:
            assert "x-delivery-limit" not in page.json()["arguments"]

    exchange = await console.get(f"/exchanges/{VHOST}/{topology.namespace}")
    assert exchange.status_code == 200, exchange.text
    assert (exchange.json()["type"], exchange.json()["durable"]) == ("topic", True)
    bindings = await console.get(f"/exchanges/{VHOST}/{topology.namespace}/bindings/source")
    assert {(b["destination"], b["routing_key"]) for b in bindings.json()} == {
        (queue, key) for queue, keys in topology.bindings.items() for key in keys
    }


def documented_queues() -> set[str]:
    """The queue names in the first column of docs/operations.md's queue table."""
    text = OPERATIONS_DOC.read_text()
    section = text.split("## Queues", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_operations_doc_lists_every_queue_of_the_default_namespace() -> None:
    assert documented_queues() == set(Topology().queue_names())


@needs_console
async def test_move_messages_from_the_console_replays_the_parked_customers(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool, console: httpx.AsyncClient
) -> None:
    topology = clean_broker
    parking = topology.parking(topology.syncer_queue).name
    job = await make_read_job(pool, [1, 2, 3])
    await add_poison_rule(pool)

    async with running_syncer(settings), running_tracker(settings):
        broker = make_broker(settings)
        await broker.connect()
        try:
            batch = [small_customer(1), small_customer(2), small_customer(3, first_name=POISON)]
            await publish(broker, topology, job.batch(batch))
        finally:
            await broker.stop()
        failed = await wait_state(pool, job, "failed")
        assert (failed["done_count"], failed["failed_count"]) == (2, 1)
        assert CONSTRAINT in (await pool.fetchval(
            "SELECT last_error FROM woo_customer_sync_queue_line WHERE woo_id = 3"
        ))  # fmt: skip
        assert await queue_depth(parking) == 1

        await fix_the_cause(pool)
        # Exactly what the console's "Move messages" form sends.
        name = f"Move from {parking}"
        shovel = f"/parameters/shovel/{VHOST}/{quote(name, safe='')}"
        response = await console.put(
            shovel,
            json={
                "component": "shovel",
                "vhost": "/",
                "name": name,
                "value": {
                    "src-uri": "amqp:///%2f",
                    "src-queue": parking,
                    "src-protocol": "amqp091",
                    "src-prefetch-count": 1000,
                    "src-delete-after": "queue-length",
                    "dest-protocol": "amqp091",
                    "dest-uri": "amqp:///%2f",
                    "dest-add-forward-headers": False,
                    "ack-mode": "on-confirm",
                    "dest-queue": topology.syncer_queue.name,
                },
            },
        )
        assert response.status_code in (201, 204), response.text

        async def shovel_gone() -> bool:
            return (await console.get(shovel)).status_code == 404

        await wait_until(shovel_gone, "the shovel deleted itself")

        async def synced() -> bool:
            return set((await line_states(pool, job)).values()) == {"done"}

        await wait_until(synced, "every line done")
        assert await customer_ids(pool, job) == [1, 2, 3]
        assert await queue_depth(parking) == 0

        # Every line done and every page read: the tracker turns the failed job into a done one
        # by itself, and a replay afterwards finds nothing left to do.
        done = await wait_state(pool, job, "done")
        assert (done["total"], done["done_count"], done["failed_count"]) == (3, 3, 0)
        assert done["last_error"] is None
        out = await woosync(settings, "dlq", "replay", "--job", str(job.job_id))
        assert "replayed 0 message(s)" in out and "0 job(s) re-opened" in out, out


@needs_console
async def test_the_fetcher_consumes_with_its_own_prefetch(
    settings: Settings, console: httpx.AsyncClient
) -> None:
    """WOOSYNC_FETCHER_PREFETCH is what the broker applies to the fetcher's consumer (one crawl
    per unacked sync request), not WOOSYNC_PREFETCH."""
    settings = settings.model_copy(update={"prefetch": 8, "fetcher_prefetch": 37})
    queue = Topology(settings.namespace).fetcher_queue.name
    app = build_fetcher(settings)
    await asyncio.wait_for(app.start(), 20)
    try:
        consumers: list[Any] = []
        for _ in range(100):  # the console lists a new consumer within its stats interval
            response = await console.get(f"/consumers/{VHOST}")
            response.raise_for_status()
            consumers = [c for c in response.json() if c["queue"]["name"] == queue]
            if consumers:
                break
            await asyncio.sleep(0.2)
    finally:
        await asyncio.wait_for(app.stop(), 20)
    assert [c["prefetch_count"] for c in consumers] == [37]
