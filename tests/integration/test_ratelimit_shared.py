"""Rate limits kept in PostgreSQL (shared.ratelimit): one bucket per key whatever the number of
processes, taken atomically; and two real api processes sharing one org's limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import uuid4

import asyncpg
import httpx

from shared.ratelimit import DELETE_FULL_BUCKETS, RateLimiter
from shared.settings import Settings
from tests.e2e.harness import Stack, new_org
from tests.helpers import wait_until

JOB_PATH = "/api/v1/integrations/woocommerce/sync/jobs/{}"


async def test_each_key_has_its_own_bucket(app_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(app_pool, "t", per_minute=6, burst=2)
    assert [await limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert not await limiter.has_capacity("a")
    assert await limiter.has_capacity("b") and await limiter.allow("b")
    assert limiter.retry_after_s == 10
    # Another scope is another bucket, and a refused request took nothing.
    assert await RateLimiter(app_pool, "u", per_minute=6, burst=2).allow("a")


class CountingPool:
    """The pool, counting the statements sent through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.statements = pool, 0

    async def fetchval(self, query: str, *args: object) -> object:
        self.statements += 1
        return await self.pool.fetchval(query, *args)


async def test_a_bucket_with_capacity_is_not_read_again_until_a_token_is_taken_from_it(
    app_pool: asyncpg.Pool,
) -> None:
    """The api asks every request's address (shared.web.RefusedCallers): one read a second per
    address, not one per request; a refusal counted here makes the next check read again."""
    counting = CountingPool(app_pool)
    limiter = RateLimiter(counting, "t", per_minute=6, burst=2)  # type: ignore[arg-type]
    assert all([await limiter.has_capacity("addr") for _ in range(50)])
    assert counting.statements == 1
    assert await limiter.allow("addr") and await limiter.allow("addr")  # the bucket is empty now
    reads = counting.statements
    assert not await limiter.has_capacity("addr")
    assert counting.statements == reads + 1


async def test_simultaneous_requests_never_take_more_than_the_burst(
    app_pool: asyncpg.Pool,
) -> None:
    limiter = RateLimiter(app_pool, "t", per_minute=1, burst=7)
    results = await asyncio.gather(*(limiter.allow("org") for _ in range(40)))
    assert results.count(True) == 7


async def test_full_buckets_are_deleted_and_limited_ones_kept(
    app_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    fast = RateLimiter(app_pool, "t", per_minute=60_000, burst=5)  # a token per millisecond
    slow = RateLimiter(app_pool, "t", per_minute=1, burst=1)
    await fast.allow("idle")
    assert await slow.allow("busy") and not await slow.allow("busy")

    async def idle_deleted() -> tuple[list[str]] | None:  # once "idle" is full again (~5 ms)
        await app_pool.execute(DELETE_FULL_BUCKETS)
        left = [r["bucket"] for r in await pool.fetch("SELECT bucket FROM woosync_rate_limit")]
        return None if "t:idle" in left else (left,)

    (left,) = await wait_until(idle_deleted, "the full bucket deleted", 10)
    assert left == ["t:busy"]
    assert not await slow.allow("busy")  # a limited key is never forgotten


async def _ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} never became ready"
            await asyncio.sleep(0.2)


async def test_two_api_processes_share_one_orgs_limit(settings: Settings, tmp_path: Path) -> None:
    per_minute, burst, refused_burst = 6, 10, 3
    env = {
        "WOOSYNC_RATE_LIMIT_PER_MINUTE": str(per_minute),
        "WOOSYNC_RATE_LIMIT_BURST": str(burst),
        "WOOSYNC_REFUSED_KEY_LIMIT_PER_MINUTE": str(per_minute),
        "WOOSYNC_REFUSED_KEY_LIMIT_BURST": str(refused_burst),
    }
    replicas = [Stack(settings, tmp_path / str(n), env) for n in range(2)]
    for stack in replicas:
        stack.log_dir.mkdir()
        stack.start("api")
    try:
        await asyncio.gather(*(_ready(s.api_url) for s in replicas))
        org = await new_org(settings)
        other = await new_org(settings, "other")
        async with httpx.AsyncClient(timeout=10) as client:
            started = time.monotonic()

            async def ask(n: int, headers: dict[str, str]) -> httpx.Response:
                url = replicas[n % 2].api_url + JOB_PATH.format(uuid4())
                return await client.get(url, headers=headers)

            answers = await asyncio.gather(*(ask(n, org.headers) for n in range(30)))
            elapsed = time.monotonic() - started
            accepted = [n for n, r in enumerate(answers) if r.status_code == 404]
            refused = [r for r in answers if r.status_code == 429]
            refused_by = {n % 2 for n, r in enumerate(answers) if r.status_code == 429}
            print(
                f"two api replicas, burst {burst}: {len(accepted)} of 30 accepted, "
                f"{len(refused)} refused in {elapsed:.2f}s"
            )
            assert len(accepted) + len(refused) == 30
            # The burst, plus at most what refilled meanwhile; one process alone would give each
            # replica a whole burst (20 accepted).
            assert burst <= len(accepted) <= burst + int(elapsed * per_minute / 60)
            assert refused_by == {0, 1}  # each replica refused once the one bucket was empty
            assert all(r.headers["retry-after"] == "10" for r in refused)
            assert {r.json()["error"]["code"] for r in refused} == {"rate_limited"}
            # Another org has its bucket of its own.
            assert (await ask(0, other.headers)).status_code == 404

            # Refused keys from one address, spread over both replicas, share one bucket too.
            bad = {"Authorization": "Bearer wsk_" + "A" * 43}
            guesses = [(await ask(n, bad)).status_code for n in range(refused_burst + 2)]
            assert guesses == [401] * refused_burst + [429, 429], guesses
    finally:
        for stack in replicas:
            stack.stop_all()


class _CountingPool:
    """The pool's statements counted: what a limiter costs the database per request."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool, self.statements = pool, 0

    async def fetchval(self, *args: object) -> object:
        self.statements += 1
        return await self._pool.fetchval(*args)

    async def execute(self, *args: object) -> str:
        self.statements += 1
        return await self._pool.execute(*args)


async def test_a_busy_key_does_not_cost_a_write_per_request(app_pool: asyncpg.Pool) -> None:
    counting = _CountingPool(app_pool)
    limiter = RateLimiter(counting, "t", per_minute=600_000, burst=1_000)  # type: ignore[arg-type]
    allowed = 0
    for _ in range(600):  # about 200 a second for 3 seconds
        allowed += await limiter.allow("org")
        await asyncio.sleep(0.005)
    assert allowed == 600
    # The first second one statement each; then blocks of the next 50 ms of requests (2 to 10
    # tokens at the 40 to 200 a second this loop makes, however busy the machine).
    assert counting.statements < 600 * 0.75


async def test_reserving_ahead_never_gives_more_than_the_bucket_holds(
    app_pool: asyncpg.Pool,
) -> None:
    # Two processes' limiters, a busy key: their tokens still come out of one bucket.
    one, two = (RateLimiter(app_pool, "t", per_minute=60, burst=30) for _ in range(2))
    started = time.monotonic()
    allowed = 0
    while time.monotonic() - started < 2.5:
        allowed += await one.allow("org") + await two.allow("org")
        await asyncio.sleep(0.004)
    refilled = int(time.monotonic() - started) + 1  # one token a second
    assert 30 <= allowed <= 30 + refilled
