"""Request rate limits of the api and the tracker: a token bucket per key (an org, or a client
address), kept in PostgreSQL so that every replica spends from the same bucket.

Each bucket is one row of the unlogged table ``woosync_rate_limit`` (migration 0008) holding a
GCRA "theoretical arrival time": a token bucket that holds ``burst`` requests and refills at
``per_minute / 60`` per second, updated by one atomic statement per request (``INSERT … ON
CONFLICT DO UPDATE … WHERE``), so two replicas taking the last token at once cannot both get it.
The database's clock is the only clock. A request that finds the bucket empty is refused at once
(429) instead of waiting, with ``Retry-After`` set to the time one token takes to come back,
which is an upper bound on the wait since a refused request finds less than one token missing.

The api uses two (``services.api.web.require_caller``): one per org for authenticated requests,
and one per client address for refused keys, so that guessing keys or flooding the key lookup is
slowed down too; the tracker's progress stream uses the second kind for refused keys and tokens.
Buckets that are full again are the same as no row, and are deleted now and then.
"""

from __future__ import annotations

import math
import random

import asyncpg

# $1 bucket, $2 seconds per token, $3 seconds of burst (burst * $2). Takes a token, or changes
# nothing and returns no row when the bucket is empty.
TAKE_TOKEN = """
INSERT INTO woosync_rate_limit AS b (bucket, tat)
VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (bucket) DO UPDATE
SET tat = greatest(b.tat, now()) + make_interval(secs => $2)
WHERE greatest(b.tat, now()) + make_interval(secs => $2) <= now() + make_interval(secs => $3)
RETURNING true
"""

# Whether the bucket could give a token now (nothing is taken).
HAS_TOKEN = """
SELECT coalesce(
    (SELECT greatest(tat, now()) + make_interval(secs => $2) <= now() + make_interval(secs => $3)
     FROM woosync_rate_limit WHERE bucket = $1),
    true)
"""

DELETE_FULL_BUCKETS = "DELETE FROM woosync_rate_limit WHERE tat < now()"

# About one request in this many also deletes the buckets that are full again.
CLEANUP_EVERY = 1000


class RateLimiter:
    """Token buckets named ``<scope>:<key>``, shared through ``pool`` by every process."""

    def __init__(self, pool: asyncpg.Pool, scope: str, per_minute: int, burst: int) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("rate limits must be at least 1")
        self._pool = pool
        self._scope = scope
        self._interval_s = 60.0 / per_minute
        self._burst_s = burst * self._interval_s
        self.retry_after_s = math.ceil(60.0 / per_minute)

    def _bucket(self, key: object) -> str:
        return f"{self._scope}:{key}"

    async def has_capacity(self, key: object) -> bool:
        """Whether ``key`` could spend a token now (nothing is spent)."""
        allowed: bool = await self._pool.fetchval(
            HAS_TOKEN, self._bucket(key), self._interval_s, self._burst_s
        )
        return allowed

    async def allow(self, key: object) -> bool:
        """Take one token from the key's bucket; False (and nothing taken) when it is empty."""
        taken = await self._pool.fetchval(
            TAKE_TOKEN, self._bucket(key), self._interval_s, self._burst_s
        )
        if random.randrange(CLEANUP_EVERY) == 0:
            await self._pool.execute(DELETE_FULL_BUCKETS)
        return bool(taken)
