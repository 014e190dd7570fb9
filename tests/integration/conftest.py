"""Fixtures of the integration tests: the api served with one org, a small simulated store, a
database whose owner row-level security binds."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared import db
from shared.settings import Settings
from shared.topology import Topology
from tests.conftest import PG_ADMIN_URL, _dsn
from tests.helpers import Api, serving_api
from tools.woosim.testing import SimHandle, running_simulator


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool, clean_broker: Topology) -> AsyncIterator[Api]:
    """The api served on a free port, with one org and its key."""
    async with serving_api(settings, pool, clean_broker) as served:
        yield served


@pytest.fixture
async def store() -> AsyncIterator[SimHandle]:
    """A small simulated store the api can sync from."""
    async with running_simulator(customers=5, seed=1) as sim:
        yield sim


@pytest.fixture
async def plain_owner_database(template_database: str) -> AsyncIterator[str]:
    """A database migrated by a login role that is neither superuser nor BYPASSRLS: FORCE binds
    it, as it would a production owner. Yields the owner's URL."""
    role = f"woosync_owner_{uuid.uuid4().hex[:8]}"
    name = f"woosync_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS")
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {role}')
        scheme, rest = _dsn(name).split("://", 1)
        owner_url = f"{scheme}://{role}@{rest.rsplit('@', 1)[-1]}"
        await db.migrate_up(owner_url)
        yield owner_url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
