"""Following a job's SSE progress stream from a terminal (demo, benchmarks, tests)."""

from __future__ import annotations

import json
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
