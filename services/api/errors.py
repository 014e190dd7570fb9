"""The one error shape every api response uses: ``{"error": {"code", "message"}}``.

Actions raise :class:`ApiError`; the HTTP edge turns it, routing errors and any unexpected
exception into this envelope, so no stack trace, SQL text or submitted secret reaches a client.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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


class ApiError(Exception):
    """A failure the client should see, with its HTTP status and a stable machine code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, headers=self.headers)


def error_response(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


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
