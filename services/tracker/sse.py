"""Job progress as Server-Sent Events, plus the tiny page that shows it.

The stream polls the job row (``shared.jobs.get_status``) instead of listening to the broker:
the row is the truth the recompute loop writes, every tracker instance can serve every job, and a
client that reconnects simply gets the current status. Polling is one indexed primary-key read
per client every ``progress_interval_s``; an event goes out only when the status changed.

Wire format (``text/event-stream``)::

    event: progress            one at connect, then one per change
    id: <n>                    increases by one per event (continues after Last-Event-ID)
    data: <JobStatus as JSON>

    event: complete            once, when the job is done or failed; then the stream ends
    id: <n>
    data: <JobStatus as JSON>

``event: error`` (``{"error": {...}}``) ends the stream if the job disappears mid-stream.
Comment lines (``: ping``) keep idle connections open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from shared.auth import authenticate
from shared.crypto import ProgressTokens
from shared.db import for_org
from shared.jobs import JobStatus, get_status
from shared.ratelimit import RateLimiter

log = logging.getLogger("woosync.tracker.sse")

PING_INTERVAL_S = 15
SEND_TIMEOUT_S = 30.0
RECONNECT_MS = 2_000


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _job_id(request: Request) -> UUID | None:
    try:
        return UUID(request.path_params["job_id"])
    except ValueError:
        return None


async def _caller_org(
    request: Request, pool: asyncpg.Pool, tokens: ProgressTokens, job_id: UUID
) -> UUID | None:
    """The org the request speaks for: an API key if one is sent, else a progress token."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        caller = await authenticate(pool, authorization)
        return caller.org_id if caller else None
    token = request.query_params.get("token")
    return tokens.verify(token, job_id) if token else None


async def progress_events(
    pool: asyncpg.Pool,
    *,
    org_id: UUID,
    job_id: UUID,
    first: JobStatus,
    interval_s: float,
    last_event_id: int = 0,
) -> AsyncIterator[ServerSentEvent]:
    """The event stream of one job: progress now, progress on change, complete at the end.

    Cancelled by sse-starlette when the client goes away; it holds nothing but a pool connection
    for the length of one read, so there is nothing to clean up.
    """
    event_id = last_event_id
    status: JobStatus | None = first
    sent: JobStatus | None = None
    db_failing = False
    while True:
        if status is None:
            yield ServerSentEvent(
                event="error",
                data='{"error": {"code": "job_not_found", "message": "the job no longer exists"}}',
            )
            return
        if status != sent:
            event_id += 1
            yield ServerSentEvent(
                event="progress",
                id=str(event_id),
                data=status.model_dump_json(),
                retry=RECONNECT_MS if sent is None else None,
            )
            sent = status
        if status.is_final:
            event_id += 1
            yield ServerSentEvent(event="complete", id=str(event_id), data=status.model_dump_json())
            return
        await asyncio.sleep(interval_s)
        try:
            status = await get_status(for_org(pool, org_id), org_id=org_id, job_id=job_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not db_failing:  # once per outage, not four times a second
                log.warning("progress of job %s: database read failed (%s); retrying", job_id, exc)
            db_failing = True
            continue
        db_failing = False


async def progress(request: Request) -> Response:
    """``GET /api/v1/integrations/sync/progress/{job_id}``: the job's progress stream."""
    job_id = _job_id(request)
    if job_id is None:
        return error_response(422, "invalid_job_id", "job_id must be a UUID")
    pool: asyncpg.Pool = request.state.pool
    refusals: RateLimiter = request.state.refusals
    client = request.client.host if request.client else "unknown"
    if not await refusals.has_capacity(client):
        return error_response(
            429,
            "rate_limited",
            "too many requests with a refused API key or token from this address; slow down",
            headers={"Retry-After": str(refusals.retry_after_s)},
        )
    org_id = await _caller_org(request, pool, request.state.tokens, job_id)
    if org_id is None:
        await refusals.allow(client)
        return error_response(
            401,
            "unauthorized",
            "send an API key as 'Authorization: Bearer <key>' or a valid progress token as ?token=",
            headers={"WWW-Authenticate": "Bearer"},
        )
    status = await get_status(for_org(pool, org_id), org_id=org_id, job_id=job_id)
    if status is None:
        return error_response(404, "job_not_found", "no such job")
    try:
        last_event_id = max(int(request.headers.get("last-event-id", "0")), 0)
    except ValueError:
        last_event_id = 0
    events = progress_events(
        pool,
        org_id=org_id,
        job_id=job_id,
        first=status,
        interval_s=request.state.settings.progress_interval_s,
        last_event_id=last_event_id,
    )
    return EventSourceResponse(events, ping=PING_INTERVAL_S, send_timeout=SEND_TIMEOUT_S)


PROGRESS_PAGE = """<!doctype html>
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
<dt>Failed</dt><dd id="failed">-</dd><dt>Pending</dt><dd id="pending">-</dd></dl>
<p id="error"></p>
<script>
"use strict";
const jobId = location.pathname.split("/").filter(Boolean).pop();
const url = new URL("../api/v1/integrations/sync/progress/" + encodeURIComponent(jobId),
                    location.href);
url.search = location.search;
const el = (id) => document.getElementById(id);
function show(s) {
  el("fill").style.width = s.percent + "%";
  el("fill").className = s.state === "failed" ? "failed" : "";
  el("headline").textContent = s.state + " \\u2014 " + s.percent + "%";
  for (const k of ["total", "done", "failed", "pending"]) el(k).textContent = s[k];
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
