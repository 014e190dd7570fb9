"""Prometheus metrics: one ``CollectorRegistry`` per service app (never the process-global one),
the metric families each service fills, the HTTP request middleware and the ``/metrics`` answer.

Names (docs/operations.md, "Metrics", lists them with their labels; deploy/grafana-dashboard.json
uses them):

- every service: FastStream's ``faststream_*`` consumer and publisher metrics, labelled
  ``app_name`` = the service (``faststream.rabbit.prometheus.RabbitPrometheusMiddleware``);
- api and tracker: ``woosync_http_requests_total`` and ``woosync_http_request_duration_seconds``
  by route *template* (never the raw path, so ids do not make new series), method and status;
- fetcher: ``woosync_store_page_duration_seconds`` and ``woosync_store_page_errors_total`` by
  store connection id (a uuid: never the URL, which may carry credentials; one series per
  connection, which an org creates deliberately);
- syncer: ``woosync_customers_synced_total``, ``woosync_customers_failed_total``,
  ``woosync_retries_total`` and ``woosync_retried_customers_total`` by retry tier;
- tracker: ``woosync_jobs`` by state and ``woosync_queue_messages`` / ``woosync_queue_consumers``
  by queue and role (work: the consumer lag; parking; retry), both read when scraped.

Values read at scrape time are refreshed by the ``/metrics`` endpoint before it renders; a
source that cannot be read keeps its last values and counts ``woosync_metrics_refresh_errors_total``
instead of failing the scrape.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.lifecycle import JobState

# Store pages: a page is one HTTP request, but with retries and a slow store it can take minutes.
PAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNMATCHED_ROUTE = "<unmatched>"

Refresh = Callable[[], Awaitable[None]]


def new_registry() -> CollectorRegistry:
    """A registry of one service app; ``auto_describe`` so duplicate names fail at once."""
    return CollectorRegistry(auto_describe=True)


def metrics_endpoint(
    registry: CollectorRegistry, refresh: Refresh | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: the registry in Prometheus' text format, refreshed first if asked."""

    async def endpoint(request: Request) -> Response:
        if refresh is not None:
            await refresh()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return endpoint


@dataclass
class HttpMetrics:
    """Requests of a Starlette app by route template, method and status."""

    registry: CollectorRegistry
    requests: Counter = field(init=False)
    duration: Histogram = field(init=False)

    def __post_init__(self) -> None:
        labels = ("route", "method", "status")
        self.requests = Counter(
            "woosync_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels,
            registry=self.registry,
        )
        self.duration = Histogram(
            "woosync_http_request_duration_seconds",
            "Time to answer an HTTP request (a progress stream: its whole life).",
            labels,
            registry=self.registry,
        )


def route_template(scope: Scope) -> str:
    """The path template of the route that serves ``scope`` (``/jobs/{job_id}``), so that ids
    in paths never become label values."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return str(getattr(route, "path", UNMATCHED_ROUTE))
    return UNMATCHED_ROUTE


class RequestMetrics:
    """Pure ASGI middleware (streams pass through untouched) counting and timing requests."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes every handler is a 500 for the client
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            labels = (route_template(scope), scope.get("method", ""), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.duration.labels(*labels).observe(time.perf_counter() - started)


@dataclass
class FetcherMetrics:
    """Store page reads per store connection: how long each took, and which failed and why."""

    registry: CollectorRegistry
    page_duration: Histogram = field(init=False)
    page_errors: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.page_duration = Histogram(
            "woosync_store_page_duration_seconds",
            "Time to read one page of a store's customers, retries included, by connection.",
            ("connection",),
            buckets=PAGE_BUCKETS,
            registry=self.registry,
        )
        self.page_errors = Counter(
            "woosync_store_page_errors",
            "Store page reads that failed (after the client's retries), by connection and kind.",
            ("connection", "kind"),
            registry=self.registry,
        )

    def observe_page(self, connection_id: UUID, seconds: float, error: str | None) -> None:
        connection = str(connection_id)
        self.page_duration.labels(connection).observe(seconds)
        if error is not None:
            self.page_errors.labels(connection, error).inc()


@dataclass
class SyncerMetrics:
    """What the syncer's deliveries settled: customers synced, failed for good, retried."""

    registry: CollectorRegistry
    synced: Counter = field(init=False)
    failed: Counter = field(init=False)
    retries: Counter = field(init=False)
    retried_customers: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.synced = Counter(
            "woosync_customers_synced",
            "Customers committed (stored, unchanged or kept newer) by the syncer.",
            registry=self.registry,
        )
        self.failed = Counter(
            "woosync_customers_failed",
            "Customers failed for good (parked): refused, or their retries spent.",
            registry=self.registry,
        )
        self.retries = Counter(
            "woosync_retries",
            "Batches published to a retry tier, by tier.",
            ("tier",),
            registry=self.registry,
        )
        self.retried_customers = Counter(
            "woosync_retried_customers",
            "Customers sent to a retry tier, by tier.",
            ("tier",),
            registry=self.registry,
        )


@dataclass
class TrackerMetrics:
    """Jobs by state and queue depths, read when scraped (one grouped query, one passive
    declare per queue)."""

    registry: CollectorRegistry
    jobs: Gauge = field(init=False)
    queue_messages: Gauge = field(init=False)
    queue_consumers: Gauge = field(init=False)
    refresh_errors: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = Gauge(
            "woosync_jobs", "Sync jobs of every org, by state.", ("state",), registry=self.registry
        )
        self.queue_messages = Gauge(
            "woosync_queue_messages",
            "Messages ready in a queue, by queue and role (work: consumer lag; parking; retry).",
            ("queue", "role"),
            registry=self.registry,
        )
        self.queue_consumers = Gauge(
            "woosync_queue_consumers",
            "Consumers of a queue, by queue and role.",
            ("queue", "role"),
            registry=self.registry,
        )
        self.refresh_errors = Counter(
            "woosync_metrics_refresh_errors",
            "Scrapes that could not read a source (database, broker); its values are stale.",
            ("source",),
            registry=self.registry,
        )

    def set_jobs(self, counts: dict[str, int]) -> None:
        """Every state gets a value, 0 when no job is in it, so a panel never shows a gap."""
        for state in JobState:
            self.jobs.labels(state.value).set(counts.get(state.value, 0))

    def set_queue(self, queue: str, role: str, messages: int, consumers: int) -> None:
        self.queue_messages.labels(queue, role).set(messages)
        self.queue_consumers.labels(queue, role).set(consumers)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can render, labelled families without samples yet
    included (``woosync_retries_total``, ``..._bucket``): what a query may name."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names
