"""What the two HTTP services (api, tracker) answer alike: the error envelope, liveness and
readiness, and the limiter of callers whose key or token was refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from faststream.rabbit import RabbitBroker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.ratelimit import RateLimiter
from shared.settings import Settings

READY_TIMEOUT_S = 2.0
READY_QUERY = "SELECT 1"


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
    """The one error shape of every HTTP answer: ``{"error": {"code", "message"}}``."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def healthz(request: Request) -> Response:
    """Liveness: the process answers HTTP (no I/O)."""
    return JSONResponse({"status": "ok"})


async def readiness(pool: asyncpg.Pool, broker: RabbitBroker) -> tuple[bool, bool]:
    """(PostgreSQL answers, the broker connection is up), each within ``READY_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            database = await pool.fetchval(READY_QUERY) == 1
    except Exception:  # not ready, whatever the reason
        database = False
    try:
        broker_ok = bool(await broker.ping(timeout=READY_TIMEOUT_S))
    except Exception:
        broker_ok = False
    return database, broker_ok


def readiness_body(database: bool, broker: bool) -> dict[str, Any]:
    """The tracker's, fetcher's and syncer's readiness answer (the api documents its own)."""
    return {
        "status": "ok" if database and broker else "unavailable",
        "checks": {"database": database, "broker": broker},
    }


def readyz(
    resources: Callable[[Request], tuple[asyncpg.Pool, RabbitBroker]],
    body: Callable[[bool, bool], dict[str, Any]],
) -> Callable[[Request], Awaitable[Response]]:
    """The readiness endpoint: 200 when both answer, else 503; ``body`` is each service's
    documented shape of (database, broker)."""

    async def endpoint(request: Request) -> Response:
        database, broker = await readiness(*resources(request))
        status = 200 if database and broker else 503
        return JSONResponse(body(database, broker), status_code=status)

    return endpoint


class RefusedCallers:
    """Per client address, requests whose key (or token) was refused: beyond the limit that
    address gets 429 for any key, before any look-up, so keys cannot be guessed at speed."""

    def __init__(self, pool: asyncpg.Pool, service: str, settings: Settings, what: str) -> None:
        self.limiter = RateLimiter(
            pool,
            f"{service}:refused",
            settings.refused_key_limit_per_minute,
            settings.refused_key_limit_burst,
        )
        self._what = what

    async def check(self, request: Request) -> None:
        """Raise 429 when the caller's address has had too many refusals."""
        if not await self.limiter.has_capacity(client_address(request)):
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests with {self._what} from this address; slow down",
                headers={"Retry-After": str(self.limiter.retry_after_s)},
            )

    async def refused(self, request: Request) -> None:
        """Count one refusal against the caller's address."""
        await self.limiter.allow(client_address(request))
