"""Request rate limits of the api and the tracker: a token bucket per key (an org, or a client
address), in one process.

aiolimiter's ``AsyncLimiter`` is a leaky bucket, which is the token bucket seen from the other
side (its level is the tokens spent): it holds ``burst`` requests and refills at
``per_minute / 60`` per second. A request that finds the bucket empty is refused at once (429)
instead of waiting, with ``Retry-After`` set to the time one token takes to come back, which is
an upper bound on the wait since a refused request finds less than one token missing.

The api uses two (``services.api.web.require_caller``): one per org for authenticated requests,
and one per client address for refused keys, so that guessing keys or flooding the key lookup is
slowed down too; the tracker's progress stream uses the second kind for refused keys and tokens.
The buckets live in the process: with N replicas a key gets up to N times the rate. The map is
bounded: past ``max_keys`` buckets, idle ones (full again) are dropped, which forgets nothing
that limits anyone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from aiolimiter import AsyncLimiter

MAX_KEYS = 10_000


class RateLimiter:
    def __init__(self, per_minute: int, burst: int, *, max_keys: int = MAX_KEYS) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("rate limits must be at least 1")
        self._burst = burst
        # A bucket of `burst` that drains completely in burst * 60 / per_minute seconds.
        self._period_s = burst * 60.0 / per_minute
        self._max_keys = max_keys
        self.retry_after_s = math.ceil(60.0 / per_minute)
        self._buckets: dict[Hashable, AsyncLimiter] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def has_capacity(self, key: Hashable) -> bool:
        """Whether ``key`` could spend a token now (nothing is spent)."""
        bucket = self._buckets.get(key)
        return bucket is None or bucket.has_capacity()

    async def allow(self, key: Hashable) -> bool:
        """Take one token from the key's bucket; False (and nothing taken) when it is empty."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._drop_idle()
            bucket = self._buckets[key] = AsyncLimiter(self._burst, self._period_s)
        if not bucket.has_capacity():
            return False
        # Has capacity, so this returns without suspending: no other request can slip in.
        await bucket.acquire()
        return True

    def _drop_idle(self) -> None:
        # A bucket that could take a whole burst again is the same as no bucket.
        for key in [k for k, b in self._buckets.items() if b.has_capacity(self._burst)]:
            del self._buckets[key]
