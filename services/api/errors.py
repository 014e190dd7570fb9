"""The one error shape every api response uses: ``{"error": {"code", "message"}}``.

Actions raise :class:`ApiError` (defined with the envelope in ``shared.web``, which the tracker
answers with too); the HTTP edge turns it, routing errors and any unexpected exception into this
envelope, so no stack trace, SQL text or submitted secret reaches a client.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from shared.web import ApiError, error_response

__all__ = ["ApiError", "describe_validation_error", "error_response", "http_exception_handler"]

# Pydantic's own wording for these names the offending input; ours does not.
_FRIENDLY_MESSAGES: dict[str, str] = {
    "missing": "field required",
    "extra_forbidden": "unexpected field",
    "uuid_parsing": "invalid UUID",
    "uuid_type": "invalid UUID",
    "uuid_version": "invalid UUID",
}
_MAX_REPORTED_ERRORS = 10

_HTTP_CODES: dict[int, str] = {
    404: "not_found",
    405: "method_not_allowed",
}


def describe_validation_error(exc: ValidationError) -> str:
    """``"org_id: invalid UUID; config.url: field required"`` without any submitted value.

    The input is never included: for ``config.consumer_secret`` it would be the secret.
    """
    parts: list[str] = []
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    for error in errors[:_MAX_REPORTED_ERRORS]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        text = _FRIENDLY_MESSAGES.get(error["type"], error["msg"])
        parts.append(f"{location}: {text.removeprefix('Value error, ')}")
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) in the same envelope as everything else."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)
