"""Async client for one store's ``/wp-json/wc/v3/customers`` list.

One ``httpx.AsyncClient`` (connection pool sized for the fetcher's concurrency) per store. Each
call is one logical request: retried under a ``RetryPolicy`` for transient failures, and turned
into a ``StoreError`` with a user-safe message otherwise. httpx exceptions never escape, since
their text embeds the full URL.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
import tenacity

from shared import jsondepth
from shared.logs import redact
from shared.settings import Settings
from shared.urlsafety import PinnedAddressTransport, Resolver, system_resolve
from shared.woocommerce.auth import request_auth, wrap_transport
from shared.woocommerce.credentials import StoreConfig
from shared.woocommerce.errors import (
    StoreAuthError,
    StoreBadResponse,
    StoreTLSError,
    StoreUnavailable,
)
from shared.woocommerce.logsafety import guard_http_loggers
from shared.woocommerce.retry import (
    RETRYABLE_STATUSES,
    RetryPolicy,
    TransientFailure,
    parse_retry_after,
    retrying,
)

logger = logging.getLogger(__name__)

CUSTOMERS_PATH = "/wp-json/wc/v3/customers"
MAX_PER_PAGE = 100  # WooCommerce answers 400 above this; it does not clamp.
_STORE_TEXT_LIMIT = 200
DEFAULT_DEADLINE_S = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Headers that described the body as sent; the buffered copy is decoded and sized anew.
_BODY_FRAMING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


@dataclass(frozen=True)
class CustomerPage:
    """One page of customers, ``_links`` removed.

    ``customers`` holds the items as the store sent them: normally objects with an integer
    ``id``, but a store's database can hold anything, and one bad item must not fail its page.
    The caller checks each item (see ``services.fetcher.items``). ``total`` and ``total_pages``
    come from ``X-WP-Total`` / ``X-WP-TotalPages`` and are None when the store (or a proxy in
    front of it) did not send a usable value; they are the store's claim, not to be trusted.
    """

    customers: list[Any]
    total: int | None
    total_pages: int | None
    page: int


class WooClient:
    """Reads customers from one store; use as ``async with WooClient(config) as client:``."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        timeout_s: float = 30.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_connections: int = 4,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        pin_public_address: bool = False,
        resolve: Resolver = system_resolve,
    ) -> None:
        """``transport`` replaces the network (a test double of the store); TLS verification
        and pool limits are then that transport's business. ``pin_public_address``: connect
        only to a checked public address of the store (see ``shared.urlsafety``); off only
        where private addresses are allowed (``WOOSYNC_ALLOW_PRIVATE_URLS``).

        ``timeout_s`` bounds each connect, read and write; ``deadline_s`` bounds one whole
        attempt (the address look-up, connect, headers and the full body), so a store that
        trickles a byte every few seconds is cut off too. A body (decoded) above
        ``max_response_bytes`` is refused instead of buffered."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if deadline_s <= 0 or max_response_bytes < 1:
            raise ValueError("deadline_s and max_response_bytes must be positive")
        self._config = config
        self._deadline_s = deadline_s
        self._max_response_bytes = max_response_bytes
        self._policy = policy or RetryPolicy()
        if config.auth == "query":
            guard_http_loggers()
        network = transport is None
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=_tls_verification(config.verify_tls),
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                retries=0,  # Retries belong to the policy, which also sees statuses and bodies.
            )
        if pin_public_address or network:
            # On the network every look-up is ours (c-ares, bounded), never the thread pool's;
            # the flag decides only whether the addresses must be public.
            transport = PinnedAddressTransport(
                transport, resolve=resolve, allow_private=not pin_public_address
            )
        self._http = httpx.AsyncClient(
            base_url=config.url,
            auth=request_auth(config),
            transport=wrap_transport(config, transport),
            timeout=httpx.Timeout(timeout_s),
            headers={"Accept": "application/json", "User-Agent": "woosync"},
            follow_redirects=False,  # A redirect could carry query credentials to another host.
        )

    @classmethod
    def from_settings(
        cls, config: StoreConfig, settings: Settings, *, max_connections: int | None = None
    ) -> WooClient:
        """Timeout, deadline, size and retry bounds from ``WOOSYNC_STORE_*``; pool sized for
        the concurrency."""
        return cls(
            config,
            timeout_s=settings.store_timeout_s,
            deadline_s=settings.store_request_deadline_s,
            max_response_bytes=settings.store_max_response_bytes,
            max_connections=max_connections or settings.default_concurrency,
            policy=RetryPolicy.from_settings(settings),
            pin_public_address=not settings.allow_private_urls,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_customers(
        self, page: int = 1, per_page: int = MAX_PER_PAGE, *, offset: int | None = None
    ) -> CustomerPage:
        """One page of *all* users (``role=all``) in ascending id order.

        ``offset``, when given, is sent too and (as in WooCommerce) overrides ``page``.
        Raises ``StoreAuthError``, ``StoreBadResponse``, ``StoreTLSError`` or ``StoreUnavailable``.
        """
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
        if page < 1:
            raise ValueError("page must be at least 1")
        params: dict[str, str | int] = {
            "role": "all",
            "orderby": "id",
            "order": "asc",
            "per_page": per_page,
            "page": page,
        }
        if offset is not None:
            if offset < 0:
                raise ValueError("offset must not be negative")
            params["offset"] = offset
        customers, headers = await self._get_customers(params)
        return CustomerPage(
            customers=[
                _without_links(item) if isinstance(item, dict) else item for item in customers
            ],
            total=_header_count(headers, "X-WP-Total"),
            total_pages=_header_count(headers, "X-WP-TotalPages"),
            page=page,
        )

    async def check_connection(self) -> int:
        """Proves URL, key, read scope and ``list_users`` at once; returns the user count."""
        _customers, headers = await self._get_customers({"per_page": 1, "role": "all"})
        total = _header_count(headers, "X-WP-Total")
        if total is None:
            raise StoreBadResponse(
                f"store sent no X-WP-Total header (GET {self._path(CUSTOMERS_PATH)}); "
                "is this a WooCommerce store?"
            )
        return total

    async def _get_customers(self, params: dict[str, str | int]) -> tuple[list[Any], httpx.Headers]:
        path = self._path(CUSTOMERS_PATH)
        started = time.monotonic()
        controller = retrying(self._policy, self._log_retry("GET", path))
        try:
            return await controller(self._attempt_customers, params)
        except tenacity.RetryError as exhausted:
            failure = exhausted.last_attempt.exception()
            assert isinstance(failure, TransientFailure)
            raise StoreUnavailable(
                method="GET",
                path=path,
                attempts=exhausted.last_attempt.attempt_number,
                elapsed_s=time.monotonic() - started,
                last_kind=failure.kind,
                last_status=failure.status,
            ) from None

    async def _attempt_customers(
        self, params: dict[str, str | int]
    ) -> tuple[list[Any], httpx.Headers]:
        """The page's items as sent. Only a body that is not a JSON array fails the page (a cut
        proxy or a PHP notice: transient); an item without a usable id is its caller's to judge,
        as that customer alone is bad."""
        response = await self._send("GET", CUSTOMERS_PATH, params)
        try:
            # Any nesting depth: a customer nested too deeply fails alone at the syncer.
            body = jsondepth.loads(response.content)
        except ValueError:  # Includes bad UTF-8; typically a cut proxy or a PHP notice.
            raise TransientFailure("invalid JSON body", status=response.status_code) from None
        if not isinstance(body, list):
            raise TransientFailure("body is not a JSON array", status=response.status_code)
        return body, response.headers

    async def _send(
        self, method: str, endpoint: str, params: dict[str, str | int]
    ) -> httpx.Response:
        """One HTTP exchange, classified: a 2xx response, or a safe exception.

        The whole exchange runs under the total deadline, and the body is read in chunks up to
        the size limit; the response returned holds the body, so ``json()`` works as usual.
        """
        path = self._path(endpoint)
        try:
            async with asyncio.timeout(self._deadline_s):
                response = await self._exchange(method, endpoint, params, path)
        except TimeoutError:
            raise TransientFailure(
                f"no complete response within the {self._deadline_s:g}s request deadline"
            ) from None
        except httpx.HTTPError as exc:
            if _is_certificate_failure(exc):
                raise StoreTLSError(
                    method=method, path=path, host=self._http.base_url.host
                ) from None
            raise TransientFailure(type(exc).__name__) from None
        status = response.status_code
        if 200 <= status < 300:
            return response
        if status in RETRYABLE_STATUSES:
            raise TransientFailure(
                f"HTTP {status}",
                status=status,
                retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            )
        code, store_message = self._envelope(response)
        if status in (401, 403):
            raise StoreAuthError(
                method=method, path=path, status=status, code=code, store_message=store_message
            )
        if 300 <= status < 400:
            raise StoreBadResponse(
                f"store redirected {method} {path} to {_location(response)} (HTTP {status}); "
                "use the final store URL",
                status=status,
            )
        raise StoreBadResponse.for_status(
            method=method, path=path, status=status, code=code, store_message=store_message
        )

    async def _exchange(
        self, method: str, endpoint: str, params: dict[str, str | int], path: str
    ) -> httpx.Response:
        """Send, then buffer the body chunk by chunk, refusing it past the size limit."""
        request = self._http.build_request(method, endpoint, params=params)
        streamed = await self._http.send(request, stream=True)
        try:
            limit = self._max_response_bytes
            if (_header_count(streamed.headers, "Content-Length") or 0) > limit:
                raise self._too_large(method, path, streamed.status_code)
            chunks: list[bytes] = []
            size = 0
            async for chunk in streamed.aiter_bytes():  # decoded: a gzip bomb counts in full
                size += len(chunk)
                if size > limit:
                    raise self._too_large(method, path, streamed.status_code)
                chunks.append(chunk)
        finally:
            await streamed.aclose()
        # Raw bytes: a store may send header values that are not ASCII.
        headers = [
            (name, value)
            for name, value in streamed.headers.raw
            if name.decode("latin-1").lower() not in _BODY_FRAMING_HEADERS
        ]
        return httpx.Response(
            streamed.status_code, headers=headers, content=b"".join(chunks), request=request
        )

    def _too_large(self, method: str, path: str, status: int) -> StoreBadResponse:
        limit_mib = self._max_response_bytes / (1024 * 1024)
        return StoreBadResponse(
            f"store sent a response larger than {limit_mib:g} MiB ({method} {path}); "
            "the limit is WOOSYNC_STORE_MAX_RESPONSE_BYTES",
            status=status,
        )

    def _path(self, endpoint: str) -> str:
        return self._http.base_url.path.rstrip("/") + endpoint

    def _envelope(self, response: httpx.Response) -> tuple[str | None, str | None]:
        """``code`` and ``message`` of a WordPress error body, sanitised; None when absent."""
        try:
            body = response.json()
        except ValueError:
            return None, None
        if not isinstance(body, dict):
            return None, None
        code, message = body.get("code"), body.get("message")
        return (
            self._safe_text(code) if isinstance(code, str) else None,
            self._safe_text(message) if isinstance(message, str) else None,
        )

    def _safe_text(self, text: str) -> str:
        """Store text for a user: no secret even if the store echoed it, one line, bounded."""
        secret = self._config.consumer_secret.get_secret_value()
        text = redact(text.replace(secret, "***"))
        text = " ".join(text.split())
        return text[:_STORE_TEXT_LIMIT]

    def _log_retry(self, method: str, path: str) -> Callable[[tenacity.RetryCallState], None]:
        max_attempts = self._policy.max_attempts
        host = self._http.base_url.host

        def before_sleep(state: tenacity.RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            kind = failure.kind if isinstance(failure, TransientFailure) else "error"
            delay = state.next_action.sleep if state.next_action else 0.0
            logger.warning(
                "store %s: %s %s failed (%s), attempt %d of %d; retrying in %.2fs",
                host,
                method,
                path,
                kind,
                state.attempt_number,
                max_attempts,
                delay,
            )

        return before_sleep


def _tls_verification(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx 0.28 deprecates a path for ``verify``; a CA bundle becomes an SSLContext."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _header_count(headers: httpx.Headers, name: str) -> int | None:
    """The header's count, or None. Absurdly long values are kept absurd (not parsed: Python
    refuses ints of thousands of digits), so the caller's limit check names them."""
    value = headers.get(name, "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) <= 30 else 10**30


def _location(response: httpx.Response) -> str:
    """The redirect target without its query: WooCommerce echoes query credentials into it."""
    location = response.headers.get("Location")
    if not location:
        return "an unnamed location"
    try:
        target = response.request.url.join(location)
    except httpx.InvalidURL:
        return "an invalid location"
    return str(target.copy_with(query=None, fragment=None))


def _without_links(customer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in customer.items() if key != "_links"}
