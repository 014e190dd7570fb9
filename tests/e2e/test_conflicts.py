"""Conflicts end to end: the four services as processes, a simulated store, and MantisNXT edits
made with plain SQL, as a MantisNXT user makes them.

The store is synced once; then, for each policy, two customers are edited in MantisNXT and
changed in the store (one dated before the edit, one after it) and the store synced again with
the start option ``conflict_policy``: woo_wins writes the store's versions, mantis_wins keeps
MantisNXT's, newest_wins takes the newer side of each, and manual leaves both lines waiting as
conflicts, the job open with its count in the status and the SSE stream, until the api resolves
one (the store's version) and then all (MantisNXT's); the job then finishes done.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import db
from shared.paths import CONFLICTS_PATH, JOB_PATH
from shared.settings import Settings
from tests.e2e.harness import Org, Stack, action, new_org, start_sync, wait_final
from tests.e2e.processes import Timeline, fetch, follow_progress, running_stack
from tests.helpers import wait_until
from tools.woosim.data import wp_date
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CUSTOMERS = 40
FUTURE = "2099-01-01T00:00:00"  # a store change dated after any MantisNXT edit


async def edit_in_mantis(settings: Settings, org: Org, woo_ids: list[int]) -> None:
    """A MantisNXT user's UPDATE: a session that does not name itself as woosync."""
    conn = await db.connect(settings.admin_database_url)
    try:
        await conn.execute(
            "UPDATE customer SET first_name = 'Mantis ' || woo_id"
            " WHERE org_id = $1::uuid AND woo_id = ANY($2::bigint[])",
            org.org_id,
            woo_ids,
        )
    finally:
        await conn.close()


async def change_in_store(sim: SimHandle, earlier: int, later: int) -> None:
    """``earlier`` dated a day before now (so before the MantisNXT edit), ``later`` after it."""
    yesterday = wp_date(time.time() - 86_400)
    await sim.update_customer(earlier, first_name=f"Store {earlier}", date_modified_gmt=yesterday)
    await sim.update_customer(later, first_name=f"Store {later}", date_modified_gmt=FUTURE)


async def first_names(settings: Settings, org: Org, woo_ids: list[int]) -> list[str]:
    rows = await fetch(
        settings,
        "SELECT woo_id, first_name FROM customer WHERE org_id = $1::uuid"
        " AND woo_id = ANY($2::bigint[]) ORDER BY woo_id",
        org.org_id,
        woo_ids,
    )
    return [r["first_name"] for r in rows]


async def get(stack: Stack, org: Org, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(stack.api_url + path, headers=org.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sync_under(
    stack: Stack, settings: Settings, org: Org, sim: SimHandle, policy: str, ids: list[int]
) -> dict[str, Any]:
    """Edit ``ids`` on both sides and start a sync under ``policy``; the start's answer."""
    await edit_in_mantis(settings, org, ids)
    await change_in_store(sim, *ids)
    return await start_sync(stack, org, sim, conflict_policy=policy)


async def test_each_policy_against_the_real_processes(settings: Settings, tmp_path: Path) -> None:
    note = Timeline()
    org = await new_org(settings)
    with spawn_simulator(customers=CUSTOMERS, seed=17) as sim:
        ids = sorted(c["id"] for c in await sim.customers())
        async with running_stack(settings, tmp_path) as stack:
            first = await start_sync(stack, org, sim)
            assert (await wait_final(settings, first["job_id"]))["state"] == "done"
            note("first sync done")

            expected = {
                "woo_wins": lambda a, b: [f"Store {a}", f"Store {b}"],
                "mantis_wins": lambda a, b: [f"Mantis {a}", f"Mantis {b}"],
                "newest_wins": lambda a, b: [f"Mantis {a}", f"Store {b}"],
            }
            for n, (policy, names) in enumerate(expected.items()):
                a, b = ids[2 * n], ids[2 * n + 1]
                job = await sync_under(stack, settings, org, sim, policy, [a, b])
                row = await wait_final(settings, job["job_id"])
                assert row["state"] == "done", (policy, row["last_error"])
                assert await first_names(settings, org, [a, b]) == names(a, b), policy
                notes = await fetch(
                    settings,
                    "SELECT woo_id, warning FROM woo_customer_sync_queue_line"
                    " WHERE job_id = $1::uuid AND warning IS NOT NULL ORDER BY woo_id",
                    job["job_id"],
                )
                assert [r["woo_id"] for r in notes] == [a, b], policy
                assert all(r["warning"].startswith(f"conflict ({policy})") for r in notes), notes
                note(f"{policy}: done")

            a, b = ids[6], ids[7]
            job = await sync_under(stack, settings, org, sim, "manual", [a, b])
            job_id = job["job_id"]
            streamed: list[tuple[str, dict]] = []
            stream = asyncio.create_task(
                follow_progress(job["progress_url"], timeout_s=180, events=streamed)
            )
            status_path = JOB_PATH.format(job_id=job_id)

            async def waiting() -> bool:
                status = await get(stack, org, status_path)
                return status["conflicts"] == 2 and status["fetch_complete"]

            await wait_until(waiting, "the two conflicts waiting", timeout_s=90)
            # The rest is synced and counted, and the job is not done while the conflicts wait
            # (after the first resolution below, the tracker recomputes it once more).
            await wait_until(lambda: _settled(stack, org, status_path), "the rest synced", 90)
            status = await get(stack, org, status_path)
            assert (status["state"], status["conflicts"], status["pending"]) == (
                "processing",
                2,
                0,
            )
            assert status["done"] == CUSTOMERS - 2 and status["conflict_policy"] == "manual"
            assert await first_names(settings, org, [a, b]) == [f"Mantis {a}", f"Mantis {b}"]
            note("manual: two conflicts wait")

            listed = await get(stack, org, CONFLICTS_PATH.format(job_id=job_id))
            assert [c["woo_id"] for c in listed["conflicts"]] == [a, b]
            diff = {d["field"]: d for d in listed["conflicts"][1]["diff"]}
            assert diff["first_name"] == {
                "field": "first_name",
                "woo": f"Store {b}",
                "mantis": f"Mantis {b}",
            }

            # A follower sees the two conflicts wait (before anyone resolves them).
            await wait_until(
                lambda: any(e == "progress" and d["conflicts"] == 2 for e, d in streamed),
                "the progress stream showing the two conflicts",
                timeout_s=30,
            )
            one = await action(stack, org, "resolve-conflicts", job_id, take="woo", woo_id=a)
            assert one.status_code == 200, one.text
            assert one.json()["conflicts"] == 1 and one.json()["state"] == "processing"
            rest = await action(stack, org, "resolve-conflicts", job_id, take="mantis", all=True)
            assert rest.status_code == 200 and rest.json()["resolved"] == 1, rest.text
            row = await wait_final(settings, job_id)
            assert row["state"] == "done", row["last_error"]
            assert await first_names(settings, org, [a, b]) == [f"Store {a}", f"Mantis {b}"]
            note("manual: resolved, job done")

            events = await asyncio.wait_for(stream, 60)
            assert any(e == "progress" and d["conflicts"] == 2 for e, d in events), events
            assert events[-1][0] == "complete" and events[-1][1]["conflicts"] == 0

            # What was resolved stays resolved: the next sync of the same store has no conflict.
            again = await start_sync(stack, org, sim, conflict_policy="manual")
            assert (await wait_final(settings, again["job_id"]))["state"] == "done"
            assert await first_names(settings, org, [a, b]) == [f"Store {a}", f"Mantis {b}"]


async def _settled(stack: Stack, org: Org, status_path: str) -> bool:
    status = await get(stack, org, status_path)
    return status["pending"] == 0 and status["done"] == CUSTOMERS - 2
