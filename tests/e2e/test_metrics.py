"""Every service's ``/metrics``, ``/healthz`` and ``/readyz`` as real processes, during and after
a sync of a slow simulated store with one customer that cannot be stored.

The figures have to move as the sync does: the tracker reports the job ``processing`` while it
runs and ``done`` or ``failed`` after; the fetcher's page latency histogram counts every page of
the store's connection; the syncer counts exactly the store's customers synced but one, that
one failed and in the parking queue, whose depth the tracker reports; the api counts the start
request under its route template and status; FastStream's consumer counters count deliveries.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shared.paths import SYNC_PATH
from shared.settings import Settings
from shared.topology import Topology
from tests.e2e.harness import Scrape, new_org, scrape, start_sync, wait_final
from tests.e2e.processes import running_stack
from tests.helpers import free_port, wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
CUSTOMERS = 600
BATCH = 50
SERVICES = ("api", "tracker", "fetcher", "syncer")


async def test_metrics_move_during_and_after_a_sync(
    settings: Settings, tmp_path: Path, topology: Topology
) -> None:
    async with running_stack(settings, tmp_path) as stack:
        urls = {service: stack.url(service) for service in SERVICES}
        async with httpx.AsyncClient(timeout=10) as client:
            for service, url in urls.items():
                assert (await client.get(url + "/healthz")).status_code == 200, service
                ready = await client.get(url + "/readyz")
                assert ready.status_code == 200, (service, ready.text)
        before = {service: await scrape(url) for service, url in urls.items()}
        assert before["syncer"].value("woosync_customers_synced_total") == 0
        assert before["tracker"].value("woosync_jobs", state="processing") == 0

        with spawn_simulator(customers=CUSTOMERS, seed=23, latency_ms=150) as sim:
            odd = await sim.make_odd("lone_surrogate")
            org = await new_org(settings)
            started = await start_sync(stack, org, sim, batch_size=BATCH, concurrency=2)
            job_id = started["job_id"]

            # During the sync: the job is processing and pages have been read.
            async def mid_sync() -> dict[str, Scrape] | None:
                now = {service: await scrape(url) for service, url in urls.items()}
                pages = now["fetcher"].value("woosync_store_page_duration_seconds_count")
                running = now["tracker"].value("woosync_jobs", state="processing")
                return now if pages > 0 and running == 1 else None

            during = await wait_until(mid_sync, "a scrape mid-sync", timeout_s=120, every_s=0.2)
            (tmp_path / "scrape-during.txt").write_text(
                "\n\n".join(f"# {s}\n{during[s].text}" for s in SERVICES)
            )
            row = await wait_final(settings, job_id)
            store = await sim.customers()

        assert row["state"] == "failed" and row["failed_count"] == 1, dict(row)
        connection = str(row["connection_id"])
        pages = -(-len(store) // BATCH)

        syncer = await scrape(urls["syncer"])
        assert syncer.value("woosync_customers_synced_total") == len(store) - 1
        assert syncer.value("woosync_customers_failed_total") == 1
        assert syncer.value("faststream_received_processed_messages_total", app_name="syncer") > 0
        assert not syncer.has("woosync_retries_total")  # nothing went through a retry tier
        assert odd["lone_surrogate"] > 0

        fetcher = await scrape(urls["fetcher"])
        count = fetcher.value("woosync_store_page_duration_seconds_count", connection=connection)
        assert count >= pages, (count, pages)
        assert fetcher.value("woosync_store_page_duration_seconds_sum", connection=connection) > 0
        assert fetcher.value("woosync_store_page_errors_total") == 0
        assert fetcher.value("faststream_received_messages_total", app_name="fetcher") >= 1

        api = await scrape(urls["api"])
        assert (
            api.value("woosync_http_requests_total", route=SYNC_PATH, method="POST", status="202")
            == 1
        )
        latency = "woosync_http_request_duration_seconds_count"
        assert api.value(latency, route=SYNC_PATH, status="202") == 1
        assert api.value(latency, route="/readyz", status="200") >= 1
        assert not any("job_id" in dict(labels).get("route", "") for _, labels in api.samples)

        parking = topology.parking(topology.syncer_queue).name

        async def tracker_settled() -> Scrape | None:
            now = await scrape(urls["tracker"])
            settled = now.value("woosync_jobs", state="failed") == 1
            parked = now.value("woosync_queue_messages", queue=parking, role="parking") == 1
            return now if settled and parked else None

        tracker = await wait_until(tracker_settled, "jobs and parking depth in the tracker", 30)
        assert tracker.value("woosync_jobs", state="processing") == 0
        assert tracker.value("woosync_jobs") == 1  # one job in all
        work = topology.syncer_queue.name
        assert tracker.value("woosync_queue_messages", queue=work, role="work") == 0  # no lag
        assert tracker.value("woosync_queue_consumers", queue=work, role="work") == 1
        assert tracker.value("woosync_metrics_refresh_errors_total") == 0
        assert tracker.value("faststream_received_messages_total", app_name="tracker") > 0


def woosync_health(stack_port: int, *args: str) -> int:
    """``woosync health syncer ...`` as a container's health check runs it; its exit status."""
    env = {**os.environ, "WOOSYNC_SYNCER_PORT": str(stack_port)}
    argv = [sys.executable, "-m", "woosync.cli", "health", "syncer", *args]
    return subprocess.run(argv, env=env, capture_output=True, timeout=60).returncode


async def test_a_consumer_without_its_database_is_live_but_not_ready(
    settings: Settings, tmp_path: Path, database_url: str
) -> None:
    """The syncer's readiness follows its database: the test's own database is dropped (its
    connections terminated) under a running syncer process; the shared server keeps running.
    ``woosync health`` (the containers' health check) says the same, by its exit status."""
    import asyncpg

    from tests.conftest import PG_ADMIN_URL

    async with running_stack(settings, tmp_path) as stack:
        url = stack.url("syncer")
        port = stack.ports[("syncer", 0)]
        assert woosync_health(port) == 0
        assert woosync_health(port, "--ready") == 0
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(url + "/readyz")).status_code == 200
            name = database_url.rsplit("/", 1)[-1]
            admin = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await admin.close()

            async def not_ready() -> httpx.Response | None:
                answer = await client.get(url + "/readyz")
                return answer if answer.status_code == 503 else None

            answer = await wait_until(not_ready, "syncer /readyz 503", timeout_s=30, every_s=0.5)
            assert answer.json() == {
                "status": "unavailable",
                "checks": {"database": False, "broker": True},
            }
            assert (await client.get(url + "/healthz")).status_code == 200
            assert (await client.get(url + "/metrics")).status_code == 200
        assert woosync_health(port) == 0
        assert woosync_health(port, "--ready") == 1
        assert woosync_health(free_port()) == 1  # nothing listens there
