"""The jobs page: the org's jobs with live progress, a job's failed lines and activity, and the
buttons of the actions its state allows. Plain HTML, CSS and JavaScript from ``static/`` (no
build step, nothing loaded from elsewhere).

Why the tracker serves it, and how a browser speaks with a key:

- The page holds no secret. It asks for the org's API key, keeps it in the tab's
  ``sessionStorage`` (never in a URL, a cookie or a log) and sends it as ``Authorization: Bearer``
  to this origin only. No cookie means no cross-site request can act with it; no CORS header
  means no other origin can read an answer or send the header.
- Live progress is the tracker's own SSE stream (``PROGRESS_PATH``), which takes the key as a
  Bearer token; the page reads it with ``fetch`` (``EventSource`` cannot send a header).
- The jobs, lines, activity and actions are the api's routes, reached through the same-origin
  routes below (``/jobs/api/...``): the tracker checks the key itself first (a refused key counts
  against the browser's address, as on the stream) and forwards only a valid one with the request
  to the api (``WOOSYNC_JOBS_PAGE_API_URL``), whose answer goes back as it is. The api decides
  everything (tenancy, rate limits, 409s, the audit log): the proxy adds no logic of its own but
  the org's id in an action's body, taken from the key.
- ``Content-Security-Policy: default-src 'self'`` (no inline script; the page's settings are a
  JSON data block), ``frame-ancestors 'none'``, ``Referrer-Policy: no-referrer``, ``no-store``.

The buttons come from :data:`shared.lifecycle.JOB_ACTIONS` (the states each action applies in),
served with the page, so the page and the api's 409 answers cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any
from uuid import UUID

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from shared.auth import Caller, authenticate
from shared.lifecycle import (
    ACTIVE_JOB_STATES,
    FINAL_JOB_STATES,
    JOB_ACTIONS,
    REFETCH_JOB_STATES,
    JobState,
)
from shared.paths import (
    JOB_ACTIVITY_PATH,
    JOB_LINES_PATH,
    JOB_PATH,
    JOBS_PATH,
    PROGRESS_PATH,
    SYNC_PATH,
)
from shared.web import ApiError, RefusedCallers, error_response

JOBS_PAGE_PATH = "/jobs"
PAGE_API = JOBS_PAGE_PATH + "/api"  # the same-origin routes the page calls
PAGE_SIZE = 20
# Long enough for the api's slowest action (a replay publishes with confirms, up to 20 s).
API_TIMEOUT_S = 60.0
# Forwarded from the api's answer: its body's type and what a client is told to wait.
FORWARDED_HEADERS = ("content-type", "retry-after")

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _static(name: str) -> str:
    return resources.files("services.tracker").joinpath("static", name).read_text("utf-8")


def page_config() -> dict[str, Any]:
    """What the page's script is served with: the lifecycle's tables and the paths it calls."""
    return {
        "api": PAGE_API,
        "progress": PROGRESS_PATH.removesuffix("{job_id}"),
        "states": [s.value for s in JobState],
        "final": [s.value for s in JobState if s in FINAL_JOB_STATES],
        "live": [s.value for s in JobState if s in ACTIVE_JOB_STATES],  # streams worth following
        "refetch": [s.value for s in JobState if s in REFETCH_JOB_STATES],  # retry reads on
        "actions": {
            action: [s.value for s in JobState if s in states]
            for action, states in JOB_ACTIONS.items()
        },
        "page_size": PAGE_SIZE,
    }


@dataclass(frozen=True)
class JobsPage:
    """The page's three files, read once at start, and the forwarding to the api."""

    html: str
    script: str
    style: str

    @classmethod
    def load(cls) -> JobsPage:
        # A JSON data block inside HTML: "<" escaped, so no "</script>" can end it early.
        config = json.dumps(page_config()).replace("<", "\\u003c")
        html = Template(_static("jobs.html")).substitute(CONFIG=config)
        return cls(html=html, script=_static("page.js"), style=_static("page.css"))

    def routes(self) -> list[Route]:
        return [
            Route(JOBS_PAGE_PATH, self.page, methods=["GET"]),
            Route(JOBS_PAGE_PATH + "/page.js", self.asset, methods=["GET"]),
            Route(JOBS_PAGE_PATH + "/page.css", self.asset, methods=["GET"]),
            Route(PAGE_API + "/jobs", jobs, methods=["GET"]),
            Route(PAGE_API + "/jobs/{job_id}", job, methods=["GET"]),
            Route(PAGE_API + "/jobs/{job_id}/lines", lines, methods=["GET"]),
            Route(PAGE_API + "/jobs/{job_id}/activity", activity, methods=["GET"]),
            Route(PAGE_API + "/jobs/{job_id}/{action}", act, methods=["POST"]),
        ]

    async def page(self, request: Request) -> Response:
        """``GET /jobs``: the page (no secret in it: the key is typed in)."""
        return HTMLResponse(self.html, headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        if request.url.path.endswith(".js"):
            return Response(self.script, media_type="text/javascript", headers=PAGE_HEADERS)
        return Response(self.style, media_type="text/css", headers=PAGE_HEADERS)


async def _caller(request: Request) -> Caller:
    """The key's caller, checked here so that a refused key counts against the browser's
    address (the api would see only the tracker's)."""
    refusals: RefusedCallers = request.state.refusals
    await refusals.check(request)
    caller = await authenticate(request.state.pool, request.headers.get("authorization"))
    if caller is None:
        await refusals.refused(request)
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


def _job_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["job_id"])
    except ValueError:
        raise ApiError(422, "invalid_request", "job_id: invalid UUID") from None


async def _forward(
    request: Request, method: str, path: str, *, json_body: dict[str, Any] | None = None
) -> Response:
    """Send the request on to the api with the browser's key; its answer goes back as it is."""
    client: httpx.AsyncClient = request.state.api
    try:
        answer = await client.request(
            method,
            path,
            params=request.query_params.multi_items() if json_body is None else None,
            json=json_body,
            headers={"Authorization": request.headers["authorization"]},
        )
    except httpx.HTTPError:
        return error_response(502, "api_unreachable", "the api did not answer; try again")
    headers = {k: answer.headers[k] for k in FORWARDED_HEADERS if k in answer.headers}
    headers["Cache-Control"] = "no-store"
    return Response(answer.content, status_code=answer.status_code, headers=headers)


async def jobs(request: Request) -> Response:
    """``GET /jobs/api/jobs``: the api's jobs list (its query string as it is)."""
    try:
        await _caller(request)
    except ApiError as exc:
        return exc.response()
    return await _forward(request, "GET", JOBS_PATH)


def _job_route(template: str) -> Any:
    async def route(request: Request) -> Response:
        try:
            await _caller(request)
            job_id = _job_id(request)
        except ApiError as exc:
            return exc.response()
        return await _forward(request, "GET", template.format(job_id=job_id))

    return route


job = _job_route(JOB_PATH)
lines = _job_route(JOB_LINES_PATH)
activity = _job_route(JOB_ACTIVITY_PATH)


async def act(request: Request) -> Response:
    """``POST /jobs/api/jobs/{job_id}/{action}``: one of the page's actions, as the api's action
    of that name for the key's org (whose id the page need not know)."""
    try:
        caller = await _caller(request)
        job_id = _job_id(request)
        action = request.path_params["action"]
        if action not in JOB_ACTIONS:
            raise ApiError(
                404, "unknown_action", f"the page's actions are {', '.join(sorted(JOB_ACTIONS))}"
            )
    except ApiError as exc:
        return exc.response()
    body = {"action": action, "org_id": str(caller.org_id), "job_id": str(job_id)}
    return await _forward(request, "POST", SYNC_PATH, json_body=body)
