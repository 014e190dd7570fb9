"""The HTTP edge of the api: who is calling, what they sent, and failures as JSON envelopes.

A request is checked in a fixed order: the API key (401), the org's rate limit (429), then the
body (content type 415, size 413, JSON 400, object 400, action 400, fields 422). Nothing but the
key's last-used time is written before all of them have passed, so a bad request changes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from services.api.actions import ACTION_MODELS
from services.api.deps import Deps
from services.api.errors import ApiError, describe_validation_error, error_response
from services.api.schemas import ActionRequest
from shared.auth import Caller, authenticate
from shared.logs import redact

log = logging.getLogger("woosync.api")

MAX_BODY_BYTES = 1024 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)


def guarded(endpoint: Endpoint) -> Endpoint:
    """Turn :class:`ApiError` into its envelope and anything else into a bare 500."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            return exc.response()
        except Exception as exc:
            # The traceback stays in the log (redacted like every record), never in the answer.
            trace = redact("".join(traceback.format_exception(exc)))
            log.error("unhandled error on %s %s\n%s", request.method, request.url.path, trace)
            return error_response(500, "internal_error", "internal server error")

    return run


def deps_of(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def require_caller(request: Request, deps: Deps) -> Caller:
    """The key's org, after taking one token from its rate limit.

    401 with one message for missing, malformed, unknown and revoked keys; 429 with
    ``Retry-After`` when the org's bucket is empty, or when the client address has had too many
    keys refused (then before any lookup, whatever key it sends now).
    """
    await deps.refusals.check(request)
    caller = await authenticate(deps.pool, request.headers.get("authorization"))
    if caller is None:
        await deps.refusals.refused(request)
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not await deps.limiter.allow(caller.org_id):
        raise ApiError(
            429,
            "rate_limited",
            "too many requests for this organisation; slow down",
            headers={"Retry-After": str(deps.limiter.retry_after_s)},
        )
    return caller


def _require_json_content_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refusing it by its declared length first and by what actually arrives second."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json_object(request: Request) -> dict[str, Any]:
    _require_json_content_type(request)
    body = await read_bounded(request, MAX_BODY_BYTES)
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return payload


def parse_action(payload: dict[str, Any]) -> ActionRequest:
    """The validated request for the payload's ``action``; 400 or 422 naming what is wrong."""
    action = payload.get("action")
    model = ACTION_MODELS.get(action) if isinstance(action, str) else None
    if model is None:
        allowed = ", ".join(ACTION_MODELS)
        raise ApiError(400, "unknown_action", f"action must be one of: {allowed}")
    return parse_body(model, payload)


def parse_body(model: type[M], payload: dict[str, Any]) -> M:
    """The payload validated as ``model``; 422 naming each field that is wrong."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation_error(exc)) from None
