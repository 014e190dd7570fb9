"""Testing a store before a job is accepted: its URL and addresses, its answer, its key.

The test is bounded three ways: by ``store_check_deadline_s`` as a whole, by a cap of tests per
api process and per org (:class:`StoreChecks`, refused at once rather than queued), and by the
short retry policy of :func:`store_client_factory`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol
from uuid import UUID

from services.api.errors import ApiError
from services.api.schemas import StoreConfigIn
from shared.logs import redact
from shared.settings import Settings
from shared.urlsafety import StoreUrlError, StoreUrlUnresolvable, ensure_public_url
from shared.woocommerce import (
    RetryPolicy,
    StoreAuthError,
    StoreConfig,
    StoreError,
    StoreTLSError,
    StoreUnavailable,
    WooClient,
)

# Testing a store before accepting a job: answer the client within seconds, so retry briefly
# (unlike the fetcher, which is patient). The whole test also runs under
# WOOSYNC_STORE_CHECK_DEADLINE_S (see check_store).
CHECK_MAX_ATTEMPTS = 2
CHECK_TIMEOUT_S = 10.0


class StoreProbe(Protocol):
    async def check_connection(self) -> int: ...


StoreClientFactory = Callable[[StoreConfig], AbstractAsyncContextManager[StoreProbe]]
# (store, concurrency) -> a client whose list_customers reads pages (the preview's reads).
StoreReaderFactory = Callable[[StoreConfigIn, int], WooClient]


def store_client_factory(settings: Settings) -> StoreClientFactory:
    """Real WooCommerce clients with the api's short retry policy."""
    policy = RetryPolicy(
        max_attempts=CHECK_MAX_ATTEMPTS,
        backoff_base_s=0.25,
        backoff_max_s=1.0,
        budget_s=settings.store_check_deadline_s,
    )
    timeout_s = min(settings.store_timeout_s, CHECK_TIMEOUT_S)
    deadline_s = min(settings.store_request_deadline_s, settings.store_check_deadline_s)

    def open_client(config: StoreConfig) -> AbstractAsyncContextManager[StoreProbe]:
        return WooClient(
            config,
            policy=policy,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            max_response_bytes=settings.store_max_response_bytes,
            pin_public_address=not settings.allow_private_urls,
        )

    return open_client


class StoreChecks:
    """The store connection tests running in this api process, bounded in total and per org.

    A test beyond a bound is refused at once rather than queued: a queue of tests, each up to
    the check deadline, would hold requests open for minutes behind a few slow stores.
    """

    def __init__(self, limit: int, per_org: int) -> None:
        self.limit = limit
        self.per_org = per_org
        self._running = 0
        self._by_org: Counter[UUID] = Counter()

    def take(self, org_id: UUID) -> Literal["ok", "busy", "org_busy"]:
        """A slot for one test (then ``release`` it), or why there is none."""
        if self._by_org[org_id] >= self.per_org:
            return "org_busy"
        if self._running >= self.limit:
            return "busy"
        self._running += 1
        self._by_org[org_id] += 1
        return "ok"

    def release(self, org_id: UUID) -> None:
        self._running -= 1
        self._by_org[org_id] -= 1
        if self._by_org[org_id] <= 0:
            del self._by_org[org_id]


class ProbeDeps(Protocol):
    """What a store test needs of the api's deps (``services.api.deps.Deps`` has it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def store_checks(self) -> StoreChecks: ...
    @property
    def store_client(self) -> StoreClientFactory: ...


def store_checks_busy(limit: int, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        "store_checks_busy",
        f"the api is already testing {limit} store connections, as many as it runs at once; "
        "try again shortly",
        headers={"Retry-After": str(retry_after_s)},
    )


def too_many_store_checks(limit: int, retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "too_many_store_checks",
        f"the organisation already has {limit} store connection tests running (the limit); "
        "try again when one has finished",
        headers={"Retry-After": str(retry_after_s)},
    )


def _store_config(config: StoreConfigIn) -> StoreConfig:
    return StoreConfig(
        url=config.url,
        consumer_key=config.consumer_key,
        consumer_secret=config.consumer_secret,
        auth=config.auth,
        verify_tls=config.verify_tls,
    )


def _safe_store_message(error: StoreError, secret: str) -> str:
    # The client's messages are meant to be safe; this is the second lock on the door.
    return redact(error.message.replace(secret, "***"))


async def check_store_url(deps: ProbeDeps, url: str) -> None:
    """Refuse a store the api and the fetcher must not talk to (internal addresses: SSRF)."""
    try:
        await ensure_public_url(url, allow_private=deps.settings.allow_private_urls)
    except StoreUrlError as exc:
        raise _url_refused(exc) from None


def _url_refused(exc: StoreUrlError) -> ApiError:
    if isinstance(exc, StoreUrlUnresolvable):
        return ApiError(422, "store_unreachable", f"config.url: {exc}")
    return ApiError(422, "store_url_not_allowed", f"config.url: {exc}")


async def check_store(deps: ProbeDeps, config: StoreConfigIn, org_id: UUID) -> int:
    """The store's customer count, after proving that the store may be used (its URL and
    addresses), answers and accepts the key.

    The whole test (name look-ups, address checks, requests and their retries) ends at
    ``store_check_deadline_s`` with 422 ``store_unreachable``; look-ups hold no thread (c-ares),
    so nothing outlives it. Tests beyond the per-process or per-org cap are refused at once
    (503 / 429 with ``Retry-After``): a slot frees within one deadline at the latest.
    """
    settings = deps.settings
    deadline_s = settings.store_check_deadline_s
    retry_after_s = max(1, math.ceil(deadline_s))
    taken = deps.store_checks.take(org_id)
    if taken == "org_busy":
        raise too_many_store_checks(deps.store_checks.per_org, retry_after_s)
    if taken == "busy":
        raise store_checks_busy(deps.store_checks.limit, retry_after_s)
    try:
        async with asyncio.timeout(deadline_s) as scope:
            await check_store_url(deps, config.url)
            return await _probe_store(deps, config)
    except TimeoutError:
        if not scope.expired():
            raise
        raise ApiError(
            422,
            "store_unreachable",
            f"the store did not complete the connection test within {deadline_s:g}s "
            "(name look-up and request); is it answering slowly or trickling its response?",
        ) from None
    finally:
        deps.store_checks.release(org_id)


async def _probe_store(deps: ProbeDeps, config: StoreConfigIn) -> int:
    """One ``check_connection`` of the store, its failures as the api's answers."""
    try:
        async with deps.store_client(_store_config(config)) as client:
            return await client.check_connection()
    except (StoreError, StoreUrlError) as exc:
        raise store_failure(exc, config) from None


def store_failure(exc: StoreError | StoreUrlError, config: StoreConfigIn) -> ApiError:
    """A failed store request as the api's 422 answer, without the store's secret."""
    if isinstance(exc, StoreUrlError):  # the address changed since check_store_url (rebinding)
        return _url_refused(exc)
    secret = config.consumer_secret.get_secret_value()
    code = (
        "store_credentials_refused"
        if isinstance(exc, StoreAuthError)
        else "store_unreachable"
        if isinstance(exc, StoreUnavailable)
        else "store_tls_error"
        if isinstance(exc, StoreTLSError)
        else "store_bad_response"
    )
    return ApiError(422, code, _safe_store_message(exc, secret))


def store_reader_factory(settings: Settings) -> StoreReaderFactory:
    """Clients that read a store's pages for a preview: the api's short retry policy, a
    connection pool of the preview's concurrency, the fetcher's size and address limits."""
    policy = RetryPolicy(
        max_attempts=CHECK_MAX_ATTEMPTS,
        backoff_base_s=0.25,
        backoff_max_s=1.0,
        budget_s=settings.preview_deadline_s,
    )

    def open_reader(config: StoreConfigIn, concurrency: int) -> WooClient:
        return WooClient(
            _store_config(config),
            policy=policy,
            timeout_s=min(settings.store_timeout_s, CHECK_TIMEOUT_S),
            deadline_s=min(settings.store_request_deadline_s, settings.preview_deadline_s),
            max_response_bytes=settings.store_max_response_bytes,
            max_connections=concurrency,
            pin_public_address=not settings.allow_private_urls,
        )

    return open_reader
