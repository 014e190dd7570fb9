"""Fixtures shared by every test: an isolated database and an isolated broker namespace.

Each test gets its own PostgreSQL database, cloned from a template that is migrated once per
session, and its own exchange and queue names (a random namespace), deleted afterwards. Nothing
is mocked: RabbitMQ and PostgreSQL are the real servers on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import asyncpg
import pytest

from shared import db
from shared.settings import Settings
from shared.topology import Topology

PG_ADMIN_URL = os.environ.get("WOOSYNC_TEST_PG", "postgresql://127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("WOOSYNC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def _dsn(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def _migrations_fingerprint() -> str:
    digest = hashlib.sha256()
    for migration in db.discover():
        digest.update(migration.up.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database to clone from; rebuilt whenever the migrations change."""
    import asyncio

    name = f"woosync_tpl_{_migrations_fingerprint()}"

    async def build() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            # Serialise concurrent test sessions building the same template.
            await admin.execute("SELECT pg_advisory_lock(7428102)")
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                building = f"{name}_building_{uuid.uuid4().hex[:6]}"
                await admin.execute(f'CREATE DATABASE "{building}"')
                await db.migrate_up(_dsn(building))
                await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
            await admin.execute("SELECT pg_advisory_unlock(7428102)")
        finally:
            await admin.close()

    asyncio.run(build())
    yield name


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    name = f"woosync_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield _dsn(name)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def app_database_url(database_url: str) -> str:
    """The test database as the services reach it: as woosync_app, bound by row-level security."""
    scheme, rest = database_url.split("://", 1)
    host = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{db.APP_ROLE}@{host}"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The schema owner's pool: tests seed and inspect every org's rows through it."""
    p = await db.create_pool(database_url, min_size=1, max_size=5)
    yield p
    await p.close()


@pytest.fixture
async def app_pool(app_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The services' pool: handlers under test get this one, so row-level security applies."""
    p = await db.create_pool(app_database_url, min_size=1, max_size=5)
    yield p
    await p.close()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topology(namespace: str) -> Topology:
    # Short tiers keep retry tests fast; production uses 5 s / 30 s / 120 s.
    return Topology(namespace, retry_delays_ms=(200, 400, 800))


@pytest.fixture
async def clean_broker(topology: Topology) -> AsyncIterator[Topology]:
    """Deletes the test's queues and exchange afterwards."""
    yield topology
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in topology.queue_names():
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(topology.namespace)
    finally:
        await connection.close()


@pytest.fixture
def settings(database_url: str, app_database_url: str, clean_broker: Topology) -> Settings:
    return Settings(
        database_url=app_database_url,
        admin_database_url=database_url,
        amqp_url=AMQP_URL,
        namespace=clean_broker.namespace,
        secret_key="test-secret-key",  # type: ignore[arg-type]
        retry_delays_ms=list(clean_broker.retry_delays_ms),
        allow_private_urls=True,
        # Tests send bursts of requests; the rate limit has tests of its own with low limits.
        rate_limit_per_minute=100_000,
        rate_limit_burst=10_000,
        refused_key_limit_per_minute=100_000,
        refused_key_limit_burst=10_000,
    )
