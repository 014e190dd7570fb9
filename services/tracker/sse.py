"""Job progress as Server-Sent Events, plus the tiny page that shows it.

The stream polls the job row (``shared.jobs.get_status``) instead of listening to the broker:
the row is the truth the recompute loop writes, every tracker instance can serve every job, and a
client that reconnects simply gets the current status. Polling is one primary-key read per
followed job every ``progress_interval_s``, shared by every stream of that job in this process
(``.feeds``): database work grows with the jobs followed, not with their followers. An event goes
out only when the status changed.

Wire format (``text/event-stream``)::

    event: progress            one at connect, then one per change
    id: <n>                    increases by one per event (continues after Last-Event-ID)
    data: <JobStatus as JSON>

    event: complete            once, when the job is done or failed; then the stream ends
                               (JobStatus carries ``conflicts``: lines waiting for a person; a
                               job with any is not done, so its stream stays open)
    id: <n>
    data: <JobStatus as JSON>

The status carries ``rate_per_s`` and ``eta_s`` (``shared.jobs``), which the tracker's recompute
writes to the row; a changed rate is a change, so a moving job sends an event per recompute, a
stalled one settles.

``event: error`` (``{"error": {...}}``) ends the stream if the job disappears mid-stream, or
when its credential no longer holds: the stream checks its API key (revoked?) or progress token
(expired?) every ``WOOSYNC_SSE_RECHECK_INTERVAL_S`` and then ends with code ``unauthorized``
(the streams of one key share its database read, and their lease renewals are batched:
``.feeds.SharedChecks``).
Comment lines (``: ping``) keep idle connections open.

An org has at most ``WOOSYNC_MAX_SSE_STREAMS_PER_ORG`` streams open at once, across every tracker
(leases in PostgreSQL, ``shared.ratelimit.StreamSlots``); one more is answered 429.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from string import Template
from uuid import UUID

import asyncpg
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from services.tracker import queries as q
from services.tracker.feeds import JobFeed, JobFeeds, SharedChecks
from shared.auth import authenticate
from shared.crypto import ProgressTokens
from shared.db import for_org
from shared.jobs import JobStatus
from shared.lifecycle import JobState
from shared.paths import PROGRESS_PATH
from shared.ratelimit import StreamSlots
from shared.web import ApiError, RefusedCallers, error_response

log = logging.getLogger("woosync.tracker.sse")

PING_INTERVAL_S = 15
SEND_TIMEOUT_S = 30.0
RECONNECT_MS = 2_000

CREDENTIAL_GONE = (
    '{"error": {"code": "unauthorized", "message": '
    '"the API key was revoked or the progress token expired"}}'
)


def _job_id(request: Request) -> UUID | None:
    try:
        return UUID(request.path_params["job_id"])
    except ValueError:
        return None


@dataclass(frozen=True)
class Credential:
    """What a stream was opened with: an API key (its id) or a progress token."""

    org_id: UUID
    key_id: UUID | None = None
    token: str | None = None

    async def still_valid(self, checks: SharedChecks, tokens: ProgressTokens, job_id: UUID) -> bool:
        """The key is not revoked (a read shared by the key's streams, ``.feeds``), or the
        token has not expired (nor lost its signing key)."""
        if self.key_id is not None:
            return await checks.key_is_active(self.key_id, self.org_id)
        return self.token is not None and tokens.verify(self.token, job_id) == self.org_id


def key_checker(pool: asyncpg.Pool) -> Callable[[UUID, UUID], Awaitable[bool]]:
    """Whether an API key (of an org) is not revoked: the read behind a stream's recheck."""

    async def active(key_id: UUID, org_id: UUID) -> bool:
        found: bool = await for_org(pool, org_id).fetchval(q.KEY_IS_ACTIVE, key_id, org_id)
        return found

    return active


async def _credential(
    request: Request, pool: asyncpg.Pool, tokens: ProgressTokens, job_id: UUID
) -> Credential | None:
    """What the request speaks with: an API key if one is sent, else a progress token."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        caller = await authenticate(pool, authorization)
        return Credential(caller.org_id, key_id=caller.key_id) if caller else None
    token = request.query_params.get("token")
    org_id = tokens.verify(token, job_id) if token else None
    return Credential(org_id, token=token) if org_id else None


async def progress_events(
    feed: JobFeed,
    *,
    last_event_id: int = 0,
    recheck: Callable[[], Awaitable[bool]] | None = None,
    recheck_interval_s: float = 5.0,
) -> AsyncIterator[ServerSentEvent]:
    """The event stream of one job: progress now, progress on change, complete at the end.

    Statuses come from the job's shared ``feed`` (``.feeds``); the event ids are this stream's.
    ``recheck`` is awaited every ``recheck_interval_s``: False ends the stream with an
    ``unauthorized`` error event. Cancelled by sse-starlette when the client goes away; it holds
    nothing of its own but its place among the feed's followers, which the caller lets go.
    """
    loop = asyncio.get_running_loop()
    event_id = last_event_id
    sent: JobStatus | None = None
    first = True
    next_check = loop.time() + recheck_interval_s
    while True:
        version, status = feed.version, feed.status
        if status is None:
            yield ServerSentEvent(
                event="error",
                data='{"error": {"code": "job_not_found", "message": "the job no longer exists"}}',
            )
            return
        if first or status != sent:
            event_id += 1
            yield ServerSentEvent(
                event="progress",
                id=str(event_id),
                data=status.model_dump_json(),
                retry=RECONNECT_MS if first else None,
            )
            sent, first = status, False
        if status.is_final:
            event_id += 1
            yield ServerSentEvent(event="complete", id=str(event_id), data=status.model_dump_json())
            return
        await feed.wait(version, None if recheck is None else max(next_check - loop.time(), 0))
        if recheck is not None and loop.time() >= next_check:
            next_check = loop.time() + recheck_interval_s
            try:
                valid = await recheck()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("progress of job %s: credential check failed (%s)", feed.job_id, exc)
                continue  # checked again at the next interval
            if not valid:
                event_id += 1
                yield ServerSentEvent(event="error", id=str(event_id), data=CREDENTIAL_GONE)
                return


async def progress(request: Request) -> Response:
    """``GET /api/v1/integrations/sync/progress/{job_id}``: the job's progress stream."""
    job_id = _job_id(request)
    if job_id is None:
        return error_response(422, "invalid_job_id", "job_id must be a UUID")
    pool: asyncpg.Pool = request.state.pool
    refusals: RefusedCallers = request.state.refusals
    try:
        await refusals.check(request)
    except ApiError as exc:
        return exc.response()
    tokens: ProgressTokens = request.state.tokens
    credential = await _credential(request, pool, tokens, job_id)
    if credential is None:
        await refusals.refused(request)
        return error_response(
            401,
            "unauthorized",
            "send an API key as 'Authorization: Bearer <key>' or a valid progress token as ?token=",
            headers={"WWW-Authenticate": "Bearer"},
        )
    org_id = credential.org_id
    feeds: JobFeeds = request.state.feeds
    status, read_at = await feeds.read(org_id, job_id)
    if status is None:
        return error_response(404, "job_not_found", "no such job")
    try:
        last_event_id = max(int(request.headers.get("last-event-id", "0")), 0)
    except ValueError:
        last_event_id = 0
    streams: StreamSlots = request.state.streams
    lease = await streams.open(org_id)
    if lease is None:
        return error_response(
            429,
            "too_many_streams",
            f"this organisation already has {streams.limit} progress streams open; "
            "close one and try again",
            headers={"Retry-After": str(RECONNECT_MS // 1000)},
        )

    checks: SharedChecks = request.state.checks

    async def recheck() -> bool:
        """The credential still holds; the lease is renewed while it does."""
        if not await credential.still_valid(checks, tokens, job_id):
            return False
        checks.renew(lease)
        return True

    async def events() -> AsyncIterator[ServerSentEvent]:
        async with feeds.follow(org_id, job_id, status, read_at) as feed:
            async for event in progress_events(
                feed,
                last_event_id=last_event_id,
                recheck=recheck,
                recheck_interval_s=request.state.settings.sse_recheck_interval_s,
            ):
                yield event

    return EventSourceResponse(
        events(),
        ping=PING_INTERVAL_S,
        send_timeout=SEND_TIMEOUT_S,
        background=BackgroundTask(streams.close, lease),
    )


PROGRESS_PAGE = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>woosync job progress</title>
<style>
body{font:16px system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;color:#222}
.bar{height:1.4em;background:#eee;border-radius:.3em;overflow:hidden}
#fill{height:100%;width:0;background:#3a7;transition:width .2s}
#fill.failed{background:#c44}
dl{display:grid;grid-template-columns:auto 1fr;gap:.2em 1em}dt{color:#666}dd{margin:0}
#error{color:#c44}
</style></head><body>
<h1>Customer sync</h1>
<div class="bar"><div id="fill"></div></div>
<p id="headline">Connecting&hellip;</p>
<dl><dt>Total</dt><dd id="total">-</dd><dt>Done</dt><dd id="done">-</dd>
<dt>Failed</dt><dd id="failed">-</dd><dt>Conflicts</dt><dd id="conflicts">-</dd>
<dt>Pending</dt><dd id="pending">-</dd>
<dt>Rate</dt><dd id="rate">-</dd><dt>ETA</dt><dd id="eta">-</dd></dl>
<p id="error"></p>
<script>
"use strict";
const jobId = location.pathname.split("/").filter(Boolean).pop();
const url = new URL(".." + "$STREAM_PATH" + encodeURIComponent(jobId), location.href);
url.search = location.search;
const el = (id) => document.getElementById(id);
function show(s) {
  el("fill").style.width = s.percent + "%";
  el("fill").className = s.state === "$FAILED" ? "failed" : "";
  el("headline").textContent = s.state + " \\u2014 " + s.percent + "%";
  for (const k of ["total", "done", "failed", "conflicts", "pending"]) el(k).textContent = s[k];
  el("rate").textContent = s.rate_per_s === null ? "-" : s.rate_per_s + " customers/s";
  el("eta").textContent = s.eta_s === null ? "-" : s.eta_s + " s";
  el("error").textContent = s.last_error || "";
}
const source = new EventSource(url);
source.addEventListener("progress", (e) => show(JSON.parse(e.data)));
source.addEventListener("complete", (e) => { show(JSON.parse(e.data)); source.close(); });
source.addEventListener("error", (e) => {
  if (e.data) { el("error").textContent = JSON.parse(e.data).error.message; source.close(); }
  else if (source.readyState === EventSource.CLOSED) {
    el("headline").textContent = "Not authorised, or the job does not exist.";
  }
});
</script></body></html>
"""
).substitute(STREAM_PATH=PROGRESS_PATH.removesuffix("{job_id}"), FAILED=JobState.FAILED)

# The page builds every URL from its own location: nothing from the request is echoed into it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'"
    ),
    "Referrer-Policy": "no-referrer",  # the URL carries the progress token
    "Cache-Control": "no-store",
}


async def progress_page(request: Request) -> Response:
    """``GET /progress/{job_id}?token=...``: a progress bar fed by the SSE stream."""
    if _job_id(request) is None:
        return error_response(422, "invalid_job_id", "job_id must be a UUID")
    return HTMLResponse(PROGRESS_PAGE, headers=PAGE_HEADERS)
