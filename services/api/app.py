"""The api's routes; its lifespan is the shared runtime (``shared.runtime``) plus its deps.

Route table::

    GET  /healthz                                           liveness, no I/O
    GET  /readyz                                            PostgreSQL and RabbitMQ reachable
    GET  /metrics                                           Prometheus metrics (shared.metrics)
    POST /api/v1/integrations/woocommerce/sync/customers    the actions: start, status, retry,
                                                            force-done, replay, pause, resume,
                                                            cancel, resolve-conflicts
    POST /api/v1/integrations/sync/preview                  what a sync would change (no writes)
    POST /api/v1/integrations/sync/orchestrate              one parent job syncing several stores
    GET  /api/v1/integrations/woocommerce/sync/jobs         the org's jobs, newest first (paged)
    GET  /api/v1/integrations/woocommerce/sync/jobs/{id}    a job's status (the status_url)
    GET  /api/v1/integrations/woocommerce/sync/jobs/{id}/lines     a job's lines by state (paged)
    GET  /api/v1/integrations/woocommerce/sync/jobs/{id}/activity  a job's activity log (paged)
    GET  /api/v1/integrations/woocommerce/sync/jobs/{id}/conflicts   its waiting conflicts, paged
    GET  /api/v1/integrations/woocommerce/connections       the org's store connections (paged)
    GET    /api/v1/integrations/woocommerce/connections/{id}  one connection (never its secret)
    PATCH  /api/v1/integrations/woocommerce/connections/{id}  new credentials, tested first
    DELETE /api/v1/integrations/woocommerce/connections/{id}  ?with_customers=true|false
    POST /api/v1/integrations/woocommerce/webhooks/{token}  a store's webhook delivery (no key)
    PUT|GET|DELETE /api/v1/integrations/woocommerce/connections/{id}/schedule
                                                            a connection's schedule
    GET  /api/v1/integrations/woocommerce/schedules         the org's schedules
    GET  /openapi.json                                      the OpenAPI 3.1 document
    GET  /asyncapi.json                                     the messages (services.asyncapi)

Every route but the two health checks, /metrics and the webhook deliveries needs an API key and
takes a token from its org's rate limit (services.api.web.require_caller); a delivery is proven
by its signature instead (services.api.webhooks). The actions include webhooks-enable, -disable
and -status (services.api.actions.webhooks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.api.actions import (
    conflicts,
    connections,
    dispatch,
    history,
    orchestrate,
    preview,
    schedule,
)
from services.api.actions.common import read_status
from services.api.deps import Deps, StoreClientFactory, store_client_factory
from services.api.errors import ApiError, http_exception_handler
from services.api.openapi import build_openapi
from services.api.schemas import (
    ActivityQuery,
    JobsQuery,
    LinesQuery,
    OrchestrateRequest,
    PreviewRequest,
    Readiness,
)
from services.api.web import (
    deps_of,
    guarded,
    parse_action,
    parse_body,
    read_json_object,
    require_caller,
)
from services.api.webhooks import receive as receive_webhook
from services.asyncapi import Served
from shared import web
from shared.crypto import ProgressTokens, SecretBox
from shared.logs import log_context
from shared.metrics import HttpMetrics, RequestMetrics, metrics_endpoint
from shared.paths import (
    CONFLICTS_PATH,
    CONNECTION_PATH,
    CONNECTIONS_PATH,
    JOB_ACTIVITY_PATH,
    JOB_LINES_PATH,
    JOB_PATH,
    JOBS_PATH,
    ORCHESTRATE_PATH,
    PREVIEW_PATH,
    SCHEDULE_PATH,
    SCHEDULES_PATH,
    SYNC_PATH,
    WEBHOOK_PATH,
)
from shared.ratelimit import RateLimiter
from shared.runtime import Runtime
from shared.schedules import ScheduleIn
from shared.settings import Settings
from shared.web import RefusedCallers


def _readiness_body(database: bool, broker: bool) -> dict[str, str]:
    return Readiness(
        status="ready" if database and broker else "unavailable",
        database="ok" if database else "unavailable",
        broker="ok" if broker else "unavailable",
    ).model_dump()


readyz = guarded(web.readyz(lambda r: (deps_of(r).pool, deps_of(r).broker), _readiness_body))


async def metrics(request: Request) -> Response:
    """Requests by route and status, FastStream's publish metrics; for the scraper, so no key:
    publish the port only where Prometheus reaches it (docs/operations.md, "Metrics")."""
    return await metrics_endpoint(request.app.state.runtime.registry)(request)


@guarded
async def openapi(request: Request) -> Response:
    await require_caller(request, deps_of(request))
    return JSONResponse(request.app.state.openapi)


@guarded
async def asyncapi(request: Request) -> Response:
    await require_caller(request, deps_of(request))
    served: Served = request.app.state.asyncapi
    return JSONResponse(await served.get())


@guarded
async def sync_customers(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    action = parse_action(await read_json_object(request))
    if action.org_id != caller.org_id:
        raise ApiError(403, "forbidden", "org_id does not match the API key's organisation")
    answer = await dispatch(action, caller, deps)
    return JSONResponse(answer.body.model_dump(mode="json"), status_code=answer.status)


def _job_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["job_id"])
    except ValueError:
        raise ApiError(422, "invalid_request", "job_id: invalid UUID") from None


@guarded
async def preview_sync(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    body = parse_body(PreviewRequest, await read_json_object(request))
    if body.org_id != caller.org_id:
        raise ApiError(403, "forbidden", "org_id does not match the API key's organisation")
    answer = await preview.answer(body, caller, deps)
    return JSONResponse(answer.body.model_dump(mode="json"), status_code=answer.status)


@guarded
async def orchestrate_sync(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    body = parse_body(OrchestrateRequest, await read_json_object(request))
    if body.org_id != caller.org_id:
        raise ApiError(403, "forbidden", "org_id does not match the API key's organisation")
    with log_context(org_id=caller.org_id):
        answer = await orchestrate.answer(body, caller, deps)
    return JSONResponse(answer.body.model_dump(mode="json"), status_code=answer.status)


@guarded
async def get_job(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    job_id = _job_id(request)
    with log_context(org_id=caller.org_id, job_id=job_id):
        status = await read_status(deps, org_id=caller.org_id, job_id=job_id)
    return JSONResponse(status.model_dump(mode="json"))


@guarded
async def connection_schedule(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    try:
        connection_id = UUID(request.path_params["connection_id"])
    except ValueError:
        raise ApiError(422, "invalid_request", "connection_id: invalid UUID") from None
    with log_context(org_id=caller.org_id):
        if request.method == "PUT":
            body = parse_body(ScheduleIn, await read_json_object(request))
            answer = await schedule.set_schedule(connection_id, body, caller, deps)
        elif request.method == "DELETE":
            answer = await schedule.clear_schedule(connection_id, caller, deps)
        else:
            answer = await schedule.get_schedule(connection_id, caller, deps)
    return JSONResponse(answer.body.model_dump(mode="json"), status_code=answer.status)


@guarded
async def org_schedules(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    answer = await schedule.list_schedules(caller, deps)
    return JSONResponse(answer.body.model_dump(mode="json"), status_code=answer.status)


@guarded
async def list_jobs(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    query = history.parse_query(JobsQuery, request.query_params.multi_items())
    page = await history.list_jobs(query, caller, deps)
    return JSONResponse(page.model_dump(mode="json"))


@guarded
async def list_lines(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    job_id = _job_id(request)
    query = history.parse_query(LinesQuery, request.query_params.multi_items())
    page = await history.list_lines(job_id, query, caller, deps)
    return JSONResponse(page.model_dump(mode="json"))


@guarded
async def list_activity(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    job_id = _job_id(request)
    query = history.parse_query(ActivityQuery, request.query_params.multi_items())
    page = await history.list_activity(job_id, query, caller, deps)
    return JSONResponse(page.model_dump(mode="json"))


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(422, "invalid_request", f"{name}: must be an integer from {low} to {high}")
    return int(raw)


@guarded
async def get_conflicts(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    try:
        job_id = UUID(request.path_params["job_id"])
    except ValueError:
        raise ApiError(422, "invalid_request", "job_id: invalid UUID") from None
    limit = _query_int(request, "limit", conflicts.DEFAULT_PAGE, 1, conflicts.MAX_PAGE)
    after = _query_int(request, "after", 0, 0, 2**63 - 1)
    page = await conflicts.list_conflicts(
        deps, org_id=caller.org_id, job_id=job_id, after=after, limit=limit
    )
    return JSONResponse(page.model_dump(mode="json"))


def _connection_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["connection_id"])
    except ValueError:
        raise ApiError(422, "invalid_request", "connection_id: invalid UUID") from None


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query's parameters, each at most once, none but ``allowed``; 422 naming the first
    that is not."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise ApiError(422, "invalid_request", f"{name}: unexpected query parameter")
        if name in params:
            raise ApiError(422, "invalid_request", f"{name}: given more than once")
        params[name] = value
    return params


@guarded
async def list_connections(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    params = _query(request, {"limit", "cursor"})
    limit = params.get("limit", str(connections.DEFAULT_PAGE_SIZE))
    if not limit.isascii() or not limit.isdigit():
        raise ApiError(422, "invalid_request", "limit: must be an integer")
    page = await connections.list_connections(
        caller.org_id, deps, limit=int(limit), cursor=params.get("cursor")
    )
    return JSONResponse(page.model_dump(mode="json"))


@guarded
async def get_connection(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    _query(request, set())
    found = await connections.show_connection(caller.org_id, deps, _connection_id(request))
    return JSONResponse(found.model_dump(mode="json"))


@guarded
async def update_connection(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    _query(request, set())
    connection_id = _connection_id(request)
    update = connections.parse_update(await read_json_object(request))
    updated = await connections.update_credentials(
        caller.org_id, caller.actor(), deps, connection_id, update
    )
    return JSONResponse(updated.model_dump(mode="json"))


@guarded
async def delete_connection(request: Request) -> Response:
    deps = deps_of(request)
    caller = await require_caller(request, deps)
    params = _query(request, {"with_customers"})
    connection_id = _connection_id(request)
    deleted = await connections.delete_connection(
        caller.org_id,
        caller.actor(),
        deps,
        connection_id,
        with_customers=connections.parse_with_customers(params.get("with_customers")),
    )
    return JSONResponse(deleted.model_dump(mode="json"))


ROUTES = [
    Route("/healthz", web.healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route(SYNC_PATH, sync_customers, methods=["POST"]),
    Route(JOBS_PATH, list_jobs, methods=["GET"]),
    Route(JOB_PATH, get_job, methods=["GET"]),
    Route(PREVIEW_PATH, preview_sync, methods=["POST"]),
    Route(SCHEDULE_PATH, connection_schedule, methods=["PUT", "GET", "DELETE"]),
    Route(SCHEDULES_PATH, org_schedules, methods=["GET"]),
    Route(ORCHESTRATE_PATH, orchestrate_sync, methods=["POST"]),
    Route(JOB_LINES_PATH, list_lines, methods=["GET"]),
    Route(JOB_ACTIVITY_PATH, list_activity, methods=["GET"]),
    Route(CONFLICTS_PATH, get_conflicts, methods=["GET"]),
    Route(CONNECTIONS_PATH, list_connections, methods=["GET"]),
    Route(CONNECTION_PATH, get_connection, methods=["GET"]),
    Route(CONNECTION_PATH, update_connection, methods=["PATCH"]),
    Route(CONNECTION_PATH, delete_connection, methods=["DELETE"]),
    Route(WEBHOOK_PATH, receive_webhook, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/asyncapi.json", asyncapi, methods=["GET"]),
]


def build_app(settings: Settings, *, store_client: StoreClientFactory | None = None) -> Starlette:
    """The api as an ASGI app; ``store_client`` replaces the WooCommerce client factory."""

    runtime = Runtime("api", settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runtime.serving() as pool:
            app.state.deps = Deps(
                settings=settings,
                pool=pool,
                broker=runtime.broker,
                topology=runtime.topology,
                secrets=SecretBox.from_settings(settings),
                tokens=ProgressTokens.from_settings(settings),
                store_client=store_client or store_client_factory(settings),
                limiter=RateLimiter(
                    pool, "api:org", settings.rate_limit_per_minute, settings.rate_limit_burst
                ),
                refusals=RefusedCallers(pool, "api", settings, "a missing or refused API key"),
            )
            yield

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception_handler},
        middleware=[Middleware(RequestMetrics, metrics=HttpMetrics(runtime.registry))],
    )
    app.state.openapi = build_openapi(
        sync_path=SYNC_PATH,
        job_path=JOB_PATH,
        jobs_path=JOBS_PATH,
        lines_path=JOB_LINES_PATH,
        activity_path=JOB_ACTIVITY_PATH,
        preview_path=PREVIEW_PATH,
        orchestrate_path=ORCHESTRATE_PATH,
        conflicts_path=CONFLICTS_PATH,
        connections_path=CONNECTIONS_PATH,
        connection_path=CONNECTION_PATH,
        webhook_path=WEBHOOK_PATH,
        schedule_path=SCHEDULE_PATH,
        schedules_path=SCHEDULES_PATH,
    )
    app.state.asyncapi = Served(settings)
    app.state.runtime = runtime
    return app
