"""What the api's actions need, passed explicitly instead of imported as globals."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from faststream.rabbit import RabbitBroker

from services.api.store_probe import (
    StoreChecks,
    StoreClientFactory,
    StoreReaderFactory,
    store_client_factory,
    store_reader_factory,
)
from shared.crypto import ProgressTokens, SecretBox
from shared.ratelimit import RateLimiter
from shared.settings import Settings
from shared.topology import Topology
from shared.web import RefusedCallers

__all__ = ["Deps", "StoreChecks", "StoreClientFactory", "store_client_factory"]


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
    # Clients that read a store's pages for a preview (from the settings).
    store_reader: StoreReaderFactory = field(init=False)

    def __post_init__(self) -> None:
        checks = StoreChecks(
            self.settings.max_concurrent_store_checks, self.settings.max_concurrent_syncs_per_org
        )
        object.__setattr__(self, "store_checks", checks)
        object.__setattr__(self, "store_reader", store_reader_factory(self.settings))
