"""What several actions share: their errors, a job's status with its links, and the hand-over
of a draft job to the fetcher."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from services.api import queries as q
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.publishing import publish_all
from services.api.schemas import StatusResult
from services.api.urls import progress_url, status_url
from shared import syncstart
from shared.db import for_org
from shared.jobs import get_status
from shared.lifecycle import JobState
from shared.messages import CustomerBatch, Message

log = logging.getLogger("woosync.api.actions")

# What a client at the cap of open syncs is told to wait before trying again.
SYNC_CAP_RETRY_AFTER_S = 30


def job_not_found() -> ApiError:
    # The same answer for a missing job and for another org's job: ids are not probeable.
    return ApiError(404, "job_not_found", "no such job")


def not_allowed(action: str, state: str, allowed: Collection[JobState]) -> ApiError:
    """409 for an action the job's state does not allow; the message names the state."""
    ordered = [s.value for s in JobState if s in allowed]
    listed = ", ".join(ordered[:-1]) + " or " + ordered[-1] if len(ordered) > 1 else ordered[0]
    return ApiError(
        409,
        "action_not_allowed",
        f"the job is {state}: {action} applies only to a job that is {listed}",
    )


def parent_refused(action: str, job_id: UUID) -> ApiError:
    """409 for an action that applies to a parent job's children, not to the parent."""
    return ApiError(
        409,
        "action_not_allowed",
        f"job {job_id} orchestrates other jobs and reads no store: {action} applies to each "
        "of its children (see its status's children)",
    )


def too_many_syncs(limit: int) -> ApiError:
    return ApiError(
        429,
        "too_many_syncs",
        f"the organisation already has {limit} syncs open (the limit); "
        "try again when one has finished",
        headers={"Retry-After": str(SYNC_CAP_RETRY_AFTER_S)},
    )


def connection_busy(job_id: UUID) -> ApiError:
    return ApiError(
        409,
        "connection_busy",
        f"job {job_id} of the same store connection is reading the store; "
        "retry this job when it has finished",
    )


def preview_running(job_id: UUID) -> ApiError:
    return ApiError(
        409,
        "connection_busy",
        f"preview job {job_id} is reading this store; start or preview again when it has finished",
    )


def crawl_not_stopped(job_id: UUID) -> ApiError:
    return ApiError(
        409,
        "crawl_not_stopped",
        f"job {job_id} of the same store was cancelled and its crawl has not stopped yet; "
        "start again in a few seconds",
        headers={"Retry-After": "5"},
    )


# What pause, resume and cancel do to one locked job: (conn, job row, org id, actor details) ->
# their figures for the answer.
ControlStep = Callable[
    [asyncpg.Connection, asyncpg.Record, UUID, Mapping[str, Any]], Awaitable[dict[str, Any]]
]


async def for_children(
    conn: asyncpg.Connection,
    parent: asyncpg.Record,
    org_id: UUID,
    action: str,
    allowed: Collection[JobState],
    actor: Mapping[str, Any],
    step: ControlStep,
    *,
    require: bool = True,
) -> dict[UUID, dict[str, Any]]:
    """Apply a control action to every child of a parent job (kind ``orchestration``) whose state
    allows it, in the caller's transaction with the parent locked; each child's activity row
    names the parent. Children in other states (say, already done) are left as they are; 409 when
    no child allows it if ``require`` (else the parent alone changes: a paused parent whose
    children all ended meanwhile can still be resumed or cancelled). Each child's figures."""
    children = await conn.fetch(q.LOCK_CHILDREN_FOR_CONTROL, parent["id"], org_id)
    eligible = [child for child in children if child["state"] in allowed]
    if not eligible and require:
        states = ", ".join(sorted({child["state"] for child in children})) or "none"
        ordered = [s.value for s in JobState if s in allowed]
        raise ApiError(
            409,
            "action_not_allowed",
            f"no child of the parent job is {' or '.join(ordered)} (their states: {states}): "
            f"{action} applies to none of them",
        )
    with_parent = {**actor, "parent_id": str(parent["id"])}
    return {child["id"]: await step(conn, child, org_id, with_parent) for child in eligible}


async def read_status(deps: Deps, *, org_id: UUID, job_id: UUID) -> StatusResult:
    """The job's status with its links; 404 for a missing job and for another org's."""
    status = await get_status(for_org(deps.pool, org_id), org_id=org_id, job_id=job_id)
    if status is None:
        raise job_not_found()
    return StatusResult(
        **status.model_dump(),
        status_url=status_url(deps, status.job_id),
        progress_url=progress_url(deps, status.job_id, org_id),
    )


async def hand_to_fetcher(
    deps: Deps,
    *,
    job_id: UUID,
    org_id: UUID,
    connection_id: UUID,
    actor: Mapping[str, str],
    reason: Literal["start", "retry"] = "start",
) -> str:
    """Publish ``sync.requested`` for a draft job and mark it queued (``shared.syncstart``, as
    the scheduler does); its state afterwards. A broker failure is 503 ``broker_unavailable``."""

    async def publish(messages: list[Message]) -> None:
        await publish_all(deps, messages)

    return await syncstart.hand_to_fetcher(
        deps.pool,
        publish,
        job_id=job_id,
        org_id=org_id,
        connection_id=connection_id,
        actor=actor,
        reason=reason,
    )


def batches(
    job_id: UUID, org_id: UUID, connection_id: UUID, customers: list[Any], size: int
) -> list[CustomerBatch]:
    """The customers in batches of the job's size, as the fetcher would have sent them."""
    return [
        CustomerBatch(
            job_id=job_id,
            org_id=org_id,
            connection_id=connection_id,
            page=None,
            customers=customers[start : start + size],
        )
        for start in range(0, len(customers), size)
    ]


@dataclass(frozen=True)
class Answer:
    """What an action answers: the body and its HTTP status."""

    body: BaseModel
    status: int = 200
