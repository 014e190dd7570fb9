"""The ``cancel`` action: end an open job as ``cancelled``.

Its open lines are settled as ``cancelled`` and the batches held while it was paused dropped;
the syncer writes no batch of it afterwards (its row lock waits for one being written). Its
store's connection is free for a new sync only once its crawl has really stopped: at once when
no crawl can be running (it never began, every page was read, a pause stopped it), else when the
fetcher's crawl sees the state and stops (within ``WOOSYNC_CRAWL_CHECK_INTERVAL_S`` or a page),
which it records (``crawl_stopped_at``; the status's ``crawl_stopped``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from services.api import queries as q
from services.api.actions.common import (
    Answer,
    for_children,
    job_not_found,
    not_allowed,
    read_status,
)
from services.api.deps import Deps
from services.api.schemas import CancelRequest, CancelResult
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.lifecycle import JOB_ACTIONS, JobState

CANCELLABLE = JOB_ACTIONS["cancel"]

SUMMARY = "Cancel an open job: open lines cancelled; its store is free once its crawl stops."


async def answer(request: CancelRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await cancel_job(request, caller, deps))


async def cancel_job(request: CancelRequest, caller: Caller, deps: Deps) -> CancelResult:
    """Cancel the job; 409 (naming its state) when it is already final. A parent job
    (orchestration) cancels every open child, then itself."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB_FOR_CONTROL, job_id, org_id)
        if job is None:
            raise job_not_found()
        state = job["state"]
        if state not in CANCELLABLE:
            raise not_allowed("cancel", state, CANCELLABLE)
        step = functools.partial(cancel_locked, request.reason)
        actor = caller.actor()
        if job["kind"] == "orchestration":
            # Children already final stay as they are.
            done = await for_children(
                conn, job, org_id, "cancel", CANCELLABLE, actor, step, require=False
            )
            own = await step(conn, job, org_id, {**actor, "children": [str(c) for c in done]})
            figures = {
                "lines_cancelled": sum(f["lines_cancelled"] for f in done.values()),
                "held_dropped": sum(f["held_dropped"] for f in done.values()),
                "crawl_stopped": all(f["crawl_stopped"] for f in [own, *done.values()]),
            }
        else:
            figures = await step(conn, job, org_id, actor)
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return CancelResult(**status.model_dump(), **figures)


async def cancel_locked(
    reason_given: str | None,
    conn: asyncpg.Connection,
    job: asyncpg.Record,
    org_id: UUID,
    actor: Mapping[str, Any],
) -> dict[str, Any]:
    """Cancel one open job whose row is locked: its open lines, its held batches; audited."""
    job_id, state = job["id"], job["state"]
    # No fetcher took it (its guard refuses a cancelled job from now on), it read every
    # page, or a pause already stopped its crawl.
    no_crawl = (
        job["process_count"] == 0
        or job["fetch_done_at"] is not None
        or job["crawl_stopped_at"] is not None
    )
    reason = f"cancelled by hand: {reason_given}" if reason_given else "cancelled by hand"
    stopped_at = await conn.fetchval(q.CANCEL_JOB, job_id, org_id, reason, no_crawl)
    lines = await conn.execute(q.CANCEL_LINES, job_id, org_id)
    held = await conn.execute(q.DELETE_HELD_BATCHES, job_id, org_id)
    if job["kind"] != "orchestration":  # a parent's counts are its children's
        await conn.execute(q.RECOUNT_JOB, job_id, org_id)
    lines_cancelled, held_dropped = _count(lines), _count(held)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job_id,
        event="job.cancelled",
        level="warning",
        details={
            "reason": reason_given,
            "previous_state": state,
            "state": JobState.CANCELLED,
            "lines_cancelled": lines_cancelled,
            "held_dropped": held_dropped,
            "crawl_stopped": stopped_at is not None,
            **actor,
        },
    )
    return {
        "lines_cancelled": lines_cancelled,
        "held_dropped": held_dropped,
        "crawl_stopped": stopped_at is not None,
    }


def _count(command_tag: str) -> int:
    """The row count of an ``UPDATE n`` / ``DELETE n`` command tag."""
    return int(command_tag.rsplit(" ", 1)[-1])
