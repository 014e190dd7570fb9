"""A job's status as clients see it: the ``status`` action and every SSE ``progress`` event.

A status is one primary-key read of the job row, whatever the job's size and however many
clients ask: every count in it is written to the row by the tracker's recompute, which already
counts the lines on its own timer (``services.tracker.queries``). That covers the conflicts
(``conflict_count``) and the rate (``rate_per_s``, migration 0022): lines settled (done or failed)
per second over the last ``RATE_WINDOW_S`` seconds, or the job's age if shorter, which the
tracker measures from the settled counts it sees at each recompute
(``services.tracker.rates``). A recent window follows a job that speeds up or stalls, which an
average since the start would not; keeping it in the row keeps the status a read (no write per
request) and makes every api and tracker instance agree. What a status shows is as fresh as the
tracker's last recompute (``tracker_sweep_interval_s``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
from pydantic import BaseModel, Field

from shared.conflicts import DEFAULT_POLICY, ConflictPolicyField
from shared.db import OrgScope
from shared.lifecycle import FINAL_JOB_STATES, JobStateField
from shared.preview import PreviewResult

RATE_WINDOW_S = 30.0
# Below this much of a window a rate says more about timing noise than about the job.
MIN_RATE_SPAN_S = 1.0

# $1 job id, $2 org id. One row by its primary key: no line is read (the connection's policy
# is read by its primary key only for a job that has none of its own; COALESCE evaluates it
# only then).
SELECT_JOB_STATUS = """
SELECT j.id, j.org_id, j.connection_id, j.state, j.total, j.done_count, j.failed_count,
       j.store_total, j.pages_total, j.process_count, j.fetch_done_at, j.created_at,
       j.started_at, j.finished_at, j.updated_at, j.last_error, j.kind, j.preview_result,
       j.parent_id, j.conflict_count AS conflicts, j.rate_per_s,
       COALESCE(j.conflict_policy,
                (SELECT c.conflict_policy FROM woo_connections c
                 WHERE c.id = j.connection_id AND c.org_id = j.org_id)) AS conflict_policy,
       j.deleted_count, j.restored_count
FROM woo_customer_sync_queue j
WHERE j.id = $1 AND j.org_id = $2
"""

# The same, for the children of a parent job ($1 the parent's id), oldest first.
SELECT_CHILD_STATUSES = (
    SELECT_JOB_STATUS.replace("WHERE j.id = $1 AND", "WHERE j.parent_id = $1 AND")
    + "ORDER BY j.created_at, j.id\n"
)


class ChildStatus(BaseModel):
    """One child of a parent job (kind ``orchestration``): its store and where it stands."""

    job_id: UUID
    connection_id: UUID
    state: JobStateField
    total: int
    done: int
    failed: int
    conflicts: int
    pending: int
    percent: float
    fetch_complete: bool
    last_error: str | None


class JobStatus(BaseModel):
    job_id: UUID
    # None for a parent job (kind ``orchestration``), which reads no store itself.
    connection_id: UUID | None
    state: JobStateField
    total: int
    done: int
    failed: int
    conflicts: int  # lines waiting as conflicts for a person (manual policy); keep the job open
    pending: int  # neither settled nor waiting as conflicts: on their way
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
    kind: Literal["sync", "preview", "orchestration"] = "sync"
    preview: PreviewResult | None = None
    parent_id: UUID | None = Field(None, description="The parent job of an orchestration child.")
    children: list[ChildStatus] | None = Field(
        None,
        description="A parent job's children, one per store; its counts are their sums. "
        "Null for any other job.",
    )
    rate_per_s: float | None = Field(
        None,
        description="Customers settled (done or failed) per second over the last "
        f"{RATE_WINDOW_S:.0f} s (or the job's age, if shorter); null when final or unknown.",
    )
    eta_s: int | None = Field(
        None,
        description="Seconds until every expected customer is settled at rate_per_s; null when "
        "final, when the total is not known yet, or while nothing settles.",
    )
    conflict_policy: ConflictPolicyField  # the job's own, else its connection's

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_JOB_STATES


def rate_per_s(
    recent_settled: int | None, age_s: float | None, window_s: float = RATE_WINDOW_S
) -> float | None:
    """Lines settled per second over the recent window, clipped to the job's age.

    None when there is nothing to measure: no count (a final job), or a job younger than
    ``MIN_RATE_SPAN_S`` that settled some, whose first second would make its rate look huge.
    Nothing settled is 0.0 at any age.
    """
    if recent_settled is None or age_s is None:
        return None
    if recent_settled == 0:  # nothing settled: zero at any age (and no event just for aging)
        return 0.0
    span = min(window_s, age_s)
    if span < MIN_RATE_SPAN_S:
        return None
    return round(recent_settled / span, 2)


def eta_s(remaining: int, rate: float | None, *, total_known: bool) -> int | None:
    """Seconds left at ``rate``: None while the total is unknown or nothing is moving."""
    if not total_known or rate is None or rate <= 0:
        return None
    return max(round(remaining / rate), 0)


def status_from_row(row: asyncpg.Record) -> JobStatus:
    """The status of a ``SELECT_JOB_STATUS`` row; rate and ETA are null once the job is final."""
    # Until every page is read, the store's own total is the best denominator we have.
    total = row["total"] if row["fetch_done_at"] else max(row["total"], row["store_total"] or 0)
    settled = row["done_count"] + row["failed_count"]
    conflicts = row["conflicts"]
    percent = (
        100.0
        if total == 0 and row["fetch_done_at"]
        else (round(100.0 * settled / total, 2) if total else 0.0)
    )
    pending = max(total - settled - conflicts, 0)
    final = row["state"] in FINAL_JOB_STATES
    rate = None if final else row["rate_per_s"]
    total_known = row["fetch_done_at"] is not None or row["store_total"] is not None
    return JobStatus(
        job_id=row["id"],
        connection_id=row["connection_id"],
        state=row["state"],
        total=total,
        done=row["done_count"],
        failed=row["failed_count"],
        conflicts=conflicts,
        pending=pending,
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
        rate_per_s=rate,
        eta_s=None if final else eta_s(pending, rate, total_known=total_known),
        conflict_policy=row["conflict_policy"] or DEFAULT_POLICY,
        parent_id=row.get("parent_id"),  # absent from rows built by hand
    )


def parent_status(parent: JobStatus, children: list[JobStatus]) -> JobStatus:
    """A parent job's status: its own state and times, its children's counts summed.

    The rate is the children's rates summed (each measured as for a job), the ETA that rate
    over what is left; both null when the parent is final.
    """
    total = sum(c.total for c in children)
    settled = sum(c.done + c.failed for c in children)
    conflicts = sum(c.conflicts for c in children)
    fetched = bool(children) and all(c.fetch_complete for c in children)
    rates = [c.rate_per_s for c in children if c.rate_per_s is not None]
    rate = None if parent.is_final or not rates else round(sum(rates), 2)
    pending = max(total - settled - conflicts, 0)
    total_known = all(c.fetch_complete or c.store_total is not None for c in children)
    percent = (
        100.0 if total == 0 and fetched else (round(100.0 * settled / total, 2) if total else 0.0)
    )
    store_totals = [c.store_total for c in children if c.store_total is not None]
    summed = dict(
        total=total,
        done=sum(c.done for c in children),
        failed=sum(c.failed for c in children),
        conflicts=conflicts,
        deleted=sum(c.deleted for c in children),
        restored=sum(c.restored for c in children),
        pending=pending,
        percent=percent,
        store_total=sum(store_totals) if store_totals else None,
        pages_total=None,
        fetch_complete=fetched,
        rate_per_s=rate,
        eta_s=None if parent.is_final else eta_s(pending, rate, total_known=total_known),
        children=[
            ChildStatus.model_validate(c.model_dump(include=set(ChildStatus.model_fields)))
            for c in children
        ],
    )
    return parent.model_copy(update=summed)


async def get_status(
    conn: asyncpg.Connection | OrgScope,
    *,
    org_id: UUID,
    job_id: UUID,
) -> JobStatus | None:
    """None when the job does not exist *or* belongs to another org: callers answer 404 for both.

    A parent job's status carries its children and their summed counts (:func:`parent_status`).
    """
    row = await conn.fetchrow(SELECT_JOB_STATUS, job_id, org_id)
    if row is None:
        return None
    status = status_from_row(row)
    if status.kind != "orchestration":
        return status
    rows = await conn.fetch(SELECT_CHILD_STATUSES, job_id, org_id)
    return parent_status(status, [status_from_row(r) for r in rows])
