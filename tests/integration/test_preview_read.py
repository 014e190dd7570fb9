"""A preview's reading of a store (services.fetcher.preview_read) against the simulator: every
customer once, and where the store's word cannot be trusted, a read that says it is not complete
instead of counting deletions it cannot prove."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from services.fetcher.preview_read import StoreRead, StoreTooLarge, read_store
from shared.woocommerce import StoreConfig, WooClient
from tests.helpers import FAST_RETRIES
from tools.woosim.testing import SimHandle, running_simulator


@asynccontextmanager
async def client_of(sim: SimHandle) -> AsyncIterator[WooClient]:
    config = StoreConfig(
        url=sim.url,
        consumer_key=sim.consumer_key,
        consumer_secret=sim.consumer_secret,
        auth="oauth1",
    )
    async with WooClient(config, policy=FAST_RETRIES, max_connections=4) as client:
        yield client


async def read(sim: SimHandle, **kwargs: Any) -> StoreRead:
    async with client_of(sim) as client:
        return await read_store(
            client,
            per_page=kwargs.pop("per_page", 100),
            concurrency=4,
            max_customers=kwargs.pop("max_customers", 10_000),
        )


async def test_every_customer_is_read_once_and_proven() -> None:
    async with running_simulator(customers=250, seed=31) as sim:
        result = await read(sim)
        assert sorted(result.customers) == [c["id"] for c in await sim.customers()]
        assert result.complete and result.problems == []
        assert result.total == 250
        # Windows of 100 overlapping by 5: 250 customers are 3 windows.
        assert result.pages == 3
        assert result.requests >= 3 and len(result.latencies_s) == result.requests


async def test_a_store_that_caps_its_page_size_is_read_with_its_size() -> None:
    async with running_simulator(customers=250, seed=32, faults={"per_page_cap": 40}) as sim:
        result = await read(sim)
        assert result.per_page == 40
        assert result.complete
        assert len(result.customers) == 250


async def test_a_false_total_makes_the_read_incomplete() -> None:
    async with running_simulator(customers=250, seed=33, faults={"claimed_total": 400}) as sim:
        result = await read(sim)
        assert not result.complete
        assert "400 customers (X-WP-Total)" in result.problems[0]
        assert len(result.customers) == 250


async def test_unordered_pages_cannot_be_proven() -> None:
    async with running_simulator(customers=250, seed=34, faults={"unordered_pages": True}) as sim:
        result = await read(sim)
        assert not result.complete
        assert any("ascending id order" in p for p in result.problems)


async def test_items_without_a_usable_id_are_kept_apart() -> None:
    async with running_simulator(customers=120, seed=35, faults={"bad_ids": ["abc"]}) as sim:
        result = await read(sim)
        assert len(result.rejected) == 1
        assert "not an integer" in next(iter(result.rejected.values()))
        assert len(result.customers) == 119
        assert result.complete


async def test_a_store_above_the_limit_is_refused() -> None:
    async with running_simulator(customers=150, seed=36) as sim:
        with pytest.raises(StoreTooLarge, match="150 customers"):
            await read(sim, max_customers=100)
