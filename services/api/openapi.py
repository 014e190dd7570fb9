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

from services.api.actions import ACTIONS
from services.api.actions.conflicts import DEFAULT_PAGE, MAX_PAGE
from services.api.actions.replay import ReplayResult
from services.api.schemas import (
    ConflictPage,
    ErrorEnvelope,
    Health,
    Readiness,
    ResolveResult,
    RetryResult,
    StartResult,
    StatusResult,
)

REF = "#/components/schemas/{model}"
JSON = "application/json"

# What each error status means on this api (the envelope's ``code`` says which case).
ERRORS: dict[int, str] = {
    400: "Malformed JSON, a body that is not an object, or an unknown action.",
    401: "Missing, malformed, unknown or revoked API key (one answer for all).",
    403: "The body's org_id is not the API key's organisation.",
    404: "No such job for this organisation (another organisation's job looks the same).",
    409: "The job is already final (force-done), its connection is busy (retry), or the "
    "customer is not waiting as a conflict (resolve-conflicts).",
    413: "The body is larger than 1 MiB.",
    415: "The body is not application/json.",
    422: "A field is invalid (the message names it), the store refused or is unreachable, or "
    "the database refused the store's version of a conflict (resolve-conflicts).",
    429: "Rate limit of the organisation, or its cap of open syncs; see Retry-After.",
    500: "Unexpected error (details only in the server's log).",
    503: "The message broker is unavailable; nothing was lost, try again.",
}
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
    ]
    responses: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "serialization")
        for model in (
            StartResult,
            StatusResult,
            RetryResult,
            ReplayResult,
            ResolveResult,
            ConflictPage,
            ErrorEnvelope,
            Health,
            Readiness,
        )
    ]
    _, schemas = models_json_schema(requests + responses, ref_template=REF)
    return dict(schemas.get("$defs", {}))


def build_openapi(*, sync_path: str, job_path: str, conflicts_path: str) -> dict[str, Any]:
    """The document for the api's routes (paths passed in by the route table)."""
    actions = {name: REF.format(model=a.model.__name__) for name, a in ACTIONS.items()}
    action_body = {
        "oneOf": [{"$ref": ref} for ref in actions.values()],
        "discriminator": {"propertyName": "action", "mapping": actions},
    }
    any_result = [
        _ref(m) for m in (StartResult, StatusResult, RetryResult, ReplayResult, ResolveResult)
    ]
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
            sync_path: {
                "post": {
                    "operationId": "syncCustomers",
                    "summary": "One of the actions " + ", ".join(ACTIONS) + ".",
                    "description": _actions_description(),
                    "requestBody": {"required": True, "content": _json(action_body)},
                    "responses": {
                        "200": {
                            "description": "status, force-done, resolve-conflicts, a retry or "
                            "replay that changed nothing, or a start answered by the connection's "
                            "open job.",
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
        },
    }
