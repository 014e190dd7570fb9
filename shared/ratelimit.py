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

A key asked often (a dashboard polling a job's status 200 times a second) does not cost a write
per request: each process takes tokens for the next :data:`RESERVE_AHEAD_S` of that key's
recent rate in one statement (at most :data:`MAX_RESERVED`, and only when the bucket holds that
many; else one), and spends them locally within :data:`RESERVE_KEEP_S`. The tokens come out of
the shared bucket all the same, so no process or pair of processes ever gets more than the
limit; a key asked rarely takes one token a request, as before, and at most
``MAX_RESERVED - 1`` tokens go unused when a busy key suddenly stops.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg

log = logging.getLogger("woosync.ratelimit")

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

# Local reservations (see the module docstring).
RESERVE_AHEAD_S = 0.05  # tokens for this long of the key's recent rate are taken at once
MAX_RESERVED = 10
RESERVE_KEEP_S = 0.25  # unspent reserved tokens are dropped after this long
# A bucket found with capacity is trusted to still have it for this long, until a token is taken
# from it here (see ``has_capacity``).
CAPACITY_KEEP_S = 1.0
_RATE_WINDOW_S = 1.0  # the recent rate is counted over this window


@dataclass
class _Reserve:
    """One key's tokens taken ahead, and its requests in the current rate window."""

    tokens: int = 0
    expires: float = 0.0
    window_start: float = 0.0
    window_calls: int = 0
    last_rate: float = 0.0


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
        self._reserves: dict[str, _Reserve] = {}
        self._clear_until: dict[str, float] = {}

    def _bucket(self, key: object) -> str:
        return f"{self._scope}:{key}"

    async def has_capacity(self, key: object) -> bool:
        """Whether ``key`` could spend a token now (nothing is spent).

        Asked before every request of an address (``shared.web.RefusedCallers``), so a bucket
        found with capacity is not read again for :data:`CAPACITY_KEEP_S`, unless this process
        takes a token from it first (a refusal here), which makes the next check read it. Tokens
        taken by other processes are seen within that time: after its bucket ran out elsewhere, an
        address gets through a process only until that process counts its next refusal (the
        requests already under way at that moment), and for a second at most."""
        bucket = self._bucket(key)
        now = time.monotonic()
        if self._clear_until.get(bucket, 0.0) > now:
            return True
        reserve = self._reserves.get(bucket)
        if reserve is not None and reserve.tokens > 0 and reserve.expires > now:
            return True
        allowed: bool = await self._pool.fetchval(
            HAS_TOKEN, bucket, self._interval_s, self._burst_s
        )
        if allowed:
            if len(self._clear_until) > 10_000:  # addresses come and go: forget the old ones
                self._clear_until = {b: t for b, t in self._clear_until.items() if t > now}
            self._clear_until[bucket] = now + CAPACITY_KEEP_S
        return allowed

    async def allow(self, key: object) -> bool:
        """Take one token from the key's bucket; False (and nothing taken) when it is empty."""
        bucket = self._bucket(key)
        self._clear_until.pop(bucket, None)
        now = time.monotonic()
        reserve = self._reserves.get(bucket)
        if reserve is None:
            if len(self._reserves) > 10_000:  # keys come and go: forget the idle ones
                self._reserves = {
                    b: r for b, r in self._reserves.items() if now - r.window_start < 60
                }
            reserve = self._reserves[bucket] = _Reserve(window_start=now)
        if now - reserve.window_start >= _RATE_WINDOW_S:
            reserve.last_rate = reserve.window_calls / (now - reserve.window_start)
            reserve.window_start, reserve.window_calls = now, 0
        reserve.window_calls += 1
        if reserve.tokens > 0 and reserve.expires > now:
            reserve.tokens -= 1
            return True
        ahead = min(MAX_RESERVED, int(reserve.last_rate * RESERVE_AHEAD_S))
        taken = 0
        if ahead > 1 and await self._take(bucket, ahead):
            taken = ahead
        if taken == 0 and await self._take(bucket, 1):
            taken = 1
        if random.randrange(CLEANUP_EVERY) == 0:
            await self._pool.execute(DELETE_FULL_BUCKETS)
        if taken == 0:
            return False
        reserve.tokens, reserve.expires = taken - 1, time.monotonic() + RESERVE_KEEP_S
        return True

    async def _take(self, bucket: str, tokens: int) -> bool:
        """``tokens`` tokens from the shared bucket at once, or none."""
        taken = await self._pool.fetchval(
            TAKE_TOKEN, bucket, tokens * self._interval_s, self._burst_s
        )
        return bool(taken)


# $1 bucket: one opener of a bucket at a time, so two trackers cannot both take the last slot.
LOCK_STREAM_BUCKET = "SELECT pg_advisory_xact_lock(7428103, hashtext($1))"
# $1 bucket, $2 lease id, $3 cap, $4 lease seconds. Expired leases (a tracker that died) go first.
OPEN_STREAM = """
WITH expired AS (
    DELETE FROM woosync_stream_lease WHERE bucket = $1 AND expires_at <= now()
)
INSERT INTO woosync_stream_lease (id, bucket, expires_at)
SELECT $2, $1, now() + make_interval(secs => $4)
WHERE (SELECT count(*) FROM woosync_stream_lease
       WHERE bucket = $1 AND expires_at > now()) < $3
RETURNING id
"""
RENEW_STREAM = """
UPDATE woosync_stream_lease SET expires_at = now() + make_interval(secs => $2) WHERE id = $1
"""
# $1 lease ids, $2 lease seconds: the leases of many streams renewed in one statement.
RENEW_STREAMS = """
UPDATE woosync_stream_lease SET expires_at = now() + make_interval(secs => $2)
WHERE id = ANY($1::uuid[])
"""
CLOSE_STREAM = "DELETE FROM woosync_stream_lease WHERE id = $1"


class StreamSlots:
    """At most ``limit`` open streams per key, counted across every process through leases in
    PostgreSQL: taken when a stream opens, renewed while it is open (``renew`` at least every
    ``lease_s``), given back when it ends. A process that dies leaves leases that run out."""

    def __init__(self, pool: asyncpg.Pool, scope: str, limit: int, lease_s: float) -> None:
        self._pool = pool
        self._scope = scope
        self.limit = limit
        self.lease_s = lease_s

    async def open(self, key: object) -> UUID | None:
        """A lease for one more stream of ``key``, or None when ``limit`` are open."""
        bucket = f"{self._scope}:{key}"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_STREAM_BUCKET, bucket)
            lease: UUID | None = await conn.fetchval(
                OPEN_STREAM, bucket, uuid4(), self.limit, self.lease_s
            )
        return lease

    async def renew(self, lease: UUID) -> None:
        await self._pool.execute(RENEW_STREAM, lease, self.lease_s)

    async def renew_many(self, leases: list[UUID]) -> None:
        """Renew many streams' leases at once (a tracker batches its streams' renewals)."""
        await self._pool.execute(RENEW_STREAMS, leases, self.lease_s)

    async def close(self, lease: UUID) -> None:
        """Give the slot back; if the database cannot be reached, the lease runs out by itself."""
        try:
            await self._pool.execute(CLOSE_STREAM, lease)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("a stream lease stays until it expires: %s", type(exc).__name__)
