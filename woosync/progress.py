"""Watching the stack from outside (demo, benchmarks, tests): readiness, and a job's SSE stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse


async def follow(
    progress_url: str, *, timeout_s: float = 600.0, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield ``(event, status)`` pairs until the stream ends (after ``complete``)."""
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        aconnect_sse(client, "GET", progress_url, headers=dict(headers or {})) as source,
    ):
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            if not event.data:  # keep-alive pings carry no status
                continue
            yield event.event, json.loads(event.data)
            if event.event == "complete":
                return


async def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    """Poll a ``/readyz`` URL until it answers 200."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become ready in {timeout_s:.0f}s")
            await asyncio.sleep(0.2)
