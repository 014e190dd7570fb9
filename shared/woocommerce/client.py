"""Async client for one store's ``/wp-json/wc/v3/customers`` list and its ``webhooks``.

One ``httpx.AsyncClient`` (connection pool sized for the fetcher's concurrency) per store. Each
call is one logical request: retried under a ``RetryPolicy`` for transient failures, and turned
into a ``StoreError`` with a user-safe message otherwise. httpx exceptions never escape, since
their text embeds the full URL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

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
WEBHOOKS_PATH = "/wp-json/wc/v3/webhooks"
ORDERS_PATH = "/wp-json/wc/v3/orders"
# What a guest is made of: an order's line items, notes and meta stay in the store.
GUEST_ORDER_FIELDS = "id,customer_id,billing,shipping,date_created_gmt"
MAX_PER_PAGE = 100  # WooCommerce answers 400 above this; it does not clamp.
_STORE_TEXT_LIMIT = 200
DEFAULT_DEADLINE_S = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Headers that described the body as sent; the buffered copy is decoded and sized anew.
_BODY_FRAMING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class AttemptReport(Protocol):
    def answered(self) -> None: ...
    def refused(self, status: int | None, retry_after_s: float | None = None) -> None: ...


class RequestGate(Protocol):
    """Admits each HTTP attempt to the store and hears how it went (adaptive concurrency,
    ``shared.storelimit``): attempts, not logical requests, so that a retry's wait holds no
    slot and every 429 is heard."""

    def attempt(self) -> AbstractAsyncContextManager[AttemptReport]: ...


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
        gate: RequestGate | None = None,
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
        self._gate = gate
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
        cls,
        config: StoreConfig,
        settings: Settings,
        *,
        max_connections: int | None = None,
        gate: RequestGate | None = None,
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
            gate=gate,
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

    async def list_guest_orders(
        self, page: int = 1, per_page: int = MAX_PER_PAGE, *, offset: int | None = None
    ) -> CustomerPage:
        """One page of guest orders (``customer=0``) in ascending id order; the page's
        ``customers`` are the orders, ``_links`` removed. ``customer=0`` is asked for, but not
        trusted (older HPOS builds mishandled it): the caller checks each ``customer_id``."""
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
        if page < 1:
            raise ValueError("page must be at least 1")
        params: dict[str, str | int] = {
            "customer": 0,
            "_fields": GUEST_ORDER_FIELDS,
            "orderby": "id",
            "order": "asc",
            "per_page": per_page,
            "page": page,
        }
        if offset is not None:
            if offset < 0:
                raise ValueError("offset must not be negative")
            params["offset"] = offset
        orders, headers = await self._get_customers(params, ORDERS_PATH)
        return CustomerPage(
            customers=[_without_links(item) if isinstance(item, dict) else item for item in orders],
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

    async def list_webhooks(self) -> list[dict[str, Any]]:
        """Every webhook of the store (``status=all``), page by page; retried like a read."""
        webhooks: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, str | int] = {
                "status": "all",
                "per_page": MAX_PER_PAGE,
                "page": page,
                "orderby": "id",
                "order": "asc",
            }
            items, headers = await self._read_list("GET", WEBHOOKS_PATH, params)
            webhooks += [item for item in items if isinstance(item, dict)]
            pages = _header_count(headers, "X-WP-TotalPages") or 1
            if page >= pages or not items:
                return webhooks
            page += 1

    async def create_webhook(
        self, *, name: str, topic: str, delivery_url: str, secret: str
    ) -> dict[str, Any]:
        """``POST /webhooks``: one attempt (a retry could create it twice); the store answers
        201 with the webhook (never its secret), after pinging ``delivery_url``."""
        body = {"name": name, "topic": topic, "delivery_url": delivery_url, "secret": secret}
        return await self._write("POST", WEBHOOKS_PATH, body)

    async def update_webhook(self, webhook_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """``PUT /webhooks/{id}`` with ``fields`` (``status``: ``active`` re-enables it)."""
        return await self._write("PUT", f"{WEBHOOKS_PATH}/{int(webhook_id)}", fields)

    async def delete_webhook(self, webhook_id: int) -> bool:
        """``DELETE /webhooks/{id}?force=true``; False when the store has no such webhook."""
        try:
            await self._write(
                "DELETE", f"{WEBHOOKS_PATH}/{int(webhook_id)}", None, params={"force": "true"}
            )
        except StoreBadResponse as exc:
            if exc.status in (400, 404) and exc.code == "woocommerce_rest_shop_webhook_invalid_id":
                return False
            raise
        return True

    async def _read_list(
        self, method: str, endpoint: str, params: dict[str, str | int]
    ) -> tuple[list[Any], httpx.Headers]:
        path = self._path(endpoint)
        started = time.monotonic()

        async def attempt() -> tuple[list[Any], httpx.Headers]:
            response = await self._send(method, endpoint, params)
            try:
                body = jsondepth.loads(response.content)
            except ValueError:
                raise TransientFailure("invalid JSON body", status=response.status_code) from None
            if not isinstance(body, list):
                raise TransientFailure("body is not a JSON array", status=response.status_code)
            return body, response.headers

        controller = retrying(self._policy, self._log_retry(method, path))
        try:
            return await controller(attempt)
        except tenacity.RetryError as exhausted:
            raise self._unavailable(method, path, exhausted, started) from None

    async def _write(
        self,
        method: str,
        endpoint: str,
        body: dict[str, Any] | None,
        *,
        params: dict[str, str | int] | None = None,
    ) -> dict[str, Any]:
        """One attempt of a change; a transient failure is ``StoreUnavailable`` at once."""
        path = self._path(endpoint)
        started = time.monotonic()
        try:
            response = await self._send(method, endpoint, params or {}, json_body=body)
        except TransientFailure as failure:
            raise StoreUnavailable(
                method=method,
                path=path,
                attempts=1,
                elapsed_s=time.monotonic() - started,
                last_kind=failure.kind,
                last_status=failure.status,
            ) from None
        try:
            answer = response.json()
        except ValueError:
            raise StoreBadResponse(
                f"store answered {method} {path} with a body that is not JSON",
                status=response.status_code,
            ) from None
        if not isinstance(answer, dict):
            raise StoreBadResponse(
                f"store answered {method} {path} with a body that is not a JSON object",
                status=response.status_code,
            )
        return answer

    def _unavailable(
        self, method: str, path: str, exhausted: tenacity.RetryError, started: float
    ) -> StoreUnavailable:
        failure = exhausted.last_attempt.exception()
        assert isinstance(failure, TransientFailure)
        return StoreUnavailable(
            method=method,
            path=path,
            attempts=exhausted.last_attempt.attempt_number,
            elapsed_s=time.monotonic() - started,
            last_kind=failure.kind,
            last_status=failure.status,
        )

    async def _get_customers(
        self, params: dict[str, str | int], endpoint: str = CUSTOMERS_PATH
    ) -> tuple[list[Any], httpx.Headers]:
        path = self._path(endpoint)
        started = time.monotonic()
        controller = retrying(self._policy, self._log_retry("GET", path))
        try:
            return await controller(self._attempt_customers, params, endpoint)
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
        self, params: dict[str, str | int], endpoint: str = CUSTOMERS_PATH
    ) -> tuple[list[Any], httpx.Headers]:
        """The page's items as sent. Only a body that is not a JSON array fails the page (a cut
        proxy or a PHP notice: transient); an item without a usable id is its caller's to judge,
        as that customer alone is bad."""
        if self._gate is None:
            response = await self._send("GET", endpoint, params)
        else:
            async with self._gate.attempt() as attempt:
                try:
                    response = await self._send("GET", endpoint, params)
                except TransientFailure as failure:
                    attempt.refused(failure.status, failure.retry_after_s)
                    raise
                attempt.answered()
        try:
            # Any nesting depth: a customer nested too deeply fails alone at the syncer.
            body = jsondepth.loads(response.content)
        except ValueError:  # Includes bad UTF-8; typically a cut proxy or a PHP notice.
            raise TransientFailure("invalid JSON body", status=response.status_code) from None
        if not isinstance(body, list):
            raise TransientFailure("body is not a JSON array", status=response.status_code)
        return body, response.headers

    async def _send(
        self,
        method: str,
        endpoint: str,
        params: dict[str, str | int],
        *,
        json_body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange, classified: a 2xx response, or a safe exception.

        The whole exchange runs under the total deadline, and the body is read in chunks up to
        the size limit; the response returned holds the body, so ``json()`` works as usual.
        """
        path = self._path(endpoint)
        try:
            async with asyncio.timeout(self._deadline_s):
                response = await self._exchange(method, endpoint, params, path, json_body)
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
        self,
        method: str,
        endpoint: str,
        params: dict[str, str | int],
        path: str,
        json_body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send, then buffer the body chunk by chunk, refusing it past the size limit."""
        request = self._http.build_request(method, endpoint, params=params, json=json_body)
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
    """What the store's transport verifies with: its CA bundle (a path) or the default trust
    store, as one TLS context per process, or nothing (``verify_tls`` false)."""
    if verify is False:
        return False
    return _tls_context(verify)


@functools.lru_cache(maxsize=32)
def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """Building a TLS context reads the whole CA bundle: about 30 ms of CPU, which every start's
    store check and every crawl paid when each client built its own. A context is made to be
    shared (nothing here changes it after it is built), so each process builds one per bundle.
    A path becomes a context (httpx 0.28 deprecates a path for ``verify``)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context()


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
    """The object without the store's ``_links``, removed in place: every page is parsed for
    the one call that returns it, so no one else holds its objects (a copy cost 2 µs each)."""
    customer.pop("_links", None)
    return customer
