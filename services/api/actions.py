"""The api's actions: plain async functions of typed requests, the caller and explicit deps.

Each returns a result model or raises :class:`ApiError`. Database writes of one action happen in
one transaction; messages are published only after that commit, so a consumer never sees a job
or a line that is not yet visible. A publish that fails leaves the job in a state from which
repeating the same request publishes again (a ``draft`` job, or lines pending with a payload).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
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
from shared.jobs import FINAL_STATES, JobStatus, get_status
from shared.logs import redact
from shared.messages import CustomerBatch, Message, SyncRequested
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


def job_not_found() -> ApiError:
    # The same answer for a missing job and for another org's job: ids are not probeable.
    return ApiError(404, "job_not_found", "no such job")


def broker_unavailable() -> ApiError:
    return ApiError(503, "broker_unavailable", "the message broker is unavailable; try again")


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


async def check_store(deps: Deps, config: StoreConfigIn) -> int:
    """The store's customer count, after proving that the store answers and accepts the key."""
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


async def _hand_to_fetcher(
    deps: Deps,
    *,
    job_id: UUID,
    org_id: UUID,
    connection_id: UUID,
    reason: Literal["start", "retry"] = "start",
) -> str:
    """Publish ``sync.requested`` for a draft job, then mark it queued; its state afterwards."""
    message = SyncRequested(
        job_id=job_id, org_id=org_id, connection_id=connection_id, reason=reason
    )
    try:
        await _publish(deps, [message])
    except ApiError:
        await activity.record(
            deps.pool,
            org_id=org_id,
            job_id=job_id,
            event="job.publish_failed",
            level="warning",
            details={"message": "sync.requested", "reason": reason},
        )
        raise
    state: str = await deps.pool.fetchval(q.MARK_QUEUED, job_id)
    return state


def _start_result(deps: Deps, job_id: UUID, org_id: UUID, state: str) -> StartResult:
    return StartResult(
        job_id=job_id,
        state=state,  # type: ignore[arg-type]  # a job state read from the CHECKed column
        status_url=status_url(deps, job_id),
        progress_url=progress_url(deps, job_id, org_id),
    )


async def _existing_job(deps: Deps, row: asyncpg.Record, org_id: UUID) -> StartResult:
    """A repeated idempotency key: the same job; published again only if it never was."""
    state = row["state"]
    if state == "draft":
        state = await _hand_to_fetcher(
            deps, job_id=row["id"], org_id=org_id, connection_id=row["connection_id"]
        )
    return _start_result(deps, row["id"], org_id, state)


async def start_sync(request: StartRequest, caller: Caller, deps: Deps) -> StartResult:
    """Verify the store, store the connection and a new job, and hand the job to the fetcher."""
    org_id = caller.org_id
    options = request.options
    if options.idempotency_key is not None:
        # A replay answers from the database alone, even if the store is down by now.
        existing = await deps.pool.fetchrow(
            q.SELECT_JOB_BY_IDEMPOTENCY_KEY, org_id, options.idempotency_key
        )
        if existing is not None:
            return await _existing_job(deps, existing, org_id)

    config = request.config
    store_total = await check_store(deps, config)

    batch_size = options.batch_size or deps.settings.default_batch_size
    concurrency = options.concurrency or deps.settings.default_concurrency
    new_job_id = uuid4()
    async with deps.pool.acquire() as conn, conn.transaction():
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
        if inserted is None:  # a concurrent request with the same key won the race
            existing = await conn.fetchrow(
                q.SELECT_JOB_BY_IDEMPOTENCY_KEY, org_id, options.idempotency_key
            )
        else:
            existing = None
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
                    "api_key_id": str(caller.key_id),
                },
            )
    if existing is not None:
        return await _existing_job(deps, existing, org_id)

    state = await _hand_to_fetcher(
        deps, job_id=new_job_id, org_id=org_id, connection_id=connection_id
    )
    return _start_result(deps, new_job_id, org_id, state)


async def job_status(request: StatusRequest, caller: Caller, deps: Deps) -> StatusResult:
    return await read_status(deps, org_id=caller.org_id, job_id=request.job_id)


async def read_status(deps: Deps, *, org_id: UUID, job_id: UUID) -> StatusResult:
    status = await get_status(deps.pool, org_id=org_id, job_id=job_id)
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
    running) is not an error: the answer is the job's status with ``requeued == 0``.
    """
    org_id, job_id = caller.org_id, request.job_id
    async with deps.pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(q.LOCK_JOB, job_id, org_id)
        if job is None:
            raise job_not_found()
        previous_state: str = job["state"]
        # A running job's fetcher is still at work; a draft, or a finished job that never read
        # every page (fetch failed, or forced done), needs the fetcher again.
        needs_fetch = job["fetch_done_at"] is None and (
            previous_state in FINAL_STATES or previous_state == "draft"
        )
        lines = await conn.fetch(q.REQUEUE_FAILED_LINES, job_id)
        # A finished job can still have customers on their way (one failed as stalled while
        # its syncers were down): open again, the tracker finishes it once they are settled.
        before = await get_status(conn, org_id=org_id, job_id=job_id)
        reopen = previous_state in FINAL_STATES and before is not None and before.pending > 0
        if lines or needs_fetch or reopen:
            unrecoverable = await conn.fetchval(q.COUNT_UNRECOVERABLE_LINES, job_id)
            if needs_fetch:
                new_state = "draft"  # becomes queued once sync.requested is confirmed
            elif previous_state in FINAL_STATES:
                new_state = "processing"
            else:
                new_state = previous_state
            await conn.execute(q.RESUME_JOB, job_id, new_state)
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
                    "api_key_id": str(caller.key_id),
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
            reason="retry",
        )
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return RetryResult(**status.model_dump(), requeued=len(lines), fetch_resumed=needs_fetch)


async def force_done(request: ForceDoneRequest, caller: Caller, deps: Deps) -> StatusResult:
    """Close a job by hand (for instance a store that will never answer again)."""
    org_id, job_id = caller.org_id, request.job_id
    async with deps.pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(q.LOCK_JOB, job_id, org_id)
        if job is None:
            raise job_not_found()
        if job["state"] in FINAL_STATES:
            raise ApiError(409, "job_final", f"the job is already {job['state']}")
        await conn.execute(q.FORCE_DONE, job_id, f"forced done: {request.reason}")
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="job.forced_done",
            level="warning",
            details={
                "reason": request.reason,
                "previous_state": job["state"],
                "api_key_id": str(caller.key_id),
            },
        )
    return await read_status(deps, org_id=org_id, job_id=job_id)
