"""The ``pause`` action: hold a running job where it is.

The state is what stops the work: the fetcher's crawl takes no new page once it sees ``paused``
(within ``WOOSYNC_CRAWL_CHECK_INTERVAL_S``, or at its next page's record) and ends when its reads
in flight are recorded; the syncer keeps the job's batches instead of writing them. The job's
row is locked for the change, which waits for a batch the syncer is writing: once this answers,
no customer of the job is written until ``resume``. The tracker neither finishes nor stalls a
paused job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
from services.api.schemas import PauseRequest, StatusResult
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.lifecycle import JOB_ACTIONS, JobState

PAUSABLE = JOB_ACTIONS["pause"]

SUMMARY = "Pause a queued or processing job: no page is read and no batch written until resume."


async def answer(request: PauseRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await pause_job(request, caller, deps))


async def pause_job(request: PauseRequest, caller: Caller, deps: Deps) -> StatusResult:
    """Pause the job; 409 (naming its state) unless it is queued or processing. A parent job
    (orchestration) pauses every child that is queued or processing."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB_FOR_CONTROL, job_id, org_id)
        if job is None:
            raise job_not_found()
        if job["state"] not in PAUSABLE:
            raise not_allowed("pause", job["state"], PAUSABLE)
        actor = caller.actor()
        if job["kind"] == "orchestration":
            done = await for_children(conn, job, org_id, "pause", PAUSABLE, actor, pause_locked)
            actor = {**actor, "children": [str(child) for child in done]}
        await pause_locked(conn, job, org_id, actor)
    return await read_status(deps, org_id=org_id, job_id=job_id)


async def pause_locked(
    conn: asyncpg.Connection, job: asyncpg.Record, org_id: Any, actor: Mapping[str, Any]
) -> dict[str, Any]:
    """Pause one job whose row is locked (LOCK_JOB_FOR_CONTROL) and pausable; audited."""
    await conn.execute(q.PAUSE_JOB, job["id"], org_id)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job["id"],
        event="job.paused",
        details={"previous_state": job["state"], "state": JobState.PAUSED, **actor},
    )
    return {}
