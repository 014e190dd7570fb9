"""The preview: what a sync of a store would change in MantisNXT, worked out without changing it.

The store is given as ``start`` takes it (URL and key) or as a stored connection of the org. It
is tested as a start tests it (its address, its answer, its key; ``services.api.store_probe``),
then read whole as the fetcher reads it (``services.fetcher.preview_read``), and what it holds is
compared with the connection's stored customers (``shared.preview``) in one read-only snapshot.

Nothing is written but one audit row (``preview.run``) at the end: no connection (a store the
org has no connection to is compared with no rows, and stays unknown), no job, no line, no
page, no customer; a preview that fails (bad input, a store that refuses) writes nothing at all.

Counts of deletions need the whole store, proven read (``complete``); otherwise ``delete`` is
null. ``conflict`` counts the customers whose store version is older than the stored one (a sync
keeps the stored version, see ``shared.preview``). A store of more than
``WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS`` customers is refused with 422 ``preview_too_large``.
"""

from __future__ import annotations

import asyncio
import math
from uuid import UUID, uuid4

from pydantic import SecretStr

from services.api import queries as q
from services.api.actions.common import Answer, hand_to_fetcher, too_many_syncs
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.schemas import PreviewJobAccepted, PreviewRequest, StoreConfigIn
from services.api.store_probe import (
    check_store,
    store_checks_busy,
    store_failure,
    too_many_store_checks,
)
from services.api.urls import progress_url, status_url
from services.fetcher.preview import compare_store, preview_result
from services.fetcher.preview_read import StoreRead, StoreTooLarge, read_store
from shared import activity
from shared.auth import Caller
from shared.crypto import UndecryptableSecret
from shared.db import for_org
from shared.urlsafety import StoreUrlError
from shared.woocommerce import MAX_PER_PAGE, StoreError

SUMMARY = "What a sync of the store would change, read and compared without writing anything."


def connection_not_found() -> ApiError:
    # The same answer for a missing connection and for another org's: ids are not probeable.
    return ApiError(404, "connection_not_found", "no such store connection")


def too_large(total: int, limit: int, why: str) -> ApiError:
    return ApiError(422, "preview_too_large", f"the store has {total:,} customers, {why}")


async def _queue_preview_job(
    request: PreviewRequest,
    caller: Caller,
    deps: Deps,
    config: StoreConfigIn,
    connection_id: UUID | None,
    store_total: int,
    concurrency: int,
) -> Answer:
    """A store too large to read while the client waits: a job of kind ``preview`` that the
    fetcher reads with the connection's stored key. It needs the org's connection to the store
    (a preview stores no credentials); it holds the connection's reading slot like a sync."""
    settings, org_id = deps.settings, caller.org_id
    if connection_id is None:
        raise too_large(
            store_total,
            settings.preview_inline_max_customers,
            f"more than a preview reads while the client waits "
            f"({settings.preview_inline_max_customers:,}, "
            "WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS); a longer preview runs as a job of the "
            "organisation's connection to the store, and it has none yet",
        )
    if store_total > settings.preview_job_max_customers:
        raise too_large(
            store_total,
            settings.preview_job_max_customers,
            f"more than a preview job reads ({settings.preview_job_max_customers:,}, "
            "WOOSYNC_PREVIEW_JOB_MAX_CUSTOMERS)",
        )
    job_id = uuid4()
    async with for_org(deps.pool, org_id).transaction() as conn:
        await conn.execute(q.LOCK_ORG_SYNCS, org_id)
        running = await conn.fetchrow(q.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id)
        if running is not None:
            raise ApiError(
                409,
                "connection_busy",
                f"job {running['id']} of this store connection is open; preview when it has "
                "finished",
            )
        limit = settings.max_concurrent_syncs_per_org
        if await conn.fetchval(q.COUNT_OPEN_JOBS, org_id) >= limit:
            raise too_many_syncs(limit)
        inserted = await conn.fetchval(
            q.INSERT_PREVIEW_JOB,
            job_id,
            org_id,
            connection_id,
            "preview",
            MAX_PER_PAGE,
            concurrency,
            store_total,
            request.options.sample_size,
        )
        if inserted is None:  # the lock makes this unreachable; never make a second job
            raise RuntimeError("a preview job insert conflicted while holding the org's lock")
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="job.created",
            details={
                "kind": "preview",
                "connection_id": str(connection_id),
                "store_url": config.url,
                "store_total": store_total,
                "concurrency": concurrency,
                "sample_size": request.options.sample_size,
                **caller.actor(),
            },
        )
    state = await hand_to_fetcher(
        deps, job_id=job_id, org_id=org_id, connection_id=connection_id, actor=caller.actor()
    )
    return Answer(
        PreviewJobAccepted(
            job_id=job_id,
            kind="preview",
            state=state,  # type: ignore[arg-type]  # a job state
            status_url=status_url(deps, job_id),
            progress_url=progress_url(deps, job_id, org_id),
        ),
        202,
    )


async def answer(request: PreviewRequest, caller: Caller, deps: Deps) -> Answer:
    org_id = caller.org_id
    config, connection_id = await _store_of(request, caller, deps)
    store_total = await check_store(deps, config, org_id)
    concurrency = request.options.concurrency or deps.settings.default_concurrency
    if store_total > deps.settings.preview_inline_max_customers:
        return await _queue_preview_job(
            request, caller, deps, config, connection_id, store_total, concurrency
        )
    read = await _read(deps, config, org_id, concurrency)
    comparison = await compare_store(
        deps.pool,
        read,
        org_id=org_id,
        connection_id=connection_id,
        sample_size=request.options.sample_size,
    )
    result = preview_result(config.url, connection_id, read, comparison, concurrency)
    await activity.record(
        for_org(deps.pool, org_id),
        org_id=org_id,
        job_id=None,
        event="preview.run",
        details={
            "store_url": config.url,
            "connection_id": str(connection_id) if connection_id else None,
            "counts": result.counts.model_dump(),
            "complete": result.complete,
            "requests": read.requests,
            **caller.actor(),
        },
    )
    return Answer(result, 200)


async def _store_of(
    request: PreviewRequest, caller: Caller, deps: Deps
) -> tuple[StoreConfigIn, UUID | None]:
    """The store to read, and the org's connection to it (None: the org has none)."""
    scope = for_org(deps.pool, caller.org_id)
    if request.config is not None:
        found = await scope.fetchval(
            q.SELECT_CONNECTION_ID_OF_STORE, caller.org_id, request.config.url
        )
        return request.config, found
    row = await scope.fetchrow(
        q.SELECT_CONNECTION_FOR_PREVIEW, caller.org_id, request.connection_id
    )
    if row is None:
        raise connection_not_found()
    try:
        secret = deps.secrets.decrypt(row["consumer_secret_enc"])
    except UndecryptableSecret:
        raise ApiError(
            409,
            "connection_secret_unreadable",
            "the connection's stored secret cannot be decrypted with the current keys; "
            "preview (or start) with the store's URL and key",
        ) from None
    config = StoreConfigIn.model_construct(
        url=row["store_url"],
        consumer_key=row["consumer_key"],
        consumer_secret=SecretStr(secret),
        auth=row["auth_mode"],
        verify_tls=row["verify_tls"],
    )
    return config, row["id"]


async def _read(deps: Deps, config: StoreConfigIn, org_id: UUID, concurrency: int) -> StoreRead:
    """The whole store, within ``preview_deadline_s``, holding one of the org's store-test
    slots (``services.api.store_probe.StoreChecks``) while it reads."""
    settings = deps.settings
    retry_after_s = max(1, math.ceil(settings.store_check_deadline_s))
    taken = deps.store_checks.take(org_id)
    if taken == "org_busy":
        raise too_many_store_checks(deps.store_checks.per_org, retry_after_s)
    if taken == "busy":
        raise store_checks_busy(deps.store_checks.limit, retry_after_s)
    try:
        async with asyncio.timeout(settings.preview_deadline_s):
            async with deps.store_reader(config, concurrency) as client:
                return await read_store(
                    client,
                    per_page=MAX_PER_PAGE,
                    concurrency=concurrency,
                    max_customers=settings.preview_inline_max_customers,
                )
    except* TimeoutError:
        raise ApiError(
            422,
            "store_unreachable",
            f"the store did not answer the preview's reads within "
            f"{settings.preview_deadline_s:g}s (WOOSYNC_PREVIEW_DEADLINE_S)",
        ) from None
    except* StoreTooLarge as group:
        raise ApiError(
            422,
            "preview_too_large",
            f"{group.exceptions[0]}: more than a preview reads while the client waits "
            f"({settings.preview_inline_max_customers:,}, WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS); "
            "preview again to have it read by a preview job",
        ) from None
    except* (StoreError, StoreUrlError) as group:
        raise store_failure(group.exceptions[0], config) from None  # type: ignore[arg-type]
    finally:
        deps.store_checks.release(org_id)
