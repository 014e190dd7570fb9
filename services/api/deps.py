"""What the api's actions need, passed explicitly instead of imported as globals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol
from uuid import UUID

import asyncpg
from faststream.rabbit import RabbitBroker

from shared.crypto import ProgressTokens, SecretBox
from shared.ratelimit import RateLimiter
from shared.settings import Settings
from shared.topology import Topology
from shared.web import RefusedCallers
from shared.woocommerce import RetryPolicy, StoreConfig, WooClient

# Testing a store before accepting a job: answer the client within seconds, so retry briefly
# (unlike the fetcher, which is patient). The whole test also runs under
# WOOSYNC_STORE_CHECK_DEADLINE_S (see actions.check_store).
CHECK_MAX_ATTEMPTS = 2
CHECK_TIMEOUT_S = 10.0


class StoreProbe(Protocol):
    async def check_connection(self) -> int: ...


StoreClientFactory = Callable[[StoreConfig], AbstractAsyncContextManager[StoreProbe]]


def store_client_factory(settings: Settings) -> StoreClientFactory:
    """Real WooCommerce clients with the api's short retry policy."""
    policy = RetryPolicy(
        max_attempts=CHECK_MAX_ATTEMPTS,
        backoff_base_s=0.25,
        backoff_max_s=1.0,
        budget_s=settings.store_check_deadline_s,
    )
    timeout_s = min(settings.store_timeout_s, CHECK_TIMEOUT_S)
    deadline_s = min(settings.store_request_deadline_s, settings.store_check_deadline_s)

    def open_client(config: StoreConfig) -> AbstractAsyncContextManager[StoreProbe]:
        return WooClient(
            config,
            policy=policy,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            max_response_bytes=settings.store_max_response_bytes,
            pin_public_address=not settings.allow_private_urls,
        )

    return open_client


class StoreChecks:
    """The store connection tests running in this api process, bounded in total and per org.

    A test beyond a bound is refused at once rather than queued: a queue of tests, each up to
    the check deadline, would hold requests open for minutes behind a few slow stores.
    """

    def __init__(self, limit: int, per_org: int) -> None:
        self.limit = limit
        self.per_org = per_org
        self._running = 0
        self._by_org: Counter[UUID] = Counter()

    def take(self, org_id: UUID) -> Literal["ok", "busy", "org_busy"]:
        """A slot for one test (then ``release`` it), or why there is none."""
        if self._by_org[org_id] >= self.per_org:
            return "org_busy"
        if self._running >= self.limit:
            return "busy"
        self._running += 1
        self._by_org[org_id] += 1
        return "ok"

    def release(self, org_id: UUID) -> None:
        self._running -= 1
        self._by_org[org_id] -= 1
        if self._by_org[org_id] <= 0:
            del self._by_org[org_id]


@dataclass(frozen=True)
class Deps:
    settings: Settings
    pool: asyncpg.Pool
    broker: RabbitBroker
    topology: Topology
    secrets: SecretBox
    tokens: ProgressTokens
    store_client: StoreClientFactory
    limiter: RateLimiter  # per org, for requests with a valid key
    refusals: RefusedCallers  # per client address, for missing or refused keys
    # Connection tests on `start`, bounded per process (from the settings).
    store_checks: StoreChecks = field(init=False)

    def __post_init__(self) -> None:
        checks = StoreChecks(
            self.settings.max_concurrent_store_checks, self.settings.max_concurrent_syncs_per_org
        )
        object.__setattr__(self, "store_checks", checks)
