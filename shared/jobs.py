"""A job's status as clients see it: the ``status`` action and every SSE ``progress`` event."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from shared.conflicts import DEFAULT_POLICY, ConflictPolicyField
from shared.db import OrgScope
from shared.lifecycle import FINAL_JOB_STATES, JobStateField, LineState, sql_state

SELECT_JOB_STATUS = f"""
SELECT id, org_id, connection_id, state, total, done_count, failed_count, store_total,
       pages_total, process_count, fetch_done_at, created_at, started_at, finished_at,
       updated_at, last_error,
       (SELECT count(*)::int FROM woo_customer_sync_queue_line l
        WHERE l.job_id = j.id AND l.org_id = j.org_id
          AND l.state = {sql_state(LineState.CONFLICT)}) AS conflicts,
       COALESCE(j.conflict_policy,
                (SELECT c.conflict_policy FROM woo_connections c
                 WHERE c.id = j.connection_id AND c.org_id = j.org_id)) AS conflict_policy
FROM woo_customer_sync_queue j
WHERE id = $1 AND org_id = $2
"""


class JobStatus(BaseModel):
    job_id: UUID
    connection_id: UUID
    state: JobStateField
    total: int
    done: int
    failed: int
    conflicts: int  # lines waiting as conflicts for a person (manual policy); keep the job open
    pending: int  # neither settled nor waiting as conflicts: on their way
    percent: float
    store_total: int | None
    pages_total: int | None
    process_count: int
    fetch_complete: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    last_error: str | None
    conflict_policy: ConflictPolicyField  # the job's own, else its connection's

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_JOB_STATES


def status_from_row(row: asyncpg.Record) -> JobStatus:
    # Until every page is read, the store's own total is the best denominator we have.
    total = row["total"] if row["fetch_done_at"] else max(row["total"], row["store_total"] or 0)
    settled = row["done_count"] + row["failed_count"]
    conflicts = row["conflicts"]
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
        conflicts=conflicts,
        pending=max(total - settled - conflicts, 0),
        percent=percent,
        store_total=row["store_total"],
        pages_total=row["pages_total"],
        process_count=row["process_count"],
        fetch_complete=row["fetch_done_at"] is not None,
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        conflict_policy=row["conflict_policy"] or DEFAULT_POLICY,
    )


async def get_status(
    conn: asyncpg.Connection | OrgScope, *, org_id: UUID, job_id: UUID
) -> JobStatus | None:
    """None when the job does not exist *or* belongs to another org: callers answer 404 for both."""
    row = await conn.fetchrow(SELECT_JOB_STATUS, job_id, org_id)
    return status_from_row(row) if row else None
