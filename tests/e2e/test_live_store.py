"""A store that changes while it is synced: customers added, changed and deleted mid-crawl.

The simulated store is slowed to 150 ms a page so the crawl lasts a few seconds; while it runs,
customers with low ids are deleted (every customer after them moves one place down, onto pages
already read: the dangerous case for offset paging), customers are added at the end, and others
are changed. The semantics checked here are the documented ones (docs/architecture.md, "Paging a
live store"):

* every customer that existed for the whole sync is in ``customer``, exactly once;
* a customer changed during the sync holds one of its versions (the one read);
* a customer deleted during the sync is there if it was read before it went (woosync never
  deletes), with the version read; one added during the sync is there if it was added before
  the crawl's last read;
* nothing else is there, every line is ``done``, and the job's counts match the lines.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.e2e.harness import new_org, start_sync, wait_final
from tests.e2e.processes import Timeline, fetch, progress, running_stack, wait_progress
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

CUSTOMERS = 2_000
PAGE_MS = 150
OPTIONS: dict[str, Any] = {"batch_size": 50, "concurrency": 2}


class Changes:
    """What the store went through, and the versions each customer had."""

    def __init__(self, initial: list[dict[str, Any]]) -> None:
        self.initial = {c["id"]: c for c in initial}
        self.deleted: set[int] = set()
        self.added: dict[int, dict[str, Any]] = {}
        self.changed: dict[int, dict[str, Any]] = {}

    async def run(self, sim: SimHandle, settings: Settings, job_id: str, seed: int) -> None:
        """Delete, add and change customers side by side until every page is read."""
        rng = random.Random(seed)
        low = sorted(self.initial)[: CUSTOMERS // 2]
        reading = asyncio.Event()
        reading.set()

        async def watch() -> None:
            while not (await progress(settings, job_id)).fetch_complete:
                await asyncio.sleep(0.05)
            reading.clear()

        async def delete() -> None:
            while reading.is_set():  # in bursts: more than a window's overlap at once
                victims = rng.sample([i for i in low if i not in self.deleted], 4)
                self.deleted.update(victims)
                await asyncio.gather(*(sim.delete_customer(v) for v in victims))
                await asyncio.sleep(0.05)

        async def add() -> None:
            n = 0
            while reading.is_set():
                created = await sim.add_customer(
                    email=f"new{n}@example.com", first_name=f"New {n}", roles=["customer"]
                )
                self.added[created["id"]] = created
                n += 1
                await asyncio.sleep(0.05)

        async def change() -> None:
            while reading.is_set():
                untouched = [
                    i for i in self.initial if i not in self.deleted and i not in self.changed
                ]
                target = rng.choice(untouched)
                self.changed[target] = await sim.update_customer(
                    target, first_name=f"Changed {target}", billing={"city": "Elsewhere"}
                )
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), delete(), add(), change())


def without_links(customer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in customer.items() if k != "_links"}


async def test_customers_added_changed_and_deleted_during_the_sync(
    settings: Settings, tmp_path: Path
) -> None:
    note = Timeline()
    org = await new_org(settings)
    with spawn_simulator(customers=CUSTOMERS, seed=41, latency_ms=PAGE_MS) as sim:
        initial = await sim.customers()
        changes = Changes(initial)
        async with running_stack(settings, tmp_path) as stack:
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            await wait_progress(settings, job_id, pages=3)
            await asyncio.wait_for(changes.run(sim, settings, job_id, seed=41), 60)
            note(
                f"{len(changes.deleted)} deleted, {len(changes.added)} added, "
                f"{len(changes.changed)} changed while the store was read"
            )
            row = await wait_final(settings, job_id, timeout_s=90)
            note("job final")
            fetcher_log = (tmp_path / "fetcher-0.log").read_text(errors="replace")
            note(f"gap re-reads: {fetcher_log.count('reading again from offset')}")

    assert len(changes.deleted) >= 10 and changes.added and changes.changed
    rows = {
        r["woo_id"]: r
        for r in await fetch(
            settings, "SELECT woo_id, raw FROM customer WHERE org_id = $1::uuid", org.org_id
        )
    }
    lines = await fetch(
        settings,
        "SELECT woo_id, state FROM woo_customer_sync_queue_line WHERE job_id = $1::uuid",
        job_id,
    )

    throughout = set(changes.initial) - changes.deleted
    missing = throughout - set(rows)
    assert not missing, f"customers that existed throughout were not synced: {sorted(missing)}"
    assert set(rows) <= set(changes.initial) | set(changes.added)
    for woo_id, found in rows.items():
        if woo_id in changes.changed:
            versions = [changes.initial[woo_id], without_links(changes.changed[woo_id])]
        elif woo_id in changes.added:
            versions = [without_links(changes.added[woo_id])]
        else:
            versions = [changes.initial[woo_id]]
        assert found["raw"] in versions, f"customer {woo_id} holds a version it never had"

    assert sorted(r["woo_id"] for r in lines) == sorted(rows)  # one line per customer synced
    assert {r["state"] for r in lines} == {"done"}
    assert row["state"] == "done", row["last_error"]
    assert (row["total"], row["done_count"], row["failed_count"]) == (len(rows), len(rows), 0)
