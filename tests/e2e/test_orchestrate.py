"""Orchestrate against the real processes and three simulated stores (each its own process).

- Three stores synced as one parent job: it ends ``done`` with its children's counts summed
  exactly, each store's customers exact; its progress stream shows the children's states and
  ends with ``complete``.
- One store refusing the key: that child fails, the others are done and exact, and the parent
  ends ``failed`` naming the child and its error.
- ``pause`` of the parent pauses every child: once each crawl recorded its stop, no store gets a
  request (their request logs, ``/__sim/requests``) and no customer is written; ``resume`` ends
  all done and exact. ``cancel`` of a second parent cancels every child.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.e2e.fault_stack import running
from tests.e2e.harness import (
    Org,
    Stack,
    action,
    assert_store_exact,
    new_org,
    orchestrate,
    store_connection,
    wait_final,
)
from tests.e2e.processes import fetch, fetchval, follow_progress, pages_recorded
from tests.helpers import store_settled, wait_until
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e]

QUIET_S = 3.0  # several crawl checks and syncer deliveries long: nothing may happen in it


@contextlib.contextmanager
def stores(sizes: list[int], seed: int, **kwargs: Any) -> Iterator[list[SimHandle]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(spawn_simulator(customers=n, seed=seed + i, **kwargs))
            for i, n in enumerate(sizes)
        ]


async def _status(stack: Stack, org: Org, url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url, headers=org.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _connections(settings: Settings, org: Org, sims: list[SimHandle]) -> list[str]:
    return [await store_connection(settings, org, sim) for sim in sims]


@pytest.mark.timeout(300)
async def test_three_stores_end_done_with_exact_counts_and_a_progress_stream(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, {}) as stack:
        with stores([120, 200, 260], seed=70) as sims:
            connections = await _connections(settings, org, sims)
            answer = await orchestrate(stack, org, connections, batch_size=50, concurrency=2)
            assert answer.status_code == 202, answer.text
            parent = answer.json()
            events = await follow_progress(parent["progress_url"], timeout_s=240)
            row = await wait_final(settings, parent["job_id"], timeout_s=60)
            assert row["state"] == "done", row["last_error"]

            status = await _status(stack, org, parent["status_url"])
            assert status["state"] == "done" and status["kind"] == "orchestration"
            assert (status["total"], status["done"], status["failed"]) == (580, 580, 0)
            assert [c["connection_id"] for c in status["children"]] == connections
            assert [(c["state"], c["total"], c["done"]) for c in status["children"]] == [
                ("done", 120, 120),
                ("done", 200, 200),
                ("done", 260, 260),
            ]
            for child, sim in zip(status["children"], sims, strict=True):
                await assert_store_exact(
                    settings, child["connection_id"], child["job_id"], await sim.customers()
                )

    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "complete" and kinds.count("complete") == 1
    final = events[-1][1]
    assert final["state"] == "done" and (final["total"], final["done"]) == (580, 580)
    assert {c["state"] for c in final["children"]} == {"done"}
    # Every progress event carries the children; some showed them still running.
    assert all(len(data["children"]) == 3 for _, data in events)
    assert any(any(c["state"] != "done" for c in data["children"]) for kind, data in events[:-1]), (
        kinds
    )


@pytest.mark.timeout(300)
async def test_a_store_refusing_the_key_fails_the_parent_with_its_error(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, {}) as stack:
        with stores([80, 90, 100], seed=80) as sims:
            connections = await _connections(settings, org, sims)
            await sims[1].revoke_keys()  # the stored key no longer opens the second store
            answer = await orchestrate(stack, org, connections, batch_size=50)
            assert answer.status_code == 202, answer.text
            parent = answer.json()
            row = await wait_final(settings, parent["job_id"], timeout_s=240)
            status = await _status(stack, org, parent["status_url"])
            children = status["children"]

            assert row["state"] == "failed", row["last_error"]
            assert [c["state"] for c in children] == ["done", "failed", "done"]
            failed = children[1]
            assert failed["last_error"]
            assert row["last_error"].startswith(
                f"job {failed['job_id']} (connection {connections[1]}) failed: "
            )
            assert failed["last_error"] in row["last_error"]
            assert (status["done"], status["failed"]) == (180, 0)
            for index in (0, 2):
                await assert_store_exact(
                    settings,
                    connections[index],
                    children[index]["job_id"],
                    await sims[index].customers(),
                )
            assert (
                await fetchval(
                    settings,
                    "SELECT count(*) FROM customer WHERE connection_id = $1::uuid",
                    connections[1],
                )
                == 0
            )
            events = await fetch(
                settings,
                "SELECT event FROM woo_sync_activity WHERE job_id = $1::uuid ORDER BY id",
                parent["job_id"],
            )
            assert [e["event"] for e in events] == ["job.orchestrated", "job.failed"]


async def _all_stopped(settings: Settings, job_ids: list[str]) -> bool:
    stopped = await fetchval(
        settings,
        "SELECT count(*) FROM woo_customer_sync_queue"
        " WHERE id = ANY($1::uuid[]) AND crawl_stopped_at IS NOT NULL",
        job_ids,
    )
    return stopped == len(job_ids)


async def _pages_each(settings: Settings, job_ids: list[str], pages: int) -> bool:
    return all([len(await pages_recorded(settings, j)) >= pages for j in job_ids])


async def _customers(settings: Settings, org: Org) -> int:
    return await fetchval(
        settings, "SELECT count(*) FROM customer WHERE org_id = $1::uuid", org.org_id
    )


@pytest.mark.timeout(400)
async def test_pause_resume_and_cancel_of_the_parent_reach_every_child(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, {}) as stack:
        with stores([400, 400, 400], seed=90, latency_ms=300) as sims:
            connections = await _connections(settings, org, sims)
            answer = await orchestrate(stack, org, connections, batch_size=20, concurrency=1)
            assert answer.status_code == 202, answer.text
            parent = answer.json()
            children = [c["job_id"] for c in parent["children"]]
            await wait_until(lambda: _pages_each(settings, children, 2), "2 pages each", 120)

            paused = await action(stack, org, "pause", parent["job_id"])
            assert paused.status_code == 200, paused.text
            assert paused.json()["state"] == "paused"
            assert {c["state"] for c in paused.json()["children"]} == {"paused"}
            await wait_until(lambda: _all_stopped(settings, children), "the crawls stopped", 60)
            for sim in sims:
                await store_settled(sim, "requests")
            logs = [await sim.requests() for sim in sims]
            written = await _customers(settings, org)
            await asyncio.sleep(QUIET_S)
            assert [await sim.requests() for sim in sims] == logs  # no store request
            assert await _customers(settings, org) == written  # no customer written
            assert (await action(stack, org, "pause", parent["job_id"])).status_code == 409

            resumed = await action(stack, org, "resume", parent["job_id"])
            assert resumed.status_code == 202, resumed.text
            # Queued, or already taken by a fetcher.
            assert {c["state"] for c in resumed.json()["children"]} <= {"queued", "processing"}
            row = await wait_final(settings, parent["job_id"], timeout_s=300)
            assert row["state"] == "done", row["last_error"]
            assert (row["total"], row["done_count"], row["failed_count"]) == (1200, 1200, 0)
            for child, connection_id, sim in zip(children, connections, sims, strict=True):
                await assert_store_exact(settings, connection_id, child, await sim.customers())

            # A second orchestration of the same stores, cancelled: every child is cancelled.
            again = await orchestrate(stack, org, connections, batch_size=20, concurrency=1)
            assert again.status_code == 202, again.text
            second = again.json()
            cancelled = await action(stack, org, "cancel", second["job_id"], reason="enough")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["state"] == "cancelled"
            assert {c["state"] for c in cancelled.json()["children"]} == {"cancelled"}
            second_children = [c["job_id"] for c in second["children"]]
            await wait_until(
                lambda: _all_stopped(settings, second_children), "the crawls stopped", 60
            )
            states = await fetch(
                settings,
                "SELECT state FROM woo_customer_sync_queue WHERE id = ANY($1::uuid[])",
                [second["job_id"], *second_children],
            )
            assert {r["state"] for r in states} == {"cancelled"}
