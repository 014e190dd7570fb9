"""Open progress streams against the real tracker (uvicorn, PostgreSQL, RabbitMQ): a stream ends
when its API key is revoked or its token expires, and an org has a capped number of streams,
counted across tracker replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from shared.auth import authenticate, create_org, revoke_key
from shared.settings import Settings
from tests.factories import make_job
from tests.helpers import serving_tracker, tokens_for, wait_until

WAIT_S = 10.0

PROGRESS = "/api/v1/integrations/sync/progress/{}"


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, url: str, **kwargs: object
) -> AsyncIterator[asyncio.Queue[ServerSentEvent | None]]:
    """An open stream whose events (then None when the server ends it) arrive on a queue."""
    events: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()
    opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def listen() -> None:
        async with aconnect_sse(client, "GET", url, **kwargs) as source:  # type: ignore[arg-type]
            opened.set_result(source.response.status_code)
            if source.response.status_code == 200:
                async for event in source.aiter_sse():
                    await events.put(event)
        await events.put(None)

    task = asyncio.create_task(listen())
    try:
        assert await asyncio.wait_for(opened, WAIT_S) == 200
        yield events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_closed(events: asyncio.Queue[ServerSentEvent | None]) -> list[ServerSentEvent]:
    seen: list[ServerSentEvent] = []
    async with asyncio.timeout(WAIT_S):
        while (event := await events.get()) is not None:
            seen.append(event)
    return seen


async def test_a_stream_ends_when_its_key_is_revoked(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    quick = settings.model_copy(update={"sse_recheck_interval_s": 0.5})
    org_id, key = await create_org(pool, "acme")
    caller = await authenticate(pool, f"Bearer {key}")
    assert caller is not None
    job_id = await make_job(pool, org_id)  # processing: the stream stays open
    async with serving_tracker(quick) as base, httpx.AsyncClient(timeout=WAIT_S) as client:
        url = base + PROGRESS.format(job_id)
        async with stream(client, url, headers={"Authorization": f"Bearer {key}"}) as events:
            first = await asyncio.wait_for(events.get(), WAIT_S)
            assert first is not None and first.event == "progress"
            # Each recheck the key passes renews the stream's lease: three renewals, and the
            # stream is still open.
            renewals: set[Any] = set()

            async def renewed_three_times() -> bool:
                renewals.add(await pool.fetchval("SELECT expires_at FROM woosync_stream_lease"))
                return len(renewals - {None}) >= 4  # the lease as taken, then three renewals

            await wait_until(renewed_three_times, "three rechecks passed", WAIT_S)
            assert events.empty()
            revoked_at = time.monotonic()
            assert await revoke_key(pool, caller.key_id) is not None
            seen = await until_closed(events)
            print(f"stream ended {time.monotonic() - revoked_at:.2f}s after the key was revoked")
        assert [e.event for e in seen] == ["error"]
        assert json.loads(seen[0].data)["error"]["code"] == "unauthorized"
        # And the key opens no new stream.
        refused = await client.get(url, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401


async def test_a_stream_ends_when_its_token_expires(settings: Settings, pool: asyncpg.Pool) -> None:
    quick = settings.model_copy(
        update={"sse_recheck_interval_s": 0.5, "progress_token_ttl_s": 2}
    )
    org_id, _ = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id)
    token = tokens_for(quick).issue(job_id, org_id)
    async with serving_tracker(quick) as base, httpx.AsyncClient(timeout=WAIT_S) as client:
        opened_at = time.monotonic()
        url = base + PROGRESS.format(job_id)
        async with stream(client, url, params={"token": token}) as events:
            seen = await until_closed(events)
            took = time.monotonic() - opened_at
            print(f"stream with a 2 s token ended {took:.2f}s after opening")
    assert [e.event for e in seen] == ["progress", "error"]
    assert json.loads(seen[-1].data)["error"]["code"] == "unauthorized"


async def test_streams_are_capped_per_org_across_trackers(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    capped = settings.model_copy(update={"max_sse_streams_per_org": 2})
    org_id, key = await create_org(pool, "acme")
    other_org, other_key = await create_org(pool, "other")
    job_id = await make_job(pool, org_id)
    other_job = await make_job(pool, other_org)
    tokens = tokens_for(capped)
    async with (
        serving_tracker(capped) as first,
        serving_tracker(capped) as second,
        httpx.AsyncClient(timeout=WAIT_S) as client,
        AsyncExitStack() as open_streams,
    ):
        def url(base: str, job: UUID) -> str:
            return base + PROGRESS.format(job)

        # One stream on each tracker: the org's two.
        mine = {"headers": {"Authorization": f"Bearer {key}"}}
        await open_streams.enter_async_context(stream(client, url(first, job_id), **mine))
        await open_streams.enter_async_context(
            stream(client, url(second, job_id), params={"token": tokens.issue(job_id, org_id)})
        )
        for base in (first, second):
            refused = await client.get(url(base, job_id), **mine)
            assert refused.status_code == 429, refused.text
            error = refused.json()["error"]
            assert error["code"] == "too_many_streams"
            assert "2 progress streams open" in error["message"]
            assert refused.headers["retry-after"]
        # Another org has streams of its own.
        theirs = {"headers": {"Authorization": f"Bearer {other_key}"}}
        async with stream(client, url(first, other_job), **theirs) as events:
            assert (await asyncio.wait_for(events.get(), WAIT_S)) is not None

        # Streams that end give their places back.
        await open_streams.aclose()

        async def reopened() -> bool:
            async with client.stream("GET", url(second, job_id), **mine) as response:
                return response.status_code == 200

        deadline = time.monotonic() + WAIT_S
        while not await reopened():
            assert time.monotonic() < deadline, "the closed streams never gave their places back"
            await asyncio.sleep(0.1)
