"""Services killed, stopped, duplicated and lost in the middle of a sync, every one a real process.

Each test syncs a 2,000-customer simulated store slowed to 100 ms a page (42 overlapping windows
of 50, two at a time: the crawl alone lasts about two seconds), acts when the job's own progress
says the moment has come (pages read, customers synced), and checks the exact end state: every
store customer once in ``customer``, equal field by field, every line ``done``, the job's counts.

* SIGKILL of each service mid-sync, several in a row, and of replicas running side by side.
* SIGTERM of each service: it exits within a few seconds and nothing it held is lost.
* Batches delivered twice and handled by two syncers at once, tracker events duplicated and out
  of order: nothing changes twice and the counts stay right.
* A job whose services died and never came back: detected, recorded, resumed with ``retry``.
* A key revoked mid-sync: the job fails at once with a clear error, without a retry storm.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from signal import SIGTERM
from typing import Any
from uuid import UUID

import pytest

from shared.broker import make_broker, publish
from shared.messages import CustomerBatch, FetchCompleted, LinesDone, Message
from shared.settings import Settings
from shared.topology import Topology
from tests.e2e.harness import (
    Stack,
    action,
    assert_exact,
    job_status,
    new_org,
    start_sync,
    wait_final,
)
from tests.e2e.processes import (
    Timeline,
    fetch,
    follow_progress,
    progress,
    running_stack,
    wait_consumers,
    wait_progress,
    watching,
)
from tests.helpers import store_settled, wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

CUSTOMERS = 2_000
PAGE_MS = 100
OPTIONS: dict[str, Any] = {"batch_size": 50, "concurrency": 2}
PAGES = 42  # windows of 50 overlapping by 2 over 2,000 customers
# SIGTERM to exit: FastStream's graceful stop, or uvicorn's; "a few seconds".
STOP_WITHIN_S = 5.0


def slow_store(seed: int) -> Any:
    return spawn_simulator(customers=CUSTOMERS, seed=seed, latency_ms=PAGE_MS)


def holder(stack: Stack, job_id: str, replicas: int) -> int:
    """The fetcher replica that took the job up most recently (its log says so)."""
    taken = []
    for replica in range(replicas):
        text = (stack.log_dir / f"fetcher-{replica}.log").read_text(errors="replace")
        pattern = rf"job {job_id}: reading its store \(taken up (\d+)"
        counts = [int(n) for n in re.findall(pattern, text)]
        if counts:
            taken.append((max(counts), replica))
    assert taken, "no fetcher took the job up"
    return max(taken)[1]


def tracebacks(stack: Stack) -> list[str]:
    """The last line of every traceback any service logged: a crash or a bug, never expected."""
    lines = stack.logs().splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            tail = next((t for t in lines[index + 1 :] if t and not t.startswith((" ", "\t"))), "")
            found.append(tail)
    return found


async def test_sigkill_of_every_service_mid_sync_several_in_a_row(
    settings: Settings, tmp_path: Path
) -> None:
    note = Timeline()
    org = await new_org(settings)
    with slow_store(31) as sim:
        store = await sim.customers()
        note("store up")
        async with running_stack(settings, tmp_path) as stack:
            note("services up")
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            sse = asyncio.create_task(follow_progress(job["progress_url"]))
            async with watching(settings, org, job_id) as watch:
                # The fetcher dies holding sync.requested, the syncer mid-batch, the tracker
                # with its unflushed dirty set: all three at once.
                first = await wait_progress(settings, job_id, pages=8, done=100)
                stack.kill("fetcher")
                stack.kill("syncer")
                stack.kill("tracker")
                note(f"killed fetcher, syncer, tracker at {first}")
                assert not (await progress(settings, job_id)).fetch_complete
                for service in ("fetcher", "syncer", "tracker"):
                    stack.start(service)
                stack.restart("api")
                note("restarted, api too")

                # Once the new fetcher has resumed: the fetcher and the syncer again.
                second = await wait_progress(settings, job_id, pages=first.pages + 10)
                stack.kill("fetcher")
                assert not (await progress(settings, job_id)).fetch_complete
                stack.kill("syncer")
                note(f"killed fetcher and syncer at {second}")
                stack.start("fetcher")
                stack.start("syncer")

                row = await wait_final(settings, job_id, timeout_s=90)
                note("job final")
                events = await asyncio.wait_for(sse, 30)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
            assert row["process_count"] == 3  # taken up by three fetchers in turn
            assert watch.problems == [] and watch.seen

    # What SSE clients saw across the tracker's death: never more settled than total, never
    # going back, one complete event with the exact counts.
    statuses = [status for _, status in events]
    assert all(s["done"] + s["failed"] <= s["total"] for s in statuses)
    assert [s["done"] for s in statuses] == sorted(s["done"] for s in statuses)
    kind, final = events[-1]
    assert kind == "complete" and [k for k, _ in events].count("complete") == 1
    assert (final["state"], final["total"], final["done"], final["failed"]) == (
        "done", CUSTOMERS, CUSTOMERS, 0,
    )
    assert tracebacks(stack) == []


async def test_two_fetchers_and_two_syncers_with_kills(
    settings: Settings, tmp_path: Path
) -> None:
    note = Timeline()
    org = await new_org(settings)
    with slow_store(32) as sim:
        store = await sim.customers()
        async with running_stack(settings, tmp_path, fetchers=2, syncers=2) as stack:
            note("services up")
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            async with watching(settings, org, job_id) as watch:
                reached = await wait_progress(settings, job_id, pages=6, done=50)
                first = holder(stack, job_id, 2)
                stack.kill("fetcher", first)  # its sync.requested goes to the other replica
                stack.kill("syncer", 0)
                note(f"killed fetcher {first} and syncer 0 at {reached}")
                assert not (await progress(settings, job_id)).fetch_complete
                stack.start("fetcher", first)
                stack.start("syncer", 0)

                reached = await wait_progress(settings, job_id, pages=reached.pages + 10)
                second = holder(stack, job_id, 2)
                assert second != first  # the survivor took the job over at once
                stack.kill("fetcher", second)
                stack.kill("syncer", 1)
                note(f"killed fetcher {second} and syncer 1 at {reached}")
                assert not (await progress(settings, job_id)).fetch_complete
                stack.start("fetcher", second)
                stack.start("syncer", 1)

                row = await wait_final(settings, job_id, timeout_s=90)
                note("job final")
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
            assert row["process_count"] == 3
            assert watch.problems == []
    assert tracebacks(stack) == []


async def test_sigterm_lets_each_service_stop_quickly_and_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    note = Timeline()
    org = await new_org(settings)
    with slow_store(33) as sim:
        store = await sim.customers()
        async with running_stack(settings, tmp_path) as stack:
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            took: dict[str, float] = {}
            codes: dict[str, int | None] = {}
            async with watching(settings, org, job_id) as watch:
                await wait_progress(settings, job_id, pages=6, done=50)
                # The fetcher is mid-crawl: it gives sync.requested back instead of finishing.
                note(f"stopping at {await progress(settings, job_id)}")
                took["fetcher"] = stack.stop("fetcher")
                assert not (await progress(settings, job_id)).fetch_complete
                took["syncer"] = stack.stop("syncer")  # batches in flight finish or go back
                took["tracker"] = stack.stop("tracker")
                took["api"] = stack.stop("api")
                codes = {name: stack.processes[(name, 0)].returncode for name in took}
                note(f"stopped: {took}")
                for service in ("api", "tracker", "fetcher", "syncer"):
                    stack.start(service)
                await stack.wait_ready()
                note("restarted")

                row = await wait_final(settings, job_id, timeout_s=90)
                note("job final")
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
            assert row["process_count"] == 2
            assert watch.problems == []

    assert all(seconds < STOP_WITHIN_S for seconds in took.values()), took
    # FastStream exits 0; uvicorn re-raises the signal once it has shut down cleanly.
    assert codes == {"fetcher": 0, "syncer": 0, "tracker": -SIGTERM, "api": -SIGTERM}, codes
    assert "tracker stopped" in (tmp_path / "tracker-0.log").read_text(errors="replace")
    fetcher_log = (tmp_path / "fetcher-0.log").read_text(errors="replace")
    assert "giving" in fetcher_log and "back to its queue" in fetcher_log
    assert tracebacks(stack) == []


async def publish_all(settings: Settings, messages: list[Message]) -> None:
    broker = make_broker(settings)
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
    await broker.connect()
    try:
        for message in messages:
            await publish(broker, topology, message)
    finally:
        await broker.stop()


def syncer_deliveries(stack: Stack, job_id: str) -> int:
    """Batches of the job the syncers have handled (one log line each)."""
    return sum(
        len(re.findall(rf"job {job_id} batch \S+ attempt", path.read_text(errors="replace")))
        for path in stack.log_dir.glob("syncer-*.log")
    )


async def test_duplicate_deliveries_and_events_change_nothing_twice(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    with slow_store(34) as sim:
        store = await sim.customers()
        async with running_stack(settings, tmp_path, syncers=2) as stack:
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            connection_id = (await job_status(settings, job_id))["connection_id"]
            ids = {"job_id": UUID(job_id), "org_id": UUID(org.org_id)}

            def batches() -> list[Message]:
                return [
                    CustomerBatch(
                        connection_id=connection_id, customers=store[i : i + 50], **ids
                    )
                    for i in range(0, len(store), 50)
                ]

            async with watching(settings, org, job_id) as watch:
                await wait_progress(settings, job_id, pages=4, done=50)
                # Every customer a second and third time, each batch twice with the same
                # message id (a redelivery), so the two syncers take copies at the same time;
                # and events the tracker gets late, twice, out of order, and too early.
                again = batches()
                events: list[Message] = [
                    LinesDone(woo_ids=[c["id"] for c in store[i : i + 50]], **ids)
                    for i in range(len(store) - 50, -1, -50)
                ]
                events += [FetchCompleted(pages=PAGES, customers=CUSTOMERS, **ids)]
                await publish_all(
                    settings, [m for b in again for m in (b, b)] + events + events
                )
                row = await wait_final(settings, job_id, timeout_s=90)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
            assert watch.problems == []

            # After the end: the whole store twice more. Nothing is written, nothing counted.
            versions = await fetch(
                settings, "SELECT woo_id, xmin::text AS v FROM customer ORDER BY woo_id"
            )
            handled = syncer_deliveries(stack, job_id)
            late = batches()
            await publish_all(settings, late + late)

            async def all_handled() -> bool:
                return syncer_deliveries(stack, job_id) >= handled + 2 * len(late)

            await wait_until(all_handled, "the late duplicates handled", 60)
            after = await fetch(
                settings, "SELECT woo_id, xmin::text AS v FROM customer ORDER BY woo_id"
            )
            assert after == versions
            await assert_exact(settings, org, job_id, store)
            final = await job_status(settings, job_id)
            assert final["finished_at"] == row["finished_at"]
    assert tracebacks(stack) == []


async def stalled_events(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    rows = await fetch(
        settings,
        "SELECT details FROM woo_sync_activity WHERE job_id = $1::uuid AND event = 'job.stalled'",
        job_id,
    )
    return [row["details"] for row in rows]


STALL_S = "3"


async def test_jobs_whose_services_died_are_detected_and_resumed_with_retry(
    settings: Settings, tmp_path: Path
) -> None:
    """The fetcher and the syncer die mid-crawl and nobody starts them again: the job stops
    moving. A second job, started meanwhile, waits in the queue with no fetcher to take it.
    Both are failed as stalled, once, and ``retry`` finishes both once the services are back."""
    note = Timeline()
    org, other = await new_org(settings, "first"), await new_org(settings, "second")
    with slow_store(35) as sim:
        store = await sim.customers()
        async with running_stack(settings, tmp_path, WOOSYNC_STALL_TIMEOUT_S=STALL_S) as stack:
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            reached = await wait_progress(settings, job_id, pages=6, done=50)
            stack.kill("fetcher")
            stack.kill("syncer")
            note(f"killed fetcher and syncer at {reached}")
            queued = (await start_sync(stack, other, sim, **OPTIONS))["job_id"]

            row = await wait_final(settings, job_id, timeout_s=30)
            note("first job final")
            assert row["state"] == "failed", row["last_error"]
            assert row["last_error"].startswith(f"stalled: no progress for {STALL_S} s")
            assert row["fetch_done_at"] is None
            (details,) = await stalled_events(settings, job_id)
            assert details["previous_state"] == "processing" and not details["fetch_complete"]
            row = await wait_final(settings, queued, timeout_s=30)
            assert row["state"] == "failed" and row["last_error"].startswith("stalled")
            (details,) = await stalled_events(settings, queued)
            assert details["previous_state"] == "queued"

            stack.start("fetcher")
            stack.start("syncer")
            await wait_consumers(settings, "fetcher", 1)
            await wait_consumers(settings, "syncer", 1)
            note("fetcher and syncer back")
            for owner, job_id_ in ((org, job_id), (other, queued)):
                response = await action(stack, owner, "retry", job_id_)
                assert response.status_code == 202, response.text
                assert response.json()["fetch_resumed"] is True

            for owner, job_id_ in ((org, job_id), (other, queued)):
                row = await wait_final(settings, job_id_, timeout_s=90)
                assert row["state"] == "done", row["last_error"]
                await assert_exact(settings, owner, job_id_, store)
                assert len(await stalled_events(settings, job_id_)) == 1
            note("both done")
    assert tracebacks(stack) == []


async def test_job_stalled_after_its_fetch_is_resumed_with_retry(
    settings: Settings, tmp_path: Path
) -> None:
    """The syncer dies for good while the fetcher reads on: every page is read, customers wait
    in the queue, the job stalls. ``retry`` reopens the job (nothing to re-send or re-read), a
    syncer started again syncs the waiting customers, and the tracker finishes the job."""
    note = Timeline()
    org = await new_org(settings)
    with slow_store(36) as sim:
        store = await sim.customers()
        async with running_stack(settings, tmp_path, WOOSYNC_STALL_TIMEOUT_S=STALL_S) as stack:
            note("services up")
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            await wait_progress(settings, job_id, pages=4, done=50)
            stack.kill("syncer")
            note("syncer killed")

            row = await wait_final(settings, job_id, timeout_s=60)
            note("job failed")
            assert row["state"] == "failed" and row["last_error"].startswith("stalled")
            assert row["fetch_done_at"] is not None and row["done_count"] < CUSTOMERS
            (details,) = await stalled_events(settings, job_id)
            assert details["fetch_complete"] is True

            response = await action(stack, org, "retry", job_id)
            # Neither re-sent nor re-read anything, but the job is open again: 202.
            assert response.status_code == 202, response.text
            answer = response.json()
            assert answer["state"] == "processing" and answer["job_reopened"] is True
            assert (answer["fetch_resumed"], answer["requeued"]) == (False, 0)
            stack.start("syncer")
            await wait_consumers(settings, "syncer", 1)
            note("syncer back")

            row = await wait_final(settings, job_id, timeout_s=60)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
    assert tracebacks(stack) == []


async def test_key_revoked_mid_sync_fails_the_job_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """401 (secret revoked), then, after a retry, 403 (the key lost its capabilities): each
    fails the job at once with a clear error, after one refused request per connection in
    flight; retry then goes on from the pages already read."""
    org = await new_org(settings)
    with slow_store(38) as sim:
        store = await sim.customers()
        async with running_stack(settings, tmp_path) as stack:
            job = await start_sync(stack, org, sim, **OPTIONS)
            job_id = job["job_id"]
            at = 6
            for mode, status in (("secret", 401), ("no_caps", 403)):
                await wait_progress(settings, job_id, pages=at, done=50)
                await sim.reset_stats()
                await sim.revoke_keys(mode)
                before = (await sim.stats())["requests"]

                row = await wait_final(settings, job_id, timeout_s=10)
                assert row["state"] == "failed"
                assert f"store refused the credentials: HTTP {status}" in row["last_error"]
                assert sim.consumer_secret not in row["last_error"]
                await store_settled(sim)
                stats = await sim.stats()
                # Only requests already under way were refused, each once: no retries, no
                # storm. Those past the key check when it was revoked still got their page.
                assert 1 <= stats["by_status"].get(str(status), 0) <= OPTIONS["concurrency"]
                assert stats["requests"] - before <= 2 * OPTIONS["concurrency"], stats

                # With the key working again, retry goes on from the pages already read.
                read = (await progress(settings, job_id)).pages
                assert read < PAGES
                await sim.restore_keys()
                await sim.reset_stats()
                response = await action(stack, org, "retry", job_id)
                assert response.status_code == 202 and response.json()["fetch_resumed"] is True
                at = read + 6

            row = await wait_final(settings, job_id, timeout_s=90)
            assert row["state"] == "done", row["last_error"]
            await assert_exact(settings, org, job_id, store)
            # Page 1 again for the totals, the pages not read yet, the last one once more.
            assert (await sim.stats())["requests"] <= 1 + (PAGES - read) + 1
    assert tracebacks(stack) == []
