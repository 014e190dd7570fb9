"""The api's actions: plain async functions of typed requests, the caller and explicit deps.

Each returns a result model or raises :class:`ApiError`. Database writes of one action happen in
one transaction; messages are published only after that commit, so a consumer never sees a job
or a line that is not yet visible. A publish that fails leaves the job in a state from which
repeating the same request publishes again (a ``draft`` job, or lines pending with a payload).

Every state change and every operator action is an activity row naming the API key that asked.
A job of another org is answered exactly like a job that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID, uuid4

import asyncpg

from services.api import queries as q
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.schemas import (
    ForceDoneRequest,
    RetryRequest,
    RetryResult,
    StartRequest,
    StartResult,
    StatusRequest,
    StatusResult,
    StoreConfigIn,
)
from shared import activity
from shared.auth import Caller
from shared.broker import publish
from shared.db import for_org
from shared.jobs import FINAL_STATES, JobStatus, get_status
from shared.logs import redact
from shared.messages import CustomerBatch, Message, SyncRequested
from shared.urlsafety import StoreUrlError, StoreUrlUnresolvable, ensure_public_url
from shared.woocommerce import (
    StoreAuthError,
    StoreConfig,
    StoreError,
    StoreTLSError,
    StoreUnavailable,
)

log = logging.getLogger("woosync.api.actions")

# A confirm that takes longer than this means the broker is not really there.
PUBLISH_TIMEOUT_S = 10.0
# What a client at the cap of open syncs is told to wait before trying again.
SYNC_CAP_RETRY_AFTER_S = 30


def job_not_found() -> ApiError:
    # The same answer for a missing job and for another org's job: ids are not probeable.
    return ApiError(404, "job_not_found", "no such job")


def broker_unavailable() -> ApiError:
    return ApiError(503, "broker_unavailable", "the message broker is unavailable; try again")


def too_many_syncs(limit: int) -> ApiError:
    return ApiError(
        429,
        "too_many_syncs",
        f"the organisation already has {limit} syncs open (the limit); "
        "try again when one has finished",
        headers={"Retry-After": str(SYNC_CAP_RETRY_AFTER_S)},
    )


def connection_busy(job_id: UUID) -> ApiError:
    return ApiError(
        409,
        "connection_busy",
        f"job {job_id} of the same store connection is reading the store; "
        "retry this job when it has finished",
    )


def status_url(deps: Deps, job_id: UUID) -> str:
    return f"{deps.settings.api_base()}/api/v1/integrations/woocommerce/sync/jobs/{job_id}"


def progress_url(deps: Deps, job_id: UUID, org_id: UUID) -> str:
    token = quote(deps.tokens.issue(job_id, org_id), safe="")
    base = deps.settings.tracker_base()
    return f"{base}/api/v1/integrations/sync/progress/{job_id}?token={token}"


def _status_result(deps: Deps, status: JobStatus, org_id: UUID) -> StatusResult:
    return StatusResult(
        **status.model_dump(),
        status_url=status_url(deps, status.job_id),
        progress_url=progress_url(deps, status.job_id, org_id),
    )


async def _publish(deps: Deps, messages: Sequence[Message]) -> None:
    """Publish with confirms, or raise 503 ``broker_unavailable``."""
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            for message in messages:
                await publish(deps.broker, deps.topology, message)
    except Exception as exc:  # any failure means the messages are not known to be queued
        log.warning("publish failed: %s", type(exc).__name__)
        raise broker_unavailable() from None


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


async def check_store_url(deps: Deps, url: str) -> None:
    """Refuse a store the api and the fetcher must not talk to (internal addresses: SSRF)."""
    try:
        await ensure_public_url(url, allow_private=deps.settings.allow_private_urls)
    except StoreUrlError as exc:
        raise _url_refused(exc) from None


def _url_refused(exc: StoreUrlError) -> ApiError:
    if isinstance(exc, StoreUrlUnresolvable):
        return ApiError(422, "store_unreachable", f"config.url: {exc}")
    return ApiError(422, "store_url_not_allowed", f"config.url: {exc}")


async def check_store(deps: Deps, config: StoreConfigIn, org_id: UUID) -> int:
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


async def _probe_store(deps: Deps, config: StoreConfigIn) -> int:
    """One ``check_connection`` of the store, its failures as the api's answers."""
    secret = config.consumer_secret.get_secret_value()
    try:
        async with deps.store_client(_store_config(config)) as client:
            return await client.check_connection()
    except StoreAuthError as exc:
        raise ApiError(422, "store_credentials_refused", _safe_store_message(exc, secret)) from None
    except StoreUnavailable as exc:
        raise ApiError(422, "store_unreachable", _safe_store_message(exc, secret)) from None
    except StoreTLSError as exc:
        raise ApiError(422, "store_tls_error", _safe_store_message(exc, secret)) from None
    except StoreError as exc:
        raise ApiError(422, "store_bad_response", _safe_store_message(exc, secret)) from None
    except StoreUrlError as exc:  # the address changed since check_store_url (DNS rebinding)
        raise _url_refused(exc) from None


async def _hand_to_fetcher(
    deps: Deps,
    *,
    job_id: UUID,
    org_id: UUID,
    connection_id: UUID,
    actor: Mapping[str, str],
    reason: Literal["start", "retry"] = "start",
) -> str:
    """Publish ``sync.requested`` for a draft job and mark it queued; its state afterwards.

    The job's row stays locked from the read of its state to the commit of ``queued``, so two
    requests that both find the draft (a start answered with the open job while the start that
    made it is still publishing) publish it once: the second sees ``queued`` and sends nothing.
    """
    message = SyncRequested(
        job_id=job_id, org_id=org_id, connection_id=connection_id, reason=reason
    )
    try:
        async with for_org(deps.pool, org_id).transaction() as conn:
            state: str = await conn.fetchval(q.LOCK_JOB_STATE, job_id, org_id)
            if state != "draft":
                return state
            await _publish(deps, [message])
            await conn.execute(q.MARK_QUEUED, job_id, org_id)
            await activity.record(
                conn,
                org_id=org_id,
                job_id=job_id,
                event="job.queued",
                details={"reason": reason, **actor},
            )
    except ApiError:
        await activity.record(
            for_org(deps.pool, org_id),
            org_id=org_id,
            job_id=job_id,
            event="job.publish_failed",
            level="warning",
            details={"message": "sync.requested", "reason": reason, **actor},
        )
        raise
    return "queued"


def _start_result(deps: Deps, job_id: UUID, org_id: UUID, state: str) -> StartResult:
    return StartResult(
        job_id=job_id,
        state=state,  # type: ignore[arg-type]  # a job state read from the CHECKed column
        status_url=status_url(deps, job_id),
        progress_url=progress_url(deps, job_id, org_id),
    )


@dataclass(frozen=True)
class Started:
    result: StartResult
    # The connection already had an open job, and the answer is that job (no new one).
    already_running: bool = False


async def _existing_job(
    deps: Deps, row: asyncpg.Record, caller: Caller, *, already_running: bool = False
) -> Started:
    """A job that answers this start; published again only if it never was (still a draft)."""
    state = row["state"]
    if state == "draft":
        state = await _hand_to_fetcher(
            deps,
            job_id=row["id"],
            org_id=caller.org_id,
            connection_id=row["connection_id"],
            actor=caller.actor(),
        )
    return Started(_start_result(deps, row["id"], caller.org_id, state), already_running)


async def start_sync(request: StartRequest, caller: Caller, deps: Deps) -> Started:
    """Verify the store, store the connection and a new job, and hand the job to the fetcher.

    A connection with an open job gets no second one: the answer is the open job. An org at
    ``max_concurrent_syncs_per_org`` open jobs is refused with 429.
    """
    org_id = caller.org_id
    key = request.options.idempotency_key
    existing: asyncpg.Record | None = None
    if key is not None:
        # A replay answers from the database alone, even if the store is down by now.
        existing = await for_org(deps.pool, org_id).fetchrow(
            q.SELECT_JOB_BY_IDEMPOTENCY_KEY, org_id, key
        )
        if existing is not None:
            return await _existing_job(deps, existing, caller)

    store_total = await check_store(deps, request.config, org_id)

    new_job_id = uuid4()
    running: asyncpg.Record | None = None
    async with for_org(deps.pool, org_id).transaction() as conn:
        await conn.execute(q.LOCK_ORG_SYNCS, org_id)
        if key is not None:
            # A concurrent request with the same key may have won while the store was checked.
            existing = await conn.fetchrow(q.SELECT_JOB_BY_IDEMPOTENCY_KEY, org_id, key)
        if existing is None:
            connection_id, running = await _open_job_or_new(
                conn, deps, request, caller, new_job_id, store_total
            )
    # Published only after the commit (and with the lock released).
    if existing is not None:
        return await _existing_job(deps, existing, caller)
    if running is not None:
        return await _existing_job(deps, running, caller, already_running=True)
    state = await _hand_to_fetcher(
        deps,
        job_id=new_job_id,
        org_id=org_id,
        connection_id=connection_id,
        actor=caller.actor(),
    )
    return Started(_start_result(deps, new_job_id, org_id, state))


async def _open_job_or_new(
    conn: asyncpg.Connection,
    deps: Deps,
    request: StartRequest,
    caller: Caller,
    new_job_id: UUID,
    store_total: int,
) -> tuple[UUID, asyncpg.Record | None]:
    """The connection's id, and its open job if it has one; else the new job is inserted.

    Runs under the org's sync lock, so the count of open jobs stays true until the commit.
    The store's one connection (whatever key reached it before) takes the credentials the store
    has just accepted, also when the start is answered with an open job: that job's next crawl
    (a retry, a redelivery) loads the new key; a crawl already running keeps the key it began
    with until it ends.
    """
    org_id, config, options = caller.org_id, request.config, request.options
    previous = await conn.fetchrow(q.SELECT_CONNECTION_OF_STORE, org_id, config.url)
    connection_id: UUID = await conn.fetchval(
        q.UPSERT_CONNECTION,
        uuid4(),
        org_id,
        config.url,
        config.auth,
        config.verify_tls,
        config.consumer_key,
        deps.secrets.encrypt(config.consumer_secret.get_secret_value()),
    )
    running = await conn.fetchrow(q.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id)
    if previous is not None:
        job_id = running["id"] if running is not None else new_job_id
        await _record_connection_change(conn, previous, config, org_id, job_id, caller)
    if running is not None:
        await activity.record(
            conn,
            org_id=org_id,
            job_id=running["id"],
            event="job.start_answered_by_open_job",
            details={"connection_id": str(connection_id), **caller.actor()},
        )
        return connection_id, running

    limit = deps.settings.max_concurrent_syncs_per_org
    if await conn.fetchval(q.COUNT_OPEN_JOBS, org_id) >= limit:
        raise too_many_syncs(limit)
    batch_size = options.batch_size or deps.settings.default_batch_size
    concurrency = options.concurrency or deps.settings.default_concurrency
    inserted = await conn.fetchval(
        q.INSERT_JOB,
        new_job_id,
        org_id,
        connection_id,
        options.idempotency_key,
        batch_size,
        concurrency,
        store_total,
    )
    if inserted is None:  # the lock makes this unreachable; never make a second job
        raise RuntimeError("a job insert conflicted while holding the org's sync lock")
    await activity.record(
        conn,
        org_id=org_id,
        job_id=new_job_id,
        event="job.created",
        details={
            "connection_id": str(connection_id),
            "store_url": config.url,
            "auth": config.auth,
            "verify_tls": config.verify_tls,
            "batch_size": batch_size,
            "concurrency": concurrency,
            "store_total": store_total,
            "idempotency_key": options.idempotency_key,
            **caller.actor(),
        },
    )
    return connection_id, None


def _key_ending(consumer_key: str) -> str:
    # What WooCommerce itself shows of a key (its "truncated_key"): enough to tell keys apart.
    return "…" + consumer_key[-7:]


async def _record_connection_change(
    conn: asyncpg.Connection,
    previous: asyncpg.Record,
    config: StoreConfigIn,
    org_id: UUID,
    job_id: UUID,
    caller: Caller,
) -> None:
    """An activity row when a start changed a stored connection (never its secret)."""
    changes: dict[str, Any] = {}
    if previous["consumer_key"] != config.consumer_key:
        changes["consumer_key"] = [
            _key_ending(previous["consumer_key"]),
            _key_ending(config.consumer_key),
        ]
    if previous["auth_mode"] != config.auth:
        changes["auth"] = [previous["auth_mode"], config.auth]
    if previous["verify_tls"] != config.verify_tls:
        changes["verify_tls"] = [previous["verify_tls"], config.verify_tls]
    if previous["store_url"] != config.url:
        changes["store_url"] = [previous["store_url"], config.url]
    if not changes:
        return  # the same key again: only its secret was refreshed
    # Less protection than before: plain http (http accepts only OAuth 1.0a, which never sends
    # the secret, but the customers travel in clear), or no certificate check.
    downgrade = (
        config.url.startswith("http://") and not previous["store_url"].startswith("http://")
    ) or (previous["verify_tls"] and not config.verify_tls)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job_id,
        event=(
            "connection.credentials_rotated"
            if "consumer_key" in changes
            else "connection.settings_changed"
        ),
        level="warning" if downgrade else "info",
        details={
            "connection_id": str(previous["id"]),
            "store_url": config.url,
            "changes": changes,
            **caller.actor(),
        },
    )


async def job_status(request: StatusRequest, caller: Caller, deps: Deps) -> StatusResult:
    return await read_status(deps, org_id=caller.org_id, job_id=request.job_id)


async def read_status(deps: Deps, *, org_id: UUID, job_id: UUID) -> StatusResult:
    status = await get_status(for_org(deps.pool, org_id), org_id=org_id, job_id=job_id)
    if status is None:
        raise job_not_found()
    return _status_result(deps, status, org_id)


def _batches(
    job_id: UUID, org_id: UUID, connection_id: UUID, customers: list[Any], size: int
) -> list[CustomerBatch]:
    return [
        CustomerBatch(
            job_id=job_id,
            org_id=org_id,
            connection_id=connection_id,
            page=None,
            customers=customers[start : start + size],
        )
        for start in range(0, len(customers), size)
    ]


async def retry_job(request: RetryRequest, caller: Caller, deps: Deps) -> RetryResult:
    """Send the job's failed customers to the syncer again, and resume an unfinished fetch.

    Nothing to do (no failed line with a saved payload, and the fetch is complete or still
    running) is not an error: the answer is the job's status with ``requeued == 0``. A finished
    job that opens again counts against the org's cap of open syncs; one whose fetch resumes
    waits (409) while another job of its connection is reading the store.
    """
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        await conn.execute(q.LOCK_ORG_SYNCS, org_id)  # before the job's lock, as start does
        job = await conn.fetchrow(q.LOCK_JOB, job_id, org_id)
        if job is None:
            raise job_not_found()
        previous_state: str = job["state"]
        # A running job's fetcher is still at work; a draft, or a finished job that never read
        # every page (fetch failed, or forced done), needs the fetcher again.
        needs_fetch = job["fetch_done_at"] is None and (
            previous_state in FINAL_STATES or previous_state == "draft"
        )
        if needs_fetch:
            busy = await conn.fetchval(
                q.SELECT_OTHER_FETCHING_JOB, org_id, job["connection_id"], job_id
            )
            if busy is not None:
                raise connection_busy(busy)
        lines = await conn.fetch(q.REQUEUE_FAILED_LINES, job_id, org_id)
        # A job failed as stalled (its services were down) failed no customer itself, and may
        # still have customers on their way: open again, the tracker finishes it once every
        # customer is settled (at its next sweep if they already are).
        before = await get_status(conn, org_id=org_id, job_id=job_id)
        reopen = (
            before is not None
            and previous_state in FINAL_STATES
            and (before.pending > 0 or (previous_state == "failed" and before.failed == 0))
        )
        new_state = previous_state
        unrecoverable = 0
        if lines or needs_fetch or reopen:
            if previous_state in FINAL_STATES:
                limit = deps.settings.max_concurrent_syncs_per_org
                if await conn.fetchval(q.COUNT_OPEN_JOBS, org_id) >= limit:
                    raise too_many_syncs(limit)  # rolls back the lines re-queued above
            unrecoverable = await conn.fetchval(q.COUNT_UNRECOVERABLE_LINES, job_id, org_id)
            if needs_fetch:
                new_state = "draft"  # becomes queued once sync.requested is confirmed
            elif previous_state in FINAL_STATES:
                new_state = "processing"
            await conn.execute(q.RESUME_JOB, job_id, new_state, org_id)
        # Audited even when there was nothing to do: it is an operator's action.
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="job.retried",
            details={
                "requeued": len(lines),
                "unrecoverable": unrecoverable,
                "fetch_resumed": needs_fetch,
                "previous_state": previous_state,
                "state": new_state,
                **caller.actor(),
            },
        )

    if lines:
        customers = [row["payload"] for row in lines]
        await _publish(
            deps,
            _batches(job_id, org_id, job["connection_id"], customers, job["batch_size"]),
        )
    if needs_fetch:
        await _hand_to_fetcher(
            deps,
            job_id=job_id,
            org_id=org_id,
            connection_id=job["connection_id"],
            actor=caller.actor(),
            reason="retry",
        )
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return RetryResult(
        **status.model_dump(),
        requeued=len(lines),
        fetch_resumed=needs_fetch,
        job_reopened=previous_state in FINAL_STATES and new_state not in FINAL_STATES,
    )


async def force_done(request: ForceDoneRequest, caller: Caller, deps: Deps) -> StatusResult:
    """Close a job by hand (for instance a store that will never answer again)."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB, job_id, org_id)
        if job is None:
            raise job_not_found()
        if job["state"] in FINAL_STATES:
            raise ApiError(409, "job_final", f"the job is already {job['state']}")
        await conn.execute(q.FORCE_DONE, job_id, f"forced done: {request.reason}", org_id)
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="job.forced_done",
            level="warning",
            details={
                "reason": request.reason,
                "previous_state": job["state"],
                "state": "done",
                **caller.actor(),
            },
        )
    return await read_status(deps, org_id=org_id, job_id=job_id)
