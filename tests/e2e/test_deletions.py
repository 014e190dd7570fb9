"""Customers deleted from the store, with every service a real process and the simulator.

- A store of 600 customers is synced; the shop deletes five; the next sync reads every page,
  proves it, and marks exactly those five deleted (rows kept), counting them in its status, in
  its SSE ``complete`` event and on the store connection.
- One of them comes back (restored from a backup, same id): the next sync restores its row and
  counts it.
- Three more are deleted, then a crawl fails (the store claims more customers than its pages
  hold) and another is forced done while it reads: neither marks anything. The next good sync
  marks the three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.paths import CONNECTION_PATH
from shared.settings import Settings
from tests.e2e.harness import Org, Stack, action, new_org, start_sync, wait_final
from tests.e2e.processes import fetch, follow_progress, pages_recorded, running_stack
from tests.helpers import wait_until
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CUSTOMERS = 600


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(settings, tmp_path) as running:
        yield running


async def synced(stack: Stack, org: Org, sim: SimHandle) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sync the store to the end: (the job's status from the api, its SSE complete event)."""
    started = await start_sync(stack, org, sim, concurrency=2)
    events = await follow_progress(started["progress_url"])
    kind, complete = events[-1]
    assert kind == "complete"
    await wait_final(stack.settings, started["job_id"])
    async with httpx.AsyncClient(timeout=30) as client:
        status = (await client.get(started["status_url"], headers=org.headers)).json()
    return status, complete


async def deleted_ids(settings: Settings, org: Org) -> list[int]:
    rows = await fetch(
        settings,
        "SELECT woo_id FROM customer WHERE org_id = $1::uuid AND deleted_at IS NOT NULL "
        "ORDER BY woo_id",
        org.org_id,
    )
    return [r["woo_id"] for r in rows]


async def rows(settings: Settings, org: Org) -> int:
    (row,) = await fetch(
        settings, "SELECT count(*) AS n FROM customer WHERE org_id = $1::uuid", org.org_id
    )
    count: int = row["n"]
    return count


async def test_deleted_customers_are_marked_only_by_a_proven_crawl_and_restored(
    settings: Settings, stack: Stack
) -> None:
    org = await new_org(settings)
    with spawn_simulator(customers=CUSTOMERS, seed=77) as sim:
        store = await sim.customers()
        first, complete = await synced(stack, org, sim)
        assert first["state"] == "done" and first["deleted"] == 0 and complete["deleted"] == 0
        assert await rows(settings, org) == len(store)

        # The shop deletes five customers.
        gone = [store[i]["id"] for i in (0, 99, 250, 404, len(store) - 1)]
        removed = {user_id: await sim.delete_customer(user_id) for user_id in gone}
        second, complete = await synced(stack, org, sim)
        assert second["state"] == "done", second
        assert second["deleted"] == complete["deleted"] == 5
        assert await deleted_ids(settings, org) == sorted(gone)
        assert await rows(settings, org) == len(store)  # soft: every row is still there
        connection = CONNECTION_PATH.format(connection_id=second["connection_id"])
        async with httpx.AsyncClient(timeout=30) as client:
            shown = (await client.get(stack.api_url + connection, headers=org.headers)).json()
        assert (shown["customers"], shown["customers_deleted"]) == (len(store) - 5, 5)

        # One comes back with its id (a restored backup).
        back = removed[gone[2]]
        await sim.add_customer(
            id=back["id"], email=back["email"], first_name=back["first_name"],
            last_name=back["last_name"], username=back["username"],
        )  # fmt: skip
        third, complete = await synced(stack, org, sim)
        assert third["state"] == "done", third
        assert (third["deleted"], third["restored"]) == (0, 1)
        assert (complete["deleted"], complete["restored"]) == (0, 1)
        assert await deleted_ids(settings, org) == sorted(set(gone) - {gone[2]})

        # Three more go; a crawl that fails, and one forced done mid-crawl, mark nothing.
        more = [store[i]["id"] for i in (10, 300, 500)]
        for user_id in more:
            await sim.delete_customer(user_id)
        await sim.set_faults(claimed_total=CUSTOMERS + 200)
        failed, complete = await synced(stack, org, sim)
        assert failed["state"] == "failed" and failed["deleted"] == complete["deleted"] == 0
        await sim.set_faults(claimed_total=0, latency_ms=400)
        started = await start_sync(stack, org, sim, concurrency=1)
        await wait_until(
            lambda: _some_pages(settings, started["job_id"]), timeout_s=60, what="a page read"
        )
        forced = await action(stack, org, "force-done", started["job_id"], reason="e2e")
        assert forced.status_code == 200, forced.text
        row = await wait_final(settings, started["job_id"])
        assert row["fetch_done_at"] is None and row["deleted_count"] == 0
        assert await deleted_ids(settings, org) == sorted(set(gone) - {gone[2]})

        await sim.set_faults(latency_ms=0)
        last, complete = await synced(stack, org, sim)
        assert last["state"] == "done" and last["deleted"] == complete["deleted"] == 3
        assert await deleted_ids(settings, org) == sorted(set(gone + more) - {gone[2]})
        assert await rows(settings, org) == len(store)


async def _some_pages(settings: Settings, job_id: str) -> bool:
    return bool(await pages_recorded(settings, job_id))
