"""What every benchmark needs: a fresh database and broker namespace, and their clean-up."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg

from shared import db
from shared.topology import Topology

PG = os.environ.get("WOOSYNC_BENCH_PG", "postgresql://127.0.0.1:5432/postgres")
AMQP = os.environ.get("WOOSYNC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BenchStack:
    database: str
    dsn: str  # the schema owner's: benchmarks seed and check every org through it
    namespace: str
    env: dict[str, str]


async def fresh_stack(label: str) -> BenchStack:
    """A migrated database, a namespace, and the services' environment for them."""
    database = f"woosync_{label}_{uuid.uuid4().hex[:8]}"
    dsn = PG.rsplit("/", 1)[0] + "/" + database
    namespace = f"{label}{uuid.uuid4().hex[:8]}"
    await db.migrate_up(dsn)
    scheme, rest = dsn.split("://", 1)
    app_dsn = f"{scheme}://{db.APP_ROLE}@{rest.rsplit('@', 1)[-1]}"  # as in production
    env = {
        "WOOSYNC_DATABASE_URL": app_dsn, "WOOSYNC_AMQP_URL": AMQP, "WOOSYNC_NAMESPACE": namespace,
        "WOOSYNC_API_PORT": str(free_port()), "WOOSYNC_TRACKER_PORT": str(free_port()),
        "WOOSYNC_FETCHER_PORT": "0", "WOOSYNC_SYNCER_PORT": "0",  # a free port each
        "WOOSYNC_ALLOW_PRIVATE_URLS": "true", "WOOSYNC_LOG_LEVEL": "WARNING",
        "WOOSYNC_SECRET_KEY": f"{label}-secret",
    }
    return BenchStack(database, dsn, namespace, env)


async def drop(stack: BenchStack) -> None:
    """Drop the database and the namespace's queues; waits out a database restart."""
    for _ in range(60):
        try:
            admin = await asyncpg.connect(PG)
            break
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(1)
    else:
        print(f"  could not drop database {stack.database}")
        return
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{stack.database}" WITH (FORCE)')
    finally:
        await admin.close()
    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel()
        for name in Topology(stack.namespace).queue_names():
            await channel.queue_delete(name)
        await channel.exchange_delete(stack.namespace)


def start_body(
    org_id: UUID, sim: Any, options: dict[str, Any], *, auth: str = "oauth1"
) -> dict[str, Any]:
    """A start request for the simulated store ``sim`` with the simulator's keys (OAuth 1, or
    ``auth`` as the store connection's auth mode)."""
    return {
        "action": "start",
        "org_id": str(org_id),
        "config": {
            "url": sim.url,
            "consumer_key": sim.consumer_key,
            "consumer_secret": sim.consumer_secret,
            "auth": auth,
        },
        "options": options,
    }
