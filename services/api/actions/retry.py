"""The ``retry`` action: send a job's failed customers again and resume an unfinished fetch."""

from __future__ import annotations

from services.api import queries as q
from services.api.actions.common import (
    Answer,
    batches,
    connection_busy,
    hand_to_fetcher,
    job_not_found,
    not_allowed,
    parent_refused,
    read_status,
    too_many_syncs,
)
from services.api.deps import Deps
from services.api.publishing import publish_all
from services.api.schemas import RetryRequest, RetryResult
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.jobs import get_status
from shared.lifecycle import (
    FINAL_JOB_STATES,
    JOB_ACTIONS,
    REFETCH_JOB_STATES,
    Actor,
    JobState,
    reopen_jobs,
)

# A paused job goes on with resume; a cancelled one stays ended (start anew).
RETRYABLE = JOB_ACTIONS["retry"]

SUMMARY = "Send the job's failed customers again and resume its fetch if unfinished."


async def answer(request: RetryRequest, caller: Caller, deps: Deps) -> Answer:
    retried = await retry_job(request, caller, deps)
    return Answer(retried, 202 if retried.changed_anything else 200)


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
        if job["kind"] == "orchestration":
            raise parent_refused("retry", job_id)
        previous_state = JobState(job["state"])
        if previous_state not in RETRYABLE:
            raise not_allowed("retry", previous_state, RETRYABLE)
        # A running job's fetcher is still at work; a draft, or a finished job that never read
        # every page (fetch failed, or forced done), needs the fetcher again.
        needs_fetch = job["fetch_done_at"] is None and previous_state in REFETCH_JOB_STATES
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
            and previous_state in FINAL_JOB_STATES
            and (before.pending > 0 or (previous_state == JobState.FAILED and before.failed == 0))
        )
        new_state = previous_state
        unrecoverable = 0
        if lines or needs_fetch or reopen:
            if previous_state in FINAL_JOB_STATES:
                limit = deps.settings.max_concurrent_syncs_per_org
                if await conn.fetchval(q.COUNT_OPEN_JOBS, org_id) >= limit:
                    raise too_many_syncs(limit)  # rolls back the lines re-queued above
            unrecoverable = await conn.fetchval(q.COUNT_UNRECOVERABLE_LINES, job_id, org_id)
            if needs_fetch:
                new_state = JobState.DRAFT  # becomes queued once sync.requested is confirmed
            elif previous_state in FINAL_JOB_STATES:
                new_state = JobState.PROCESSING
            await reopen_jobs(
                conn,
                Actor.API_RETRY,
                [(job_id, org_id)],
                to=new_state,
                leaving=[previous_state],
                whatever_lines=[job_id],
            )
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
        await publish_all(
            deps,
            batches(job_id, org_id, job["connection_id"], customers, job["batch_size"]),
        )
    if needs_fetch:
        await hand_to_fetcher(
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
        job_reopened=previous_state in FINAL_JOB_STATES and new_state not in FINAL_JOB_STATES,
    )
