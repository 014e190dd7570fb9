"""Every knob of every service, read from ``WOOSYNC_*`` environment variables.

One class so that a newcomer sees the whole configuration surface in one screen, and so that
``docker-compose.yml`` and the tests can be checked against it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WOOSYNC_", extra="ignore")

    # The services connect as woosync_app, which row-level security binds (migration 0005).
    database_url: str = "postgresql://woosync_app@127.0.0.1:5432/woosync"
    # The schema's owner: `woosync migrate` and the operator commands (keys, orgs, secret
    # rotation, dead-letter replay across orgs) use it. Never given to a service.
    admin_database_url: str = "postgresql://127.0.0.1:5432/woosync"
    # Each service process's own connection pool (set them per service in its environment).
    # The deployment's connections to PostgreSQL (or PgBouncer) are at most the sum over every
    # process of db_pool_max_size, plus one per tracker (the cleanup leader's session, below);
    # docs/operations.md, "Running several replicas".
    db_pool_min_size: int = Field(1, ge=0)
    db_pool_max_size: int = Field(10, ge=1)
    # asyncpg's prepared statements kept per connection. 0 behind a PgBouncer in transaction
    # pooling mode that does not track prepared statements (before 1.21, or
    # max_prepared_statements = 0): every statement is then prepared unnamed, within its request.
    db_statement_cache_size: int = Field(100, ge=0)
    # A URL that gives a PostgreSQL session of its own (PostgreSQL itself, or a PgBouncer pool in
    # session mode) for the tracker's cleanup leader, whose advisory lock lives as long as its
    # session. Empty: database_url (right unless that goes through transaction pooling).
    session_database_url: str = ""
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Derives the key that encrypts store secrets and the key that signs progress tokens.
    secret_key: SecretStr = SecretStr("dev-only-insecure-secret-change-me")
    # Earlier secret keys, newest first (a JSON list): still decrypt and verify during rotation.
    secret_key_previous: list[SecretStr] = []

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    tracker_host: str = "127.0.0.1"
    tracker_port: int = 8001
    # The fetcher's and the syncer's own HTTP port: /healthz, /readyz and /metrics only. 0 lets
    # the system pick a free port (several replicas on one host, tests).
    fetcher_host: str = "127.0.0.1"
    fetcher_port: int = Field(8002, ge=0, le=65535)
    syncer_host: str = "127.0.0.1"
    syncer_port: int = Field(8003, ge=0, le=65535)
    # Base URLs that clients are told to use (status_url, progress_url); behind a proxy they differ.
    public_api_url: str = ""
    public_tracker_url: str = ""
    # The api as the tracker reaches it, for the jobs page's requests (services.tracker.jobs_page);
    # empty: http://api_host:api_port (a wildcard host is reached on the loopback).
    jobs_page_api_url: str = ""
    # The API key the `woosync jobs` commands send to the api and tracker (never printed).
    api_key: SecretStr | None = None
    # Where stores deliver webhooks (the api as the store reaches it); public_api_url if empty.
    public_webhook_url: str = ""
    # The tracker's leader checks every connection's webhooks this often: re-enables those
    # WooCommerce disabled after failed deliveries, re-creates deleted ones.
    webhook_check_interval_s: float = Field(300.0, gt=0)

    # Prefix for the exchange and every queue: isolates test runs and side-by-side deployments.
    namespace: str = "woosync"

    default_batch_size: int = Field(100, ge=1, le=100)
    # A job started without a concurrency option adapts it to its store (shared.storelimit):
    # a store never read starts at default_concurrency, and no store gets more than this.
    default_concurrency: int = Field(4, ge=1, le=16)
    max_store_concurrency: int = Field(32, ge=1, le=256)
    # Growing delays of the syncer's retry tiers; one attempt per tier, then the parking queue.
    retry_delays_ms: list[int] = [5_000, 30_000, 120_000]
    prefetch: int = Field(8, ge=1)
    # The fetcher and the syncer are batch work: they lower their CPU priority (nice) by this
    # much at start, so that when a sync keeps every core busy the api's answers and the
    # progress streams still come first (docs/operations.md, "Sharing a machine"). 0 keeps the
    # priority they were started with. Containers: their CPU shares do the same (compose file).
    batch_nice: int = Field(0, ge=0, le=19)
    # The largest message woosync publishes: RabbitMQ 4's default max_message_size (16 MiB; 3.x
    # allows 128 MiB). A bigger body is refused before publishing (shared.broker.MessageTooLarge).
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=512 * 1024 * 1024)

    # HTTP to the store.
    store_timeout_s: float = 30.0
    store_max_attempts: int = 6
    store_backoff_max_s: float = 30.0
    # One attempt (connect, headers and the whole body) ends after this long, however the store
    # trickles its bytes: store_timeout_s bounds each read, this bounds the whole response.
    store_request_deadline_s: float = Field(60.0, gt=0)
    # A response body (decoded) larger than this is refused, never buffered further.
    store_max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # The api's connection test on `start` (DNS, address check and the store request) ends
    # after this long with 422 store_unreachable; at most this many run at once per api process
    # (beyond: 503 with Retry-After), and at most max_concurrent_syncs_per_org per org (429).
    store_check_deadline_s: float = Field(15.0, gt=0)
    max_concurrent_store_checks: int = Field(16, ge=1)

    progress_token_ttl_s: int = 600
    progress_interval_s: float = 0.25
    # An open progress stream checks its API key (revoked?) or token (expired?) this often, and
    # ends when it no longer holds; at most this many streams per org are open at once.
    sse_recheck_interval_s: float = Field(5.0, gt=0)
    max_sse_streams_per_org: int = Field(50, ge=1)
    tracker_sweep_interval_s: float = 0.25
    # A queued or processing job without progress (no page read, no line settled) for this long
    # is failed as stalled, so `retry` can resume it. Must exceed the longest legitimate pause:
    # the store retry budget and the longest retry tier.
    stall_timeout_s: float = Field(600.0, gt=0)
    # Cleanup (shared/cleanup.py): finished jobs, their lines and pages are removed this many
    # days after they finished, by the one tracker holding the cleanup lock, every
    # cleanup_interval_s, at most cleanup_batch_size rows per transaction.
    retention_days: int = Field(30, ge=1)
    cleanup_interval_s: float = Field(3600.0, gt=0)
    cleanup_batch_size: int = Field(1000, ge=1, le=10_000)

    # Schedules (shared/schedules.py): the tracker holding the scheduler lock looks for due
    # schedules this often; an interval schedule may not be shorter than schedule_min_interval_s
    # (a store is read whole each time; tests lower it).
    scheduler_interval_s: float = Field(5.0, gt=0)
    schedule_min_interval_s: int = Field(60, ge=1)

    # The fetcher's crawl. A store claiming more customers than this fails its job at once
    # (X-WP-Total is the store's word; an int column holds at most 2^31 - 1).
    max_store_customers: int = Field(10_000_000, ge=1, le=2**31 - 1)
    # A crawl running this long hands its job on (a fresh sync.requested) and acks its message,
    # well within RabbitMQ's consumer_timeout (30 min by default).
    crawl_slice_s: float = Field(900.0, gt=0)
    # How often a crawl checks, between page records, that its job is still open.
    crawl_check_interval_s: float = Field(0.5, gt=0)
    # Crawls one fetcher runs at once (the sync requests it holds unacked): a job waits for a
    # free one in the fetcher's queue. Each store's concurrency bounds its own requests.
    fetcher_prefetch: int = Field(256, ge=1)
    # Customers one fetcher may have published ahead of the syncer (lines pending), shared
    # among its running crawls, each never below two pages of its batch size
    # (services.fetcher.backlog): the syncer's queue then holds a few batches of every job,
    # which progress side by side. 0: no bound (each crawl reads as fast as its store answers).
    fetch_backlog_customers: int = Field(5000, ge=0)
    # A crawl waiting for its backlog to drain reads it again at most this long apart.
    fetch_backlog_poll_s: float = Field(1.0, gt=0)

    # The api's preview reads a store of at most this many customers (X-WP-Total) while the
    # client waits, all of it within preview_deadline_s (else 422 store_unreachable).
    preview_inline_max_customers: int = Field(2000, ge=1, le=2**31 - 1)
    preview_deadline_s: float = Field(60.0, gt=0)
    # A larger store is previewed by a job of kind 'preview' (the fetcher reads it, holding its
    # customers in memory, so it is bounded too: a store above this fails the preview job).
    preview_job_max_customers: int = Field(50_000, ge=1, le=2**31 - 1)

    # Stores on private, loopback, link-local or reserved addresses (demo and tests only).
    allow_private_urls: bool = False

    # Per-org API token bucket: refills at rate_limit_per_minute, holds at most rate_limit_burst.
    rate_limit_per_minute: int = Field(120, ge=1)
    rate_limit_burst: int = Field(30, ge=1)
    # Requests with a missing or refused API key, per client address (same kind of bucket).
    refused_key_limit_per_minute: int = Field(30, ge=1)
    refused_key_limit_burst: int = Field(10, ge=1)
    # Jobs of one org that may be draft, queued or processing at once (one per connection always).
    max_concurrent_syncs_per_org: int = Field(4, ge=1)
    log_level: str = "INFO"
    # json, text, or auto: text when stderr is a terminal, JSON lines otherwise (shared.logs).
    log_format: Literal["auto", "json", "text"] = "auto"

    @model_validator(mode="after")
    def _pool_sizes(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"WOOSYNC_DB_POOL_MIN_SIZE ({self.db_pool_min_size}) exceeds "
                f"WOOSYNC_DB_POOL_MAX_SIZE ({self.db_pool_max_size})"
            )
        return self

    def leader_database_url(self) -> str:
        """Where a session that holds an advisory lock connects (see session_database_url)."""
        return self.session_database_url or self.database_url

    def api_base(self) -> str:
        return self.public_api_url or f"http://{self.api_host}:{self.api_port}"

    def webhook_base(self) -> str:
        return self.public_webhook_url or self.api_base()

    def jobs_page_api_base(self) -> str:
        if self.jobs_page_api_url:
            return self.jobs_page_api_url.rstrip("/")
        wildcard = self.api_host in ("0.0.0.0", "", "::")  # noqa: S104 - a bind, not a URL
        host = "127.0.0.1" if wildcard else self.api_host
        return f"http://{host}:{self.api_port}"

    def tracker_base(self) -> str:
        return self.public_tracker_url or f"http://{self.tracker_host}:{self.tracker_port}"
