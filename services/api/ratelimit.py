"""Per-org request rate limit: a token bucket per org, in this api process.

aiolimiter's ``AsyncLimiter`` is a leaky bucket, which is the token bucket seen from the other
side (its level is the tokens spent): it holds ``burst`` requests and refills at
``per_minute / 60`` per second. A request that finds the bucket empty is refused at once (429)
instead of waiting, with ``Retry-After`` set to the time one token takes to come back, which is
an upper bound on the wait since a refused request finds less than one token missing.

The buckets live in the process: with N api replicas an org gets up to N times the rate. One
bucket per org that has made an authenticated request, so the map is bounded by the orgs table.
"""

from __future__ import annotations

import math
from uuid import UUID

from aiolimiter import AsyncLimiter


class OrgRateLimiter:
    def __init__(self, per_minute: int, burst: int) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("rate limits must be at least 1")
        self._burst = burst
        # A bucket of `burst` that drains completely in burst * 60 / per_minute seconds.
        self._period_s = burst * 60.0 / per_minute
        self.retry_after_s = math.ceil(60.0 / per_minute)
        self._buckets: dict[UUID, AsyncLimiter] = {}

    async def allow(self, org_id: UUID) -> bool:
        """Take one token from the org's bucket; False (and nothing taken) when it is empty."""
        bucket = self._buckets.get(org_id)
        if bucket is None:
            bucket = self._buckets[org_id] = AsyncLimiter(self._burst, self._period_s)
        if not bucket.has_capacity():
            return False
        # Has capacity, so this returns without suspending: no other request can slip in.
        await bucket.acquire()
        return True
