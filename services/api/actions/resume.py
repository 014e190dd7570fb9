"""The ``resume`` action: a paused job goes on where it stopped.

In one transaction, the job's row locked: the batches the syncer held are published again (each
with the retry attempt it came with) and their copies deleted, a ``sync.requested`` is published
when pages are left to read, and the job becomes ``queued`` (or ``processing`` when every page
was read). A crawl that has not yet recorded its stop (finishing its reads in flight) is sent no
second request: it hands the job on itself when it sees it running. Every publish is confirmed
before the commit; a failed one answers 503 and changes nothing (a batch published twice is
harmless: the syncer's upserts are idempotent). The fetcher reads on from the first page not
recorded; no recorded page is read again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
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
from services.api.publishing import PUBLISH_TIMEOUT_S, broker_unavailable
from services.api.schemas import ResumeRequest, ResumeResult
from shared import activity
from shared.auth import Caller
from shared.broker import publish, publish_to_queue
from shared.db import for_org
from shared.lifecycle import JOB_ACTIONS, JobState
from shared.messages import CustomerBatch, SyncRequested
from shared.topology import ATTEMPT_HEADER

log = logging.getLogger("woosync.api.actions")

RESUMABLE = JOB_ACTIONS["resume"]

SUMMARY = "Resume a paused job: read on from the first unread page, send its held batches."


async def answer(request: ResumeRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await resume_job(request, caller, deps), 202)


async def resume_job(request: ResumeRequest, caller: Caller, deps: Deps) -> ResumeResult:
    """Resume the job; 409 (naming its state) unless it is paused. A parent job (orchestration)
    resumes every paused child, all in one transaction: one failed publish changes none."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB_FOR_CONTROL, job_id, org_id)
        if job is None:
            raise job_not_found()
        if job["state"] not in RESUMABLE:
            raise not_allowed("resume", job["state"], RESUMABLE)
        if job["kind"] == "orchestration":
            step = functools.partial(resume_locked, deps)
            done = await for_children(
                conn, job, org_id, "resume", RESUMABLE, caller.actor(), step, require=False
            )
            figures = {
                "released": sum(f["released"] for f in done.values()),
                "fetch_resumed": any(f["fetch_resumed"] for f in done.values()),
            }
            await _resume_parent(conn, job_id, org_id, caller, list(done), figures)
        else:
            figures = await resume_locked(deps, conn, job, org_id, caller.actor())
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return ResumeResult(**status.model_dump(), **figures)


async def _resume_parent(
    conn: asyncpg.Connection,
    job_id: UUID,
    org_id: UUID,
    caller: Caller,
    children: list[UUID],
    figures: dict[str, Any],
) -> None:
    """A parent reads nothing itself: it is processing again while its children are."""
    await conn.execute(q.RESUME_JOB, job_id, org_id, JobState.PROCESSING.value)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job_id,
        event="job.resumed",
        details={
            "previous_state": JobState.PAUSED,
            "state": JobState.PROCESSING,
            "children": [str(child) for child in children],
            **figures,
            **caller.actor(),
        },
    )


async def resume_locked(
    deps: Deps,
    conn: asyncpg.Connection,
    job: asyncpg.Record,
    org_id: UUID,
    actor: Mapping[str, Any],
) -> dict[str, Any]:
    """Resume one paused job whose row is locked: publish its held batches (and a
    ``sync.requested`` when pages are left), then mark it running; audited. 503 (raised, so the
    transaction rolls back) when a publish fails."""
    job_id = job["id"]
    held = await conn.fetch(q.SELECT_HELD_BATCHES, job_id, org_id)
    fetch_resumed = job["fetch_done_at"] is None
    # A crawl that has not recorded its stop (still finishing its reads, or its request
    # not yet taken) reads on by itself once it sees the job running again.
    request_fetch = fetch_resumed and job["crawl_stopped_at"] is not None
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            for row in held:
                batch = CustomerBatch.model_validate_json(bytes(row["batch"]))
                headers = {ATTEMPT_HEADER: row["attempt"]} if row["attempt"] else None
                await publish_to_queue(
                    deps.broker, deps.topology.syncer_queue.name, batch, headers=headers
                )
            if request_fetch:
                message = SyncRequested(
                    job_id=job_id, org_id=org_id, connection_id=job["connection_id"]
                )
                await publish(deps.broker, deps.topology, message)
    except Exception as exc:  # not known to be queued: roll back, nothing changed
        log.warning("resume of job %s: publish failed: %s", job_id, type(exc).__name__)
        raise broker_unavailable() from None
    await conn.execute(q.DELETE_HELD_BATCHES, job_id, org_id)
    state = JobState.QUEUED if fetch_resumed else JobState.PROCESSING
    await conn.execute(q.RESUME_JOB, job_id, org_id, state.value)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job_id,
        event="job.resumed",
        details={
            "previous_state": JobState.PAUSED,
            "state": state,
            "released": len(held),
            "fetch_resumed": fetch_resumed,
            **actor,
        },
    )
    return {"released": len(held), "fetch_resumed": fetch_resumed}
