"""The api's token buckets: one per key, refusing without waiting, and a bounded map."""

from __future__ import annotations

from shared.ratelimit import RateLimiter


async def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(per_minute=6, burst=2)
    assert [await limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert not limiter.has_capacity("a")
    assert limiter.has_capacity("b") and await limiter.allow("b")
    assert limiter.retry_after_s == 10


async def test_idle_buckets_are_dropped_when_the_map_is_full() -> None:
    limiter = RateLimiter(per_minute=60, burst=5, max_keys=3)
    await limiter.allow("busy")
    for _ in range(4):
        await limiter.allow("busy")  # empty now: must be kept, or it would start full again
    # Buckets of keys seen once are not idle yet either (a token is out), so the map grows...
    for key in ("x", "y", "z"):
        await limiter.allow(key)
    assert len(limiter) == 4
    assert not await limiter.allow("busy")  # ...and never forgets a key that is limited
