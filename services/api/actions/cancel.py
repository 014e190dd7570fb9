"""The ``cancel`` action: end an open job as ``cancelled``.

Its open lines are settled as ``cancelled`` and the batches held while it was paused dropped;
the syncer writes no batch of it afterwards (its row lock waits for one being written). Its
store's connection is free for a new sync only once its crawl has really stopped: at once when
no crawl can be running (it never began, every page was read, a pause stopped it), else when the
fetcher's crawl sees the state and stops (within ``WOOSYNC_CRAWL_CHECK_INTERVAL_S`` or a page),
which it records (``crawl_stopped_at``; the status's ``crawl_stopped``).
"""

from __future__ import annotations

from services.api import queries as q
from services.api.actions.common import Answer, job_not_found, not_allowed, read_status
from services.api.deps import Deps
from services.api.schemas import CancelRequest, CancelResult
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.lifecycle import JOB_ACTIONS, JobState

SUMMARY = "Cancel an open job: open lines cancelled; its store is free once its crawl stops."


async def answer(request: CancelRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await cancel_job(request, caller, deps))


async def cancel_job(request: CancelRequest, caller: Caller, deps: Deps) -> CancelResult:
    """Cancel the job; 409 (naming its state) when it is already final."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB_FOR_CONTROL, job_id, org_id)
        if job is None:
            raise job_not_found()
        state = job["state"]
        if state not in JOB_ACTIONS["cancel"]:
            raise not_allowed("cancel", state, JOB_ACTIONS["cancel"])
        # No fetcher took it (its guard refuses a cancelled job from now on), it read every
        # page, or a pause already stopped its crawl.
        no_crawl = (
            job["process_count"] == 0
            or job["fetch_done_at"] is not None
            or job["crawl_stopped_at"] is not None
        )
        reason = f"cancelled by hand: {request.reason}" if request.reason else "cancelled by hand"
        stopped_at = await conn.fetchval(q.CANCEL_JOB, job_id, org_id, reason, no_crawl)
        lines = await conn.execute(q.CANCEL_LINES, job_id, org_id)
        held = await conn.execute(q.DELETE_HELD_BATCHES, job_id, org_id)
        await conn.execute(q.RECOUNT_JOB, job_id, org_id)
        lines_cancelled, held_dropped = _count(lines), _count(held)
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="job.cancelled",
            level="warning",
            details={
                "reason": request.reason,
                "previous_state": state,
                "state": JobState.CANCELLED,
                "lines_cancelled": lines_cancelled,
                "held_dropped": held_dropped,
                "crawl_stopped": stopped_at is not None,
                **caller.actor(),
            },
        )
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return CancelResult(
        **status.model_dump(),
        lines_cancelled=lines_cancelled,
        held_dropped=held_dropped,
        crawl_stopped=stopped_at is not None,
    )


def _count(command_tag: str) -> int:
    """The row count of an ``UPDATE n`` / ``DELETE n`` command tag."""
    return int(command_tag.rsplit(" ", 1)[-1])
