"""Orchestrate: one parent job over several stored connections (stores) of the org.

The parent is a job of kind ``orchestration`` with no store of its own; each store gets an
ordinary sync job (its child, ``parent_id``). It is all or nothing: the connections are checked
(each the org's, none with an open job or a cancelled crawl still running, the org's cap of open
syncs not passed by the children) and the parent and its children written in one transaction
under the org's sync lock, so an error names its connection and creates nothing. The children
are handed to the fetcher only after the commit, with the confirmed publishing ``start`` uses.

The children count against ``WOOSYNC_MAX_CONCURRENT_SYNCS_PER_ORG`` (the parent, which reads no
store, does not): an orchestration that would pass the cap is refused with 429 naming it, rather
than queueing children behind one another.

The parent's status is its children's counts summed, with each child's state and error; the
tracker finishes it once every child is final (``services.tracker.handlers``); ``pause``,
``resume`` and ``cancel`` with its id apply to every child (``common.for_children``). Its
children's other actions (retry, force-done, replay, conflicts) are their own; those actions
refuse the parent.
"""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg

from services.api import queries as q
from services.api.actions.common import Answer, hand_to_fetcher, too_many_syncs
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.schemas import (
    OrchestratedChild,
    OrchestratedConnection,
    OrchestrateRequest,
    OrchestrateResult,
)
from services.api.urls import progress_url, status_url
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.lifecycle import JobState

KIND = "orchestration"
SUMMARY = "Sync several stores of the org as one parent job with a child job per store."


def connection_not_found(connection_id: UUID) -> ApiError:
    # The same answer for a missing connection and another org's: ids are not probeable.
    return ApiError(404, "connection_not_found", f"no such connection: {connection_id}")


async def answer(request: OrchestrateRequest, caller: Caller, deps: Deps) -> Answer:
    """202 with the new parent; 200 with the parent an idempotency key already made."""
    org_id, key = caller.org_id, request.options.idempotency_key
    existing: asyncpg.Record | None = None
    if key is not None:
        existing = await for_org(deps.pool, org_id).fetchrow(
            q.SELECT_PARENT_BY_IDEMPOTENCY_KEY, org_id, key
        )
        if existing is not None:
            return Answer(await _answer_existing(deps, caller, existing), 200)
    parent_id = uuid4()
    children: list[tuple[UUID, UUID]] = []
    async with for_org(deps.pool, org_id).transaction() as conn:
        await conn.execute(q.LOCK_ORG_SYNCS, org_id)
        if key is not None:  # a concurrent request with the same key may have won meanwhile
            existing = await conn.fetchrow(q.SELECT_PARENT_BY_IDEMPOTENCY_KEY, org_id, key)
        if existing is None:
            children = await _create(conn, deps, request, caller, parent_id)
    if existing is not None:
        return Answer(await _answer_existing(deps, caller, existing), 200)
    # Published only after the commit; a failed publish (503) leaves that child a draft, which
    # the same request with its idempotency key (or the child's retry) hands on.
    states = [
        await hand_to_fetcher(
            deps,
            job_id=child_id,
            org_id=org_id,
            connection_id=connection_id,
            actor={**caller.actor(), "parent_id": str(parent_id)},
        )
        for child_id, connection_id in children
    ]
    return Answer(
        _result(
            deps,
            org_id,
            parent_id,
            JobState.PROCESSING,
            [(c, conn_id, s) for (c, conn_id), s in zip(children, states, strict=True)],
        ),
        202,
    )


async def _answer_existing(deps: Deps, caller: Caller, parent: asyncpg.Record) -> OrchestrateResult:
    """The parent an idempotency key made, its draft children (a publish failed) handed on."""
    org_id = caller.org_id
    if parent["kind"] != KIND:
        raise ApiError(
            409,
            "idempotency_key_used",
            f"idempotency_key already names job {parent['id']}, which is no orchestration",
        )
    rows = await for_org(deps.pool, org_id).fetch(q.SELECT_CHILDREN, parent["id"], org_id)
    children = []
    for row in rows:
        state = row["state"]
        if state == JobState.DRAFT:
            state = await hand_to_fetcher(
                deps,
                job_id=row["id"],
                org_id=org_id,
                connection_id=row["connection_id"],
                actor={**caller.actor(), "parent_id": str(parent["id"])},
            )
        children.append((row["id"], row["connection_id"], state))
    return _result(deps, org_id, parent["id"], parent["state"], children)


def _result(
    deps: Deps,
    org_id: UUID,
    parent_id: UUID,
    state: str,
    children: list[tuple[UUID, UUID, str]],
) -> OrchestrateResult:
    return OrchestrateResult(
        job_id=parent_id,
        kind=KIND,
        state=state,  # type: ignore[arg-type]  # a job state
        status_url=status_url(deps, parent_id),
        progress_url=progress_url(deps, parent_id, org_id),
        children=[
            OrchestratedChild(job_id=job_id, connection_id=connection_id, state=s)  # type: ignore[arg-type]
            for job_id, connection_id, s in children
        ],
    )


async def _create(
    conn: asyncpg.Connection,
    deps: Deps,
    request: OrchestrateRequest,
    caller: Caller,
    parent_id: UUID,
) -> list[tuple[UUID, UUID]]:
    """Check every connection, then write the parent and its children; (child, connection)s.

    Runs under the org's sync lock, so the open jobs counted stay true until the commit. Raises
    before writing anything, so an error leaves the database as it was.
    """
    org_id, settings = caller.org_id, deps.settings
    targets = request.targets()
    wanted = [t.connection_id for t in targets]
    known = {row["id"] for row in await conn.fetch(q.SELECT_ORG_CONNECTIONS, org_id, wanted)}
    for connection_id in wanted:
        if connection_id not in known:
            raise connection_not_found(connection_id)
    for connection_id in wanted:
        await _check_free(conn, org_id, connection_id, parent_id)
    limit = settings.max_concurrent_syncs_per_org
    open_jobs = await conn.fetchval(q.COUNT_OPEN_JOBS, org_id)
    if open_jobs + len(targets) > limit:
        if open_jobs == 0:
            raise ApiError(
                429,
                "too_many_syncs",
                f"{len(targets)} stores are more than the organisation's limit of {limit} open "
                "syncs (WOOSYNC_MAX_CONCURRENT_SYNCS_PER_ORG); orchestrate fewer at a time",
            )
        raise too_many_syncs(limit)

    options = request.options
    await conn.execute(
        q.INSERT_PARENT_JOB,
        parent_id,
        org_id,
        KIND,
        options.idempotency_key,
        options.batch_size or settings.default_batch_size,
        options.concurrency or settings.default_concurrency,
    )
    children = [(uuid4(), target) for target in targets]
    for child_id, target in children:
        await _insert_child(conn, deps, caller, parent_id, child_id, target)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=parent_id,
        event="job.orchestrated",
        details={
            "children": [
                {"job_id": str(child_id), "connection_id": str(target.connection_id)}
                for child_id, target in children
            ],
            "options": options.model_dump(mode="json", exclude_none=True),
            **caller.actor(),
        },
    )
    return [(child_id, target.connection_id) for child_id, target in children]


async def _check_free(
    conn: asyncpg.Connection, org_id: UUID, connection_id: UUID, parent_id: UUID
) -> None:
    """409 naming the connection when a job of it is open or its cancelled crawl still runs."""
    running = await conn.fetchrow(q.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id)
    if running is not None:
        raise ApiError(
            409,
            "connection_busy",
            f"connection {connection_id} already has open {running['kind']} job "
            f"{running['id']} ({running['state']}); wait for it, or cancel it",
        )
    stopping = await conn.fetchval(q.SELECT_OTHER_FETCHING_JOB, org_id, connection_id, parent_id)
    if stopping is not None:
        raise ApiError(
            409,
            "crawl_not_stopped",
            f"connection {connection_id}: job {stopping} was cancelled and its crawl has not "
            "stopped yet; orchestrate again in a few seconds",
            headers={"Retry-After": "5"},
        )


async def _insert_child(
    conn: asyncpg.Connection,
    deps: Deps,
    caller: Caller,
    parent_id: UUID,
    child_id: UUID,
    target: OrchestratedConnection,
) -> None:
    org_id, options = caller.org_id, target.options
    batch_size = options.batch_size or deps.settings.default_batch_size
    concurrency = options.concurrency or deps.settings.default_concurrency
    await conn.execute(
        q.INSERT_CHILD_JOB,
        child_id,
        org_id,
        target.connection_id,
        parent_id,
        batch_size,
        concurrency,
        options.conflict_policy,
    )
    await activity.record(
        conn,
        org_id=org_id,
        job_id=child_id,
        event="job.created",
        details={
            "connection_id": str(target.connection_id),
            "parent_id": str(parent_id),
            "batch_size": batch_size,
            "concurrency": concurrency,
            "conflict_policy": options.conflict_policy,
            **caller.actor(),
        },
    )
