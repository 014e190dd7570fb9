"""The fetcher's store page figures (``shared.metrics.FetcherMetrics``) from its real handler
against a simulated store: one observation per page request, labelled by the job's connection
id, and a failed read counted with its kind."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from services.fetcher.handlers import handle_sync_requested
from shared.messages import FetchCompleted, FetchFailed
from shared.metrics import FetcherMetrics, new_registry
from tests.helpers import Recorder, fetcher_deps, queue_new_org_sync
from tools.woosim.testing import running_simulator


async def test_every_page_read_is_timed_under_its_connection(pool: asyncpg.Pool) -> None:
    metrics = FetcherMetrics(new_registry())
    async with running_simulator(customers=237, seed=3) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50, concurrency=2)
        recorder = Recorder()
        deps = replace(fetcher_deps(pool, recorder), observe_page=metrics.observe_page)
        await handle_sync_requested(request, deps)
        requests = (await sim.stats())["requests"]
    assert recorder.of(FetchCompleted)
    labels = {"connection": str(request.connection_id)}
    registry = metrics.registry
    assert registry.get_sample_value("woosync_store_page_duration_seconds_count", labels) == (
        requests
    )
    assert registry.get_sample_value("woosync_store_page_duration_seconds_sum", labels) > 0
    assert (
        registry.get_sample_value(
            "woosync_store_page_errors_total", {**labels, "kind": "StoreUnavailable"}
        )
        is None
    )


async def test_a_page_the_store_keeps_failing_counts_as_an_error(pool: asyncpg.Pool) -> None:
    metrics = FetcherMetrics(new_registry())
    async with running_simulator(customers=120, seed=4) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50)
        await sim.set_faults(rate_5xx=1.0)
        recorder = Recorder()
        deps = replace(fetcher_deps(pool, recorder), observe_page=metrics.observe_page)
        await handle_sync_requested(request, deps)
    assert recorder.of(FetchFailed)
    labels = {"connection": str(request.connection_id)}
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "woosync_store_page_errors_total", {**labels, "kind": "StoreUnavailable"}
        )
        == 1
    )
    assert registry.get_sample_value("woosync_store_page_duration_seconds_count", labels) == 1
