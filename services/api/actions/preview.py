"""The preview: what a sync of a store would change in MantisNXT, worked out without changing it.

The store is given as ``start`` takes it (URL and key) or as a stored connection of the org. It
is tested as a start tests it (its address, its answer, its key; ``services.api.store_probe``),
then read whole as the fetcher reads it (``services.api.preview_read``), and what it holds is
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
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import SecretStr

from services.api import queries as q
from services.api.actions.common import Answer
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.preview_read import StoreRead, StoreTooLarge, estimate_s, read_store
from services.api.schemas import (
    PreviewCounts,
    PreviewEstimate,
    PreviewPages,
    PreviewRequest,
    PreviewResult,
    PreviewSample,
    PreviewSamples,
    StoreConfigIn,
)
from services.api.store_probe import (
    check_store,
    store_checks_busy,
    store_failure,
    too_many_store_checks,
)
from shared import activity
from shared.auth import Caller
from shared.crypto import UndecryptableSecret
from shared.db import SET_ORG, for_org
from shared.preview import CATEGORIES, Comparison, add_deleted, compare
from shared.urlsafety import StoreUrlError
from shared.woocommerce import MAX_PER_PAGE, StoreError

SUMMARY = "What a sync of the store would change, read and compared without writing anything."
CONFLICT_NOTE = (
    "conflict: customers whose store version is older than the one stored (by date_modified); "
    "a sync keeps the stored version. Other kinds of conflict are not detected yet."
)
INCOMPLETE_NOTE = (
    "delete is null: the read was not proven complete (see problems), so a customer missing "
    "from it may only have been missed."
)


def connection_not_found() -> ApiError:
    # The same answer for a missing connection and for another org's: ids are not probeable.
    return ApiError(404, "connection_not_found", "no such store connection")


def too_large(total: int, limit: int) -> ApiError:
    return ApiError(
        422,
        "preview_too_large",
        f"the store has {total:,} customers, more than a preview reads "
        f"({limit:,}, WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS)",
    )


async def answer(request: PreviewRequest, caller: Caller, deps: Deps) -> Answer:
    org_id = caller.org_id
    config, connection_id = await _store_of(request, caller, deps)
    store_total = await check_store(deps, config, org_id)
    limit = deps.settings.preview_inline_max_customers
    if store_total > limit:
        raise too_large(store_total, limit)
    concurrency = request.options.concurrency or deps.settings.default_concurrency
    read = await _read(deps, config, org_id, concurrency)
    comparison = await _compare(deps, read, org_id, connection_id, request.options.sample_size)
    result = _result(config, connection_id, read, comparison, concurrency)
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
            f"{group.exceptions[0]}: more than a preview reads "
            f"({settings.preview_inline_max_customers:,}, WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS)",
        ) from None
    except* (StoreError, StoreUrlError) as group:
        raise store_failure(group.exceptions[0], config) from None  # type: ignore[arg-type]
    finally:
        deps.store_checks.release(org_id)


async def _compare(
    deps: Deps, read: StoreRead, org_id: UUID, connection_id: UUID | None, sample_size: int
) -> Comparison:
    """The comparison, from one read-only snapshot of the connection's customers."""
    ids = sorted(read.customers)
    stored: dict[int, Any] = {}
    gone: tuple[int, list[asyncpg.Record]] = (0, [])
    if connection_id is not None:
        async with (
            deps.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await conn.execute(SET_ORG, str(org_id))
            rows = await conn.fetch(q.SELECT_PREVIEW_ROWS, org_id, connection_id, ids)
            stored = {row["woo_id"]: dict(row) for row in rows}
            if read.complete:
                gone = (
                    await conn.fetchval(q.COUNT_PREVIEW_GONE, org_id, connection_id, ids),
                    await conn.fetch(
                        q.SELECT_PREVIEW_GONE, org_id, connection_id, ids, sample_size
                    ),
                )
    comparison = compare(
        read.customers.values(),
        stored,
        org_id=org_id,
        connection_id=connection_id,
        sample_size=sample_size,
        rejected=[read.rejected[key] for key in sorted(read.rejected)],
    )
    add_deleted(comparison, gone[0], [dict(row) for row in gone[1]])
    return comparison


def _result(
    config: StoreConfigIn,
    connection_id: UUID | None,
    read: StoreRead,
    comparison: Comparison,
    concurrency: int,
) -> PreviewResult:
    latency_s, duration_s = estimate_s(read, concurrency)
    counts: dict[str, int | None] = dict(comparison.counts)
    notes = [CONFLICT_NOTE]
    if not read.complete:
        counts["delete"] = None
        notes.append(INCOMPLETE_NOTE)
    samples = {
        category: [
            PreviewSample(woo_id=s.woo_id, diff=s.diff, reason=s.reason)  # type: ignore[arg-type]
            for s in comparison.samples[category]
        ]
        for category in CATEGORIES
    }
    return PreviewResult(
        store_url=config.url,
        connection_id=connection_id,
        store_total=read.total,
        customers_read=len(read.customers) + len(read.rejected),
        complete=read.complete,
        problems=read.problems,
        counts=PreviewCounts(**counts),  # type: ignore[arg-type]
        samples=PreviewSamples(**samples),
        pages=PreviewPages(per_page=read.per_page, total=read.pages, requests=read.requests),
        estimate=PreviewEstimate(
            page_latency_ms=round(latency_s * 1000, 3),
            concurrency=concurrency,
            duration_s=round(duration_s, 3),
        ),
        notes=notes,
    )
