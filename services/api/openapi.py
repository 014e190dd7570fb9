"""The api's OpenAPI 3.1 document, served at ``/openapi.json``.

Every schema in it is generated from the pydantic models that validate the requests and build
the responses, so the document cannot drift from the code: a new action in the table
``services.api.actions.ACTIONS`` appears in the request's ``oneOf`` by itself, with its summary.
Every status code an operation can answer is listed, the errors all with the one envelope
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.api.actions import ACTIONS, orchestrate, preview, schedule
from services.api.actions.conflicts import DEFAULT_PAGE, MAX_PAGE
from services.api.actions.replay import ReplayResult
from services.api.schemas import (
    ActivityPage,
    ActivityQuery,
    CancelResult,
    ConflictPage,
    ConnectionDeleted,
    ConnectionList,
    ConnectionOut,
    ConnectionUpdate,
    ErrorEnvelope,
    Health,
    JobsPage,
    JobsQuery,
    LinesPage,
    LinesQuery,
    OrchestrateRequest,
    OrchestrateResult,
    PreviewJobAccepted,
    PreviewRequest,
    Readiness,
    ResolveResult,
    ResumeResult,
    RetryResult,
    StartResult,
    StatusResult,
    WebhooksResult,
)
from shared.paths import WEBHOOK_PATH
from shared.preview import PreviewResult
from shared.schedules import ScheduleIn, ScheduleList, ScheduleOut

REF = "#/components/schemas/{model}"
JSON = "application/json"

# What each error status means on this api (the envelope's ``code`` says which case).
ERRORS: dict[int, str] = {
    400: "Malformed JSON, a body that is not an object, or an unknown action.",
    401: "Missing, malformed, unknown or revoked API key (one answer for all).",
    403: "The body's org_id is not the API key's organisation.",
    404: "No such job or store connection for this organisation (another organisation's "
    "looks the same).",
    409: (
        "The job's state does not allow the action (action_not_allowed: pause, resume, cancel, "
        "retry, force-done; the message names the state), the job is already final "
        "(force-done), its connection is busy (retry), a cancelled job of the store is "
        "still stopping its crawl (start: crawl_not_stopped, see Retry-After), the "
        "connection's secret cannot be decrypted (preview), the customer is not waiting "
        "as a conflict (resolve-conflicts), or a store connection has an open job (delete)."
    ),
    413: "The body is larger than 1 MiB.",
    415: "The body is not application/json.",
    422: "A field or query parameter is invalid (the message names it), the store refused "
    "or is unreachable, or the database refused the store's version of a conflict "
    "(resolve-conflicts).",
    429: "Rate limit of the organisation, or its cap of open syncs; see Retry-After.",
    500: "Unexpected error (details only in the server's log).",
    503: "The message broker is unavailable, or the api is testing as many stores as it runs "
    "at once; nothing was lost, try again.",
}
PREVIEW_DESCRIPTION = (
    "Reads the whole store (given by URL and key as start takes it, or as connection_id) as a "
    "sync reads it and compares each customer with the stored row, writing nothing but one "
    "audit row: no connection, job, line, page or customer. Counts and up to "
    "options.sample_size samples per category: create (no row), update (mapped fields differ; "
    "the diff is {field: {store, mantis}}), unchanged, delete (rows whose customer the store "
    "no longer has; null unless the read is proven complete), conflict (the store's version is "
    "older than the stored one: a sync keeps the stored version) and invalid (items a sync "
    "would fail). pages and estimate: the windows a sync reads and how long that takes at the "
    "given concurrency, from the latency measured here. 404: no such connection for this "
    "organisation; 409: its stored secret cannot be decrypted; 422: invalid fields, a store "
    "that refuses or is unreachable, or a store too large (preview_too_large); 202: a store larger "
    "than WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS is previewed by a job of kind preview (the org's "
    "connection to it is needed), with the status and progress stream of a sync; 409: a job of "
    "the connection is open; 429/503: too many store tests running or open jobs."
)
ORCHESTRATE_DESCRIPTION = (
    "One parent job (kind orchestration) over 2 or more stored connections of the org, each "
    "synced by a child job of its own (an ordinary sync job naming the parent in parent_id). "
    "All or nothing: 404 names a connection the org does not have, 409 one with an open job "
    "(or a cancelled crawl still stopping), 422 a connection named twice, 429 children that "
    "would pass WOOSYNC_MAX_CONCURRENT_SYNCS_PER_ORG (the children count against it, the "
    "parent does not); then nothing is created. The parent's status_url and progress_url show "
    "its children's counts summed and each child's state and error (children); it ends done "
    "when every child is done, failed (last_error naming each child's error) when every child "
    "is final and one is not done. The actions pause, resume and cancel with the parent's "
    "job_id apply to every child whose state allows it (409 when none does), audited on the "
    "parent and on each child; retry, force-done and replay apply to a child, not the parent."
)
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "Always 'Bearer'.", "schema": {"type": "string"}}
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERRORS[status],
        "content": _json(_ref(ErrorEnvelope)),
    }
    if status == 401:
        response["headers"] = WWW_AUTHENTICATE
    if status == 429:
        response["headers"] = RETRY_AFTER
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _error(status) for status in statuses}


JOB_ID_PARAMETER = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The query string of a read route, from the model that validates it (so they agree)."""
    parameters = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if get_origin(annotation) in (Union, types.UnionType):  # optional: null is no query value
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        if field.metadata:
            annotation = Annotated[(annotation, *field.metadata)]
        schema = TypeAdapter(annotation).json_schema()
        schema.pop("title", None)
        if field.default is not None:
            schema["default"] = getattr(field.default, "value", field.default)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False}
        description = field.description or schema.pop("description", None)
        if description:
            parameter["description"] = description
        parameters.append({**parameter, "schema": schema})
    return parameters


def _page_route(
    operation_id: str,
    summary: str,
    description: str,
    query: type[BaseModel],
    page: type[BaseModel],
    *,
    job: bool,
) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "parameters": ([JOB_ID_PARAMETER] if job else []) + _query_parameters(query),
            "responses": {
                "200": {"description": "One page.", "content": _json(_ref(page))},
                **_errors(401, *([404] if job else []), 422, 429, 500),
            },
        }
    }


def _actions_description() -> str:
    """Each action's summary, then what the actions add about their answers (the table's)."""
    lines = [f"{name}: {action.summary}" for name, action in ACTIONS.items()]
    notes = [action.note for action in ACTIONS.values() if action.note]
    return "\n".join(lines + [""] + notes)


def _components() -> dict[str, Any]:
    requests: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (action.model, "validation") for action in ACTIONS.values()
    ] + [
        (ConnectionUpdate, "validation"),
        (PreviewRequest, "validation"),
        (ScheduleIn, "validation"),
        (OrchestrateRequest, "validation"),
    ]
    responses: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "serialization")
        for model in (
            StartResult,
            StatusResult,
            RetryResult,
            ReplayResult,
            ConnectionList,
            ConnectionOut,
            ConnectionDeleted,
            PreviewResult,
            PreviewJobAccepted,
            OrchestrateResult,
            ResumeResult,
            CancelResult,
            JobsPage,
            LinesPage,
            ActivityPage,
            ResolveResult,
            ConflictPage,
            WebhooksResult,
            ScheduleOut,
            ScheduleList,
            ErrorEnvelope,
            Health,
            Readiness,
        )
    ]
    _, schemas = models_json_schema(requests + responses, ref_template=REF)
    return dict(schemas.get("$defs", {}))


WEBHOOK_DESCRIPTION = (
    "Where a store delivers the webhooks that webhooks-enable registered; the token names one "
    "webhook. No API key: the X-WC-Webhook-Signature header (base64 HMAC-SHA256 of the raw "
    "body with the webhook's secret) proves the delivery. The creation ping (form body "
    "webhook_id=N, no signature) is answered 200. A verified customer.created/updated/deleted "
    "is handed to the syncer and answered 200 at once; a body without a customer id is "
    "answered 200 (ignored). 401: missing or wrong signature; 404: no such webhook; 503: the "
    "broker is unavailable (WooCommerce does not retry; the next full sync reconciles)."
)
_DELIVERY_ANSWER = {
    "type": "object",
    "properties": {"status": {"enum": ["ok", "accepted", "ignored"]}},
    "required": ["status"],
}


def _connection_paths(connections_path: str, connection_path: str) -> dict[str, Any]:
    """The operations on an org's store connections (services/api/actions/connections.py)."""
    connection_id = {
        "name": "connection_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    return {
        connections_path: {
            "get": {
                "operationId": "listConnections",
                "summary": "The organisation's store connections, a page at a time (no secrets).",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 2048},
                        "description": "The next_cursor of the previous page.",
                    },
                ],
                "responses": {
                    "200": {"description": "A page.", "content": _json(_ref(ConnectionList))},
                    **_errors(401, 422, 429, 500),
                },
            }
        },
        connection_path: {
            "get": {
                "operationId": "getConnection",
                "summary": "One store connection (never its secret).",
                "parameters": [connection_id],
                "responses": {
                    "200": {"description": "It.", "content": _json(_ref(ConnectionOut))},
                    **_errors(401, 404, 422, 429, 500),
                },
            },
            "patch": {
                "operationId": "updateConnection",
                "summary": "New credentials, tested against the store before they are stored.",
                "description": (
                    "The store must accept them (as on start), else 422 and nothing changes. "
                    "A job reading the store keeps its key; its next crawl loads the new one."
                ),
                "parameters": [connection_id],
                "requestBody": {"required": True, "content": _json(_ref(ConnectionUpdate))},
                "responses": {
                    "200": {"description": "Stored.", "content": _json(_ref(ConnectionOut))},
                    **_errors(400, 401, 404, 413, 415, 422, 429, 500, 503),
                },
            },
            "delete": {
                "operationId": "deleteConnection",
                "summary": "Delete a connection and its finished jobs, and its customers if asked.",
                "description": (
                    "409 while one of its jobs is open. Without with_customers=true its "
                    "customers stay, detached from any connection."
                ),
                "parameters": [
                    connection_id,
                    {
                        "name": "with_customers",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Deleted.",
                        "content": _json(_ref(ConnectionDeleted)),
                    },
                    **_errors(401, 404, 409, 422, 429, 500),
                },
            },
        },
    }


SCHEDULE_DESCRIPTION = (
    "A store connection may have one schedule: interval_s (seconds, at least "
    "WOOSYNC_SCHEDULE_MIN_INTERVAL_S) or cron (minute hour day month weekday, read in timezone, "
    "an IANA zone, UTC by default). woosync then starts a sync of the connection by itself, with "
    "the connection's stored key (a key stored later by a start is used from the next fire on). "
    "A fire never starts a second job of a connection with an open one (schedule.skipped in the "
    "activity log); fires missed while no scheduler ran are made up by one fire. Setting a "
    "schedule replaces the connection's previous one; its first fire is one interval from now, "
    "or the cron's next time. 404: no such store connection for this organisation, or (GET, "
    "DELETE) no schedule; 422: a field is invalid (named), e.g. an interval below the minimum, "
    "a cron expression that cannot be read or fires more often than the minimum, an unknown "
    "time zone."
)
CONNECTION_ID = {
    "name": "connection_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _schedule_operations() -> dict[str, Any]:
    one = {"200": {"description": "The schedule.", "content": _json(_ref(ScheduleOut))}}
    return {
        "put": {
            "operationId": "setSchedule",
            "summary": schedule.SUMMARY_SET,
            "description": SCHEDULE_DESCRIPTION,
            "parameters": [CONNECTION_ID],
            "requestBody": {"required": True, "content": _json(_ref(ScheduleIn))},
            "responses": {**one, **_errors(400, 401, 404, 413, 415, 422, 429, 500)},
        },
        "get": {
            "operationId": "getSchedule",
            "summary": schedule.SUMMARY_GET,
            "description": SCHEDULE_DESCRIPTION,
            "parameters": [CONNECTION_ID],
            "responses": {**one, **_errors(401, 404, 422, 429, 500)},
        },
        "delete": {
            "operationId": "clearSchedule",
            "summary": schedule.SUMMARY_CLEAR,
            "parameters": [CONNECTION_ID],
            "responses": {
                "200": {
                    "description": "The removed schedule.",
                    "content": _json(_ref(ScheduleOut)),
                },
                **_errors(401, 404, 422, 429, 500),
            },
        },
    }


def build_openapi(
    *,
    sync_path: str,
    job_path: str,
    jobs_path: str,
    lines_path: str,
    activity_path: str,
    preview_path: str,
    orchestrate_path: str,
    conflicts_path: str,
    connections_path: str,
    connection_path: str,
    webhook_path: str = WEBHOOK_PATH,
    schedule_path: str,
    schedules_path: str,
) -> dict[str, Any]:
    """The document for the api's routes (paths passed in by the route table)."""
    actions = {name: REF.format(model=a.model.__name__) for name, a in ACTIONS.items()}
    action_body = {
        "oneOf": [{"$ref": ref} for ref in actions.values()],
        "discriminator": {"propertyName": "action", "mapping": actions},
    }
    any_result = [
        _ref(m)
        for m in (
            StartResult,
            StatusResult,
            RetryResult,
            ReplayResult,
            CancelResult,
            ResolveResult,
            WebhooksResult,
        )
    ]
    accepted = [_ref(m) for m in (StartResult, RetryResult, ReplayResult, ResumeResult)]
    open_route = {"security": []}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "woosync api",
            "version": "1",
            "description": (
                "Start and follow syncs of a WooCommerce store's customers, and manage the "
                "store connections. Every route but "
                "the health checks needs an API key (Authorization: Bearer wsk_...); the key "
                "decides the organisation. Progress is streamed by the tracker at the "
                "progress_url of a job."
            ),
        },
        "components": {
            "schemas": _components(),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers.",
                    **open_route,
                    "responses": {"200": {"description": "Alive.", "content": _json(_ref(Health))}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: PostgreSQL and RabbitMQ are reachable.",
                    **open_route,
                    "responses": {
                        "200": {"description": "Ready.", "content": _json(_ref(Readiness))},
                        "503": {"description": "Not ready.", "content": _json(_ref(Readiness))},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics: requests by route and status, publishes.",
                    **open_route,
                    "responses": {
                        "200": {
                            "description": "The Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": _json({"type": "object"}),
                        },
                        **_errors(401, 429, 500),
                    },
                }
            },
            "/asyncapi.json": {
                "get": {
                    "operationId": "asyncapi",
                    "summary": "The AsyncAPI 3.0 document of the messages between the services.",
                    "responses": {
                        "200": {
                            "description": "The AsyncAPI document (docs/asyncapi.json).",
                            "content": _json({"type": "object"}),
                        },
                        **_errors(401, 429, 500),
                    },
                }
            },
            sync_path: {
                "post": {
                    "operationId": "syncCustomers",
                    "summary": "One of the actions " + ", ".join(ACTIONS) + ".",
                    "description": _actions_description(),
                    "requestBody": {"required": True, "content": _json(action_body)},
                    "responses": {
                        "200": {
                            "description": "status, force-done, pause, cancel, "
                            "resolve-conflicts, a retry or replay that changed nothing, a "
                            "start answered by the connection's open job, or the connection's "
                            "webhooks (webhooks-enable, -disable, -status).",
                            "content": _json({"anyOf": any_result}),
                        },
                        "202": {
                            "description": "start accepted; retry or replay sent work again; "
                            "resume sent the job on.",
                            "content": _json({"anyOf": accepted}),
                        },
                        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            preview_path: {
                "post": {
                    "operationId": "previewSync",
                    "summary": preview.SUMMARY,
                    "description": PREVIEW_DESCRIPTION,
                    "requestBody": {"required": True, "content": _json(_ref(PreviewRequest))},
                    "responses": {
                        "200": {
                            "description": "The preview: counts, samples with field-level "
                            "diffs, pages and the estimated duration of a sync's reading.",
                            "content": _json(_ref(PreviewResult)),
                        },
                        "202": {
                            "description": "The store has more customers than "
                            "WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS: a job of kind preview reads "
                            "it; its status (status_url, progress_url) carries the preview "
                            "when done.",
                            "content": _json(_ref(PreviewJobAccepted)),
                        },
                        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            webhook_path: {
                "post": {
                    "operationId": "receiveWebhook",
                    "summary": "A store's webhook delivery (customer.created/updated/deleted).",
                    "description": WEBHOOK_DESCRIPTION,
                    **open_route,
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {"schema": {"type": "object"}},
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"webhook_id": {"type": "string"}},
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The ping answered, or the delivery accepted or "
                            "ignored.",
                            "content": _json(_DELIVERY_ANSWER),
                        },
                        **{
                            str(status): {
                                "description": text,
                                "content": _json(_ref(ErrorEnvelope)),
                            }
                            for status, text in (
                                (401, "The signature is missing or wrong."),
                                (404, "No such webhook."),
                                (413, "The body is larger than 1 MiB."),
                                (500, "Unexpected error (details only in the server's log)."),
                                (503, "The message broker is unavailable."),
                            )
                        },
                    },
                }
            },
            schedule_path: _schedule_operations(),
            schedules_path: {
                "get": {
                    "operationId": "listSchedules",
                    "summary": schedule.SUMMARY_LIST,
                    "responses": {
                        "200": {
                            "description": "The organisation's schedules.",
                            "content": _json(_ref(ScheduleList)),
                        },
                        **_errors(401, 429, 500),
                    },
                }
            },
            orchestrate_path: {
                "post": {
                    "operationId": "orchestrateSync",
                    "summary": orchestrate.SUMMARY,
                    "description": ORCHESTRATE_DESCRIPTION,
                    "requestBody": {"required": True, "content": _json(_ref(OrchestrateRequest))},
                    "responses": {
                        "202": {
                            "description": "The parent job and its children, handed to the "
                            "fetcher.",
                            "content": _json(_ref(OrchestrateResult)),
                        },
                        "200": {
                            "description": "options.idempotency_key already made this parent: "
                            "it is the answer (a child left a draft is handed on now).",
                            "content": _json(_ref(OrchestrateResult)),
                        },
                        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            job_path: {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status (the status_url of start).",
                    "description": "rate_per_s and eta_s are measured over a recent window "
                    "of the job's settled lines; null when final or not known yet.",
                    "parameters": [JOB_ID_PARAMETER],
                    "responses": {
                        "200": {"description": "The job.", "content": _json(_ref(StatusResult))},
                        **_errors(401, 404, 422, 429, 500),
                    },
                }
            },
            jobs_path: _page_route(
                "listJobs",
                "The organisation's jobs, newest first.",
                "Filtered by state and connection_id; paged by an opaque cursor (next_cursor, "
                "or the next link, keeps the filters). An unknown state is a 422 naming it.",
                JobsQuery,
                JobsPage,
                job=False,
            ),
            lines_path: _page_route(
                "listJobLines",
                "A job's lines in one state (failed by default), with their errors.",
                "In woo_id order, paged by an opaque cursor. retryable says whether the "
                "customer is kept for retry or replay.",
                LinesQuery,
                LinesPage,
                job=True,
            ),
            activity_path: _page_route(
                "listJobActivity",
                "A job's activity log: who did what, when.",
                "Oldest first, paged by an opaque cursor; by names who did it, "
                "details.api_key_id the API key of an api action.",
                ActivityQuery,
                ActivityPage,
                job=True,
            ),
            conflicts_path: {
                "get": {
                    "operationId": "listConflicts",
                    "summary": "The job's conflicts waiting for a person (manual policy), paged.",
                    "description": (
                        "Each conflict has both versions (woo: the store's customer as read; "
                        "mantis: MantisNXT's row when the conflict was found) and the fields "
                        "that differ. Ordered by woo_id; pass next_after as after for the next "
                        "page. Resolve them with the resolve-conflicts action."
                    ),
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PAGE,
                                "default": DEFAULT_PAGE,
                            },
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "One page of conflicts.",
                            "content": _json(_ref(ConflictPage)),
                        },
                        **_errors(401, 404, 422, 429, 500),
                    },
                }
            },
            **_connection_paths(connections_path, connection_path),
        },
    }
