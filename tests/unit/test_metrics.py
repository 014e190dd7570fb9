"""shared.metrics and what the services count with it: route templates instead of raw paths,
a registry per app, the syncer's counters from a real outcome, the fetcher's page figures."""

from __future__ import annotations

from uuid import uuid4

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.api.app import build_app as build_api
from services.syncer.app import count_outcome
from services.syncer.handlers import CustomerFailure, build_outcome
from shared.messages import CustomerBatch
from shared.metrics import FetcherMetrics, SyncerMetrics, metric_names, new_registry
from shared.paths import JOB_PATH
from shared.settings import Settings
from shared.topology import Topology


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_api_requests_are_counted_by_route_template_and_status() -> None:
    app = build_api(Settings(namespace="metrics-test"))
    transport = httpx.ASGITransport(app=app)  # no lifespan: the routes that need none
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/healthz")).status_code == 200
        job = JOB_PATH.replace("{job_id}", str(uuid4()))
        await client.get(job)  # answered however it is (no lifespan here): counted by template
        assert (await client.get("/no/such/path")).status_code == 404
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    samples = _samples(scrape.text)
    routes = {
        dict(labels).get("route") for name, labels in samples if name.startswith("woosync_http")
    }
    assert {"/healthz", JOB_PATH, "<unmatched>"} <= routes
    assert not any(r and "-" in r for r in routes), routes  # no uuid made a series
    key = (
        "woosync_http_requests_total",
        frozenset({"route": "/healthz", "method": "GET", "status": "200"}.items()),
    )
    assert samples[key] == 1
    key404 = (
        "woosync_http_requests_total",
        frozenset({"route": "<unmatched>", "method": "GET", "status": "404"}.items()),
    )
    assert samples[key404] == 1


def test_each_app_has_its_own_registry() -> None:
    settings = Settings(namespace="metrics-test")
    one, two = build_api(settings), build_api(settings)
    assert one.state.runtime.registry is not two.state.runtime.registry
    assert "woosync_http_requests_total" in metric_names(one.state.runtime.registry)
    assert "faststream_published_messages_total" in metric_names(one.state.runtime.registry)


def test_the_syncer_counts_synced_parked_and_retried_customers_per_tier() -> None:
    topology = Topology("metrics-test", retry_delays_ms=(200, 400, 800))
    metrics = SyncerMetrics(new_registry())
    batch = CustomerBatch(
        job_id=uuid4(),
        org_id=uuid4(),
        connection_id=uuid4(),
        page=1,
        customers=[{"id": n} for n in range(1, 6)],
    )
    failures = [
        CustomerFailure(4, "locked", {"id": 4}, retryable=True),
        CustomerFailure(5, "refused", {"id": 5}, retryable=False),
    ]
    synced = [type("Row", (), {"woo_id": n})() for n in (1, 2, 3)]
    first = build_outcome(batch, synced, failures, attempt=0, final=False)  # type: ignore[arg-type]
    count_outcome(metrics, topology, first)
    second = build_outcome(batch, [], failures[:1], attempt=1, final=False)
    count_outcome(metrics, topology, second)
    registry = metrics.registry
    assert registry.get_sample_value("woosync_customers_synced_total") == 3
    assert registry.get_sample_value("woosync_customers_failed_total") == 1
    assert registry.get_sample_value("woosync_retries_total", {"tier": "200ms"}) == 1
    assert registry.get_sample_value("woosync_retries_total", {"tier": "400ms"}) == 1
    assert registry.get_sample_value("woosync_retried_customers_total", {"tier": "200ms"}) == 1
    assert registry.get_sample_value("woosync_retries_total", {"tier": "800ms"}) is None


def test_fetcher_pages_are_labelled_by_connection_id_and_failure_kind() -> None:
    metrics = FetcherMetrics(new_registry())
    connection = uuid4()
    metrics.observe_page(connection, 0.25, None)
    metrics.observe_page(connection, 1.5, "StoreUnavailable")
    registry = metrics.registry
    labels = {"connection": str(connection)}
    assert registry.get_sample_value("woosync_store_page_duration_seconds_count", labels) == 2
    assert registry.get_sample_value("woosync_store_page_duration_seconds_sum", labels) == 1.75
    assert (
        registry.get_sample_value(
            "woosync_store_page_errors_total", {**labels, "kind": "StoreUnavailable"}
        )
        == 1
    )
