"""Fixtures of the integration tests: the api served with one org, a small simulated store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.settings import Settings
from shared.topology import Topology
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
