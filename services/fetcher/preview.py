"""A preview's comparison with the stored customers and its answer, for the api (a store small
enough to read while the client waits) and for the fetcher (a ``preview`` job).

The store is read by :mod:`services.fetcher.preview_read`; the rows it is compared with are read
in one ``REPEATABLE READ READ ONLY`` transaction, so PostgreSQL itself refuses any write there;
the decisions are :func:`shared.preview.compare`'s.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from services.fetcher import queries as q
from services.fetcher.preview_read import StoreRead, estimate_s
from shared.db import SET_ORG
from shared.preview import (
    CATEGORIES,
    Comparison,
    PreviewCounts,
    PreviewEstimate,
    PreviewPages,
    PreviewResult,
    PreviewSample,
    PreviewSamples,
    add_deleted,
    compare,
)

CONFLICT_NOTE = (
    "conflict: customers whose store version is older than the one stored (by date_modified); "
    "a sync keeps the stored version. Other kinds of conflict are not detected yet."
)
INCOMPLETE_NOTE = (
    "delete is null: the read was not proven complete (see problems), so a customer missing "
    "from it may only have been missed."
)


async def compare_store(
    pool: asyncpg.Pool,
    read: StoreRead,
    *,
    org_id: UUID,
    connection_id: UUID | None,
    sample_size: int,
) -> Comparison:
    """The comparison of what was read with one read-only snapshot of the connection's rows
    (none when the org has no connection to the store)."""
    ids = sorted(read.customers)
    stored: dict[int, Any] = {}
    gone: tuple[int, list[asyncpg.Record]] = (0, [])
    if connection_id is not None:
        async with (
            pool.acquire() as conn,
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


def preview_result(
    store_url: str,
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
        store_url=store_url,
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
