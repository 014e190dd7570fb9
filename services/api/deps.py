"""What the api's actions need, passed explicitly instead of imported as globals."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from faststream.rabbit import RabbitBroker

from shared.crypto import ProgressTokens, SecretBox
from shared.ratelimit import RateLimiter
from shared.settings import Settings
from shared.topology import Topology
from shared.woocommerce import RetryPolicy, StoreConfig, WooClient

# Testing a store before accepting a job: answer the client within seconds, so retry briefly
# (unlike the fetcher, which is patient).
CHECK_MAX_ATTEMPTS = 2
CHECK_TIMEOUT_S = 10.0
CHECK_BUDGET_S = 15.0


class StoreProbe(Protocol):
    async def check_connection(self) -> int: ...


StoreClientFactory = Callable[[StoreConfig], AbstractAsyncContextManager[StoreProbe]]


def store_client_factory(settings: Settings) -> StoreClientFactory:
    """Real WooCommerce clients with the api's short retry policy."""
    policy = RetryPolicy(
        max_attempts=CHECK_MAX_ATTEMPTS,
        backoff_base_s=0.25,
        backoff_max_s=1.0,
        budget_s=CHECK_BUDGET_S,
    )
    timeout_s = min(settings.store_timeout_s, CHECK_TIMEOUT_S)

    def open_client(config: StoreConfig) -> AbstractAsyncContextManager[StoreProbe]:
        return WooClient(
            config,
            policy=policy,
            timeout_s=timeout_s,
            pin_public_address=not settings.allow_private_urls,
        )

    return open_client


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
    refusals: RateLimiter  # per client address, for refused keys
