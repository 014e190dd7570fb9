"""A job's status as clients see it: the ``status`` action and every SSE ``progress`` event."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from shared.db import OrgScope
from shared.lifecycle import FINAL_JOB_STATES, JobStateField
from shared.preview import PreviewResult

SELECT_JOB_STATUS = """
SELECT id, org_id, connection_id, state, total, done_count, failed_count, store_total,
       pages_total, process_count, fetch_done_at, created_at, started_at, finished_at,
       updated_at, last_error, deleted_count, restored_count, kind, preview_result
FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2
"""


class JobStatus(BaseModel):
    job_id: UUID
    connection_id: UUID
    state: JobStateField
    total: int
    done: int
    failed: int
    pending: int
    percent: float
    # Customers of the connection this job's crawl found gone from the store and marked deleted
    # (set when the job finishes, only after a crawl proven complete), and deleted customers it
    # saw again and restored (as its batches are written).
    deleted: int
    restored: int
    store_total: int | None
    pages_total: int | None
    process_count: int
    fetch_complete: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    last_error: str | None
    # A sync, or a preview read by the fetcher (migration 0015), whose answer is ``preview``
    # once its store has been read.
    kind: Literal["sync", "preview"] = "sync"
    preview: PreviewResult | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_JOB_STATES


def status_from_row(row: asyncpg.Record) -> JobStatus:
    # Until every page is read, the store's own total is the best denominator we have.
    total = row["total"] if row["fetch_done_at"] else max(row["total"], row["store_total"] or 0)
    settled = row["done_count"] + row["failed_count"]
    percent = (
        100.0
        if total == 0 and row["fetch_done_at"]
        else (round(100.0 * settled / total, 2) if total else 0.0)
    )
    return JobStatus(
        job_id=row["id"],
        connection_id=row["connection_id"],
        state=row["state"],
        total=total,
        done=row["done_count"],
        failed=row["failed_count"],
        pending=max(total - settled, 0),
        percent=percent,
        deleted=row["deleted_count"],
        restored=row["restored_count"],
        store_total=row["store_total"],
        pages_total=row["pages_total"],
        process_count=row["process_count"],
        fetch_complete=row["fetch_done_at"] is not None,
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        kind=row["kind"],
        preview=row["preview_result"],
    )


async def get_status(
    conn: asyncpg.Connection | OrgScope, *, org_id: UUID, job_id: UUID
) -> JobStatus | None:
    """None when the job does not exist *or* belongs to another org: callers answer 404 for both."""
    row = await conn.fetchrow(SELECT_JOB_STATUS, job_id, org_id)
    return status_from_row(row) if row else None
