"""Small helpers the integration tests share that are not database rows (see factories.py):
ports and servers, the syncer in-process, the environment of a service run as its own
process, the parking queue."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from services.syncer.app import build_app as build_syncer
from shared.broker import make_broker, publish_to_queue
from shared.messages import CustomerBatch
from shared.settings import Settings
from shared.topology import PARKED_ATTEMPTS_HEADER, PARKED_ERROR_HEADER, Topology


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now, for a process that binds it itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1: handed to uvicorn, no one can take the port
    between choosing and serving it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def uvicorn_serving(
    config: uvicorn.Config, sock: socket.socket, *, failure: str, wait_s: float
) -> AsyncIterator[None]:
    """Serve ``config``'s app on ``sock`` from start-up (``failure`` if it ends before) until the
    block ends; then shut it down and close ``sock``."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(wait_s):
            while not server.started:
                assert not task.done(), failure
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, wait_s)
        sock.close()


@asynccontextmanager
async def running_syncer(settings: Settings, wait_s: float = 20.0) -> AsyncIterator[None]:
    """The syncer app consuming in this process until the block ends."""
    app = build_syncer(settings)
    await asyncio.wait_for(app.start(), wait_s)
    try:
        yield
    finally:
        await asyncio.wait_for(app.stop(), wait_s)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment plus the test's database, broker namespace and retry tiers,
    for a service or the ``woosync`` command run as a process of its own."""
    return {
        **os.environ,
        "WOOSYNC_DATABASE_URL": settings.database_url,
        "WOOSYNC_AMQP_URL": settings.amqp_url,
        "WOOSYNC_NAMESPACE": settings.namespace,
        "WOOSYNC_RETRY_DELAYS_MS": json.dumps(settings.retry_delays_ms),
        **extra,
    }


async def park_like_the_syncer(
    settings: Settings, topology: Topology, batch: CustomerBatch
) -> None:
    """Put a batch in the syncer's parking queue exactly as the syncer parks one."""
    broker = make_broker(settings)
    await broker.connect()
    try:
        await publish_to_queue(
            broker,
            topology.parking(topology.syncer_queue).name,
            batch,
            headers={PARKED_ATTEMPTS_HEADER: 4, PARKED_ERROR_HEADER: "customer: refused"},
        )
    finally:
        await broker.stop()
