"""Watching the stack from outside (demo, benchmarks, tests, ``woosync jobs watch``): readiness,
and a job's SSE stream, once or resuming across dropped connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse

DEFAULT_RETRY_S = 2.0
MAX_RETRY_S = 10.0


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


@dataclass(frozen=True)
class StreamEvent:
    """One event of a job's progress stream: its name, id and the job's status."""

    event: str
    id: int
    status: dict[str, Any]


class StreamRefused(Exception):
    """The tracker answered the stream with a client error, or ended it with an error event:
    reconnecting would not help (a refused key, an unknown job)."""


async def follow_resuming(
    stream_url: str,
    *,
    headers: dict[str, str] | None = None,
    give_up_after_s: float = 300.0,
    on_retry: Callable[[str], None] | None = None,
) -> AsyncIterator[StreamEvent]:
    """Yield a job's progress events until ``complete``, reconnecting when the stream drops.

    A reconnect sends ``Last-Event-ID`` (the tracker numbers on from it) and yields nothing it
    already yielded: no event whose id is not above the last one, and not the status it opens
    with when that is the status last yielded. It waits the stream's ``retry`` between attempts
    (at most ``MAX_RETRY_S``) and gives up, raising :class:`TimeoutError`, after
    ``give_up_after_s`` without a successful connection. A 4xx other than 429, or an ``error``
    event, raises :class:`StreamRefused`.
    """
    last_id = 0
    last_status: dict[str, Any] | None = None
    retry_s = DEFAULT_RETRY_S
    failing_since: float | None = None
    timeout = httpx.Timeout(None, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while True:
            request_headers = dict(headers or {})
            if last_id:
                request_headers["Last-Event-ID"] = str(last_id)
            problem: str
            try:
                async with aconnect_sse(client, "GET", stream_url, headers=request_headers) as src:
                    status_code = src.response.status_code
                    if 400 <= status_code < 500 and status_code != 429:
                        await src.response.aread()
                        raise StreamRefused(_error_message(src.response.text, status_code))
                    if status_code != 200:
                        problem = f"the tracker answered {status_code}"
                    else:
                        failing_since = None
                        async for sse in src.aiter_sse():
                            if sse.retry:
                                retry_s = min(sse.retry / 1000, MAX_RETRY_S)
                            if sse.event == "error" and sse.data:
                                raise StreamRefused(_error_message(sse.data, None))
                            if not sse.data or not sse.id:
                                continue
                            event_id, status = int(sse.id), json.loads(sse.data)
                            if event_id <= last_id:
                                continue
                            last_id = event_id
                            if sse.event == "progress" and status == last_status:
                                continue
                            last_status = status
                            yield StreamEvent(sse.event, event_id, status)
                            if sse.event == "complete":
                                return
                        problem = "the stream ended before the job did"
            except httpx.TransportError as exc:
                problem = f"connection lost ({type(exc).__name__})"
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > give_up_after_s:
                raise TimeoutError(f"{problem}; gave up after {give_up_after_s:.0f} s")
            if on_retry is not None:
                on_retry(f"{problem}; reconnecting in {retry_s:.0f} s")
            await asyncio.sleep(retry_s)


def _error_message(text: str, status_code: int | None) -> str:
    """The message of an error envelope, or the status code when the body is not one."""
    try:
        message = str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = "no details"
    return f"{status_code}: {message}" if status_code else message
