"""The api's connection test on ``start`` against a trickling store: a hard deadline, and caps
on the tests running at once (per api process and per org), with the api served by uvicorn.

The time to answer is printed, not asserted: run with ``-s`` to see it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from shared.auth import create_org
from shared.settings import Settings
from shared.topology import Topology
from tests.helpers import assert_nothing_written, error_of, serving_api, start_body
from tools.woosim.testing import SimHandle, running_simulator

pytestmark = pytest.mark.timeout(90)

DEADLINE_S = 2.0


async def in_flight(sim: SimHandle, n: int) -> None:
    """Until the store has been asked ``n`` times (each then trickles for minutes)."""
    while (await sim.stats())["requests"] < n:
        await asyncio.sleep(0.02)


@pytest.fixture
async def trickling() -> Any:
    async with running_simulator(customers=5, seed=1) as sim:
        await sim.set_faults(rate_trickle=1.0, trickle_ms=200)  # a byte every 200 ms
        yield sim


async def test_a_trickling_store_is_refused_at_the_check_deadline(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology, trickling: SimHandle
) -> None:
    short = settings.model_copy(update={"store_check_deadline_s": DEADLINE_S})
    async with serving_api(short, pool, clean_broker) as api:
        started = time.monotonic()
        response = await api.start(trickling)
        answered_after_s = time.monotonic() - started
        assert error_of(response) == (422, "store_unreachable")
        message = response.json()["error"]["message"]
        assert f"within {DEADLINE_S:g}s" in message, message
        assert trickling.consumer_secret not in response.text
        await assert_nothing_written(api)
        # The slot is free again: the next test is not refused as busy.
        assert error_of(await api.start(trickling)) == (422, "store_unreachable")
    print(f"\nstart against a trickling store answered 422 after {answered_after_s:.2f}s "
          f"(check deadline {DEADLINE_S:g}s)")  # fmt: skip


async def test_checks_beyond_the_process_cap_are_refused_at_once(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology, trickling: SimHandle
) -> None:
    capped = settings.model_copy(
        update={
            "store_check_deadline_s": 5.0,
            "max_concurrent_store_checks": 2,
            "max_concurrent_syncs_per_org": 10,
        }
    )
    async with serving_api(capped, pool, clean_broker) as api:
        slow = [asyncio.create_task(api.start(trickling)) for _ in range(2)]
        await in_flight(trickling, 2)
        started = time.monotonic()
        extra = await api.start(trickling)
        refused_after_s = time.monotonic() - started
        assert error_of(extra) == (503, "store_checks_busy")
        assert "already testing 2 store connections" in extra.json()["error"]["message"]
        assert int(extra.headers["retry-after"]) == 5
        assert not any(task.done() for task in slow)
        assert (await trickling.stats())["requests"] == 2  # the extra one never reached it
        for response in await asyncio.gather(*slow):
            assert error_of(response) == (422, "store_unreachable")
        await assert_nothing_written(api)
    print(f"\nthe check beyond the cap of 2 was refused after {refused_after_s * 1000:.0f} ms")


async def test_one_org_cannot_take_every_check_slot(
    settings: Settings, pool: asyncpg.Pool, clean_broker: Topology, trickling: SimHandle
) -> None:
    capped = settings.model_copy(
        update={"store_check_deadline_s": 5.0, "max_concurrent_syncs_per_org": 1}
    )
    async with serving_api(capped, pool, clean_broker) as api:
        first = asyncio.create_task(api.start(trickling))
        await in_flight(trickling, 1)
        again = await api.start(trickling)
        assert error_of(again) == (429, "too_many_store_checks")
        assert int(again.headers["retry-after"]) > 0

        other_org, other_key = await create_org(pool, "other")
        async with running_simulator(customers=3, seed=9) as healthy:
            elsewhere = await api.post(start_body(other_org, healthy), key=other_key)
        assert elsewhere.status_code == 202, elsewhere.text
        assert error_of(await first) == (422, "store_unreachable")
