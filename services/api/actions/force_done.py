"""The ``force-done`` action: close a job by hand."""

from __future__ import annotations

from services.api import queries as q
from services.api.actions.common import (
    Answer,
    job_not_found,
    not_allowed,
    parent_refused,
    read_status,
)
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.schemas import ForceDoneRequest, StatusResult
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.lifecycle import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JobState

SUMMARY = "Close an open job by hand (done), with a reason."


async def answer(request: ForceDoneRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await force_done(request, caller, deps))


async def force_done(request: ForceDoneRequest, caller: Caller, deps: Deps) -> StatusResult:
    """Close a job by hand (for instance a store that will never answer again)."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB, job_id, org_id)
        if job is None:
            raise job_not_found()
        if job["kind"] == "orchestration":
            raise parent_refused("force-done", job_id)
        if job["state"] in FINAL_JOB_STATES:
            raise ApiError(409, "job_final", f"the job is already {job['state']}")
        if job["state"] == JobState.PAUSED:
            # Its held batches would be stranded: resume it, or cancel it.
            raise not_allowed("force-done", job["state"], ACTIVE_JOB_STATES)
        await conn.execute(q.FORCE_DONE, job_id, f"forced done: {request.reason}", org_id)
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="job.forced_done",
            level="warning",
            details={
                "reason": request.reason,
                "previous_state": job["state"],
                "state": JobState.DONE,
                **caller.actor(),
            },
        )
    return await read_status(deps, org_id=org_id, job_id=job_id)
