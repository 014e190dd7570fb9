"""The api's OpenAPI 3.1 document, served at ``/openapi.json``.

Every schema in it is generated from the pydantic models that validate the requests and build
the responses, so the document cannot drift from the code: a new action in the table
``services.api.actions.ACTIONS`` appears in the request's ``oneOf`` by itself, with its summary.
Every status code an operation can answer is listed, the errors all with the one envelope
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.api.actions import ACTIONS, preview, schedule
from services.api.actions.replay import ReplayResult
from services.api.schemas import (
    ErrorEnvelope,
    Health,
    PreviewJobAccepted,
    PreviewRequest,
    Readiness,
    RetryResult,
    StartResult,
    StatusResult,
)
from shared.preview import PreviewResult
from shared.schedules import ScheduleIn, ScheduleList, ScheduleOut

REF = "#/components/schemas/{model}"
JSON = "application/json"

# What each error status means on this api (the envelope's ``code`` says which case).
ERRORS: dict[int, str] = {
    400: "Malformed JSON, a body that is not an object, or an unknown action.",
    401: "Missing, malformed, unknown or revoked API key (one answer for all).",
    403: "The body's org_id is not the API key's organisation.",
    404: "No such job (or store connection) for this organisation (another organisation's "
    "looks the same).",
    409: "The job is already final (force-done), or its connection is busy (retry), or the "
    "connection's secret cannot be decrypted (preview).",
    413: "The body is larger than 1 MiB.",
    415: "The body is not application/json.",
    422: "A field is invalid (the message names it), or the store refused or is unreachable.",
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


def _actions_description() -> str:
    """Each action's summary, then what the actions add about their answers (the table's)."""
    lines = [f"{name}: {action.summary}" for name, action in ACTIONS.items()]
    notes = [action.note for action in ACTIONS.values() if action.note]
    return "\n".join(lines + [""] + notes)


def _components() -> dict[str, Any]:
    requests: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (action.model, "validation") for action in ACTIONS.values()
    ] + [(PreviewRequest, "validation"), (ScheduleIn, "validation")]
    responses: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "serialization")
        for model in (
            StartResult,
            StatusResult,
            RetryResult,
            ReplayResult,
            PreviewResult,
            PreviewJobAccepted,
            ScheduleOut,
            ScheduleList,
            ErrorEnvelope,
            Health,
            Readiness,
        )
    ]
    _, schemas = models_json_schema(requests + responses, ref_template=REF)
    return dict(schemas.get("$defs", {}))


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
    preview_path: str,
    schedule_path: str,
    schedules_path: str,
) -> dict[str, Any]:
    """The document for the api's routes (paths passed in by the route table)."""
    actions = {name: REF.format(model=a.model.__name__) for name, a in ACTIONS.items()}
    action_body = {
        "oneOf": [{"$ref": ref} for ref in actions.values()],
        "discriminator": {"propertyName": "action", "mapping": actions},
    }
    any_result = [_ref(m) for m in (StartResult, StatusResult, RetryResult, ReplayResult)]
    accepted = [_ref(m) for m in (StartResult, RetryResult, ReplayResult)]
    open_route = {"security": []}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "woosync api",
            "version": "1",
            "description": (
                "Start and follow syncs of a WooCommerce store's customers. Every route but "
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
                            "description": "status, force-done, a retry or replay that changed "
                            "nothing, or a start answered by the connection's open job.",
                            "content": _json({"anyOf": any_result}),
                        },
                        "202": {
                            "description": "start accepted; retry or replay sent work again.",
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
            job_path: {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status (the status_url of start).",
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The job.", "content": _json(_ref(StatusResult))},
                        **_errors(401, 404, 422, 429, 500),
                    },
                }
            },
        },
    }
