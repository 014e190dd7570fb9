"""Conflicts waiting for a person (the ``manual`` policy, ``shared.conflicts``): the listing of a
job's conflicts and the ``resolve-conflicts`` action that takes one version of one or all.

Taking the store's version (``woo``) writes it through the syncer's own set-based upsert
(``services.syncer.handlers.upsert_isolating``, so the same staleness and content rules hold);
keeping MantisNXT's (``mantis``) records the store version as seen, as the ``mantis_wins``
policy does. Either way the lines become ``done`` in the same transaction, with a warning that
says who took which, and the activity log gets a ``conflicts.resolved`` row. The tracker is told
(``line.done``), and finishes the job once nothing else is open. A line that is not waiting as a
conflict is 409; another org's job is answered like a missing one (404).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from services.api import queries as q
from services.api.actions.common import Answer, job_not_found, read_status
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.publishing import publish_all
from services.api.schemas import (
    Conflict,
    ConflictField,
    ConflictPage,
    ResolveConflictsRequest,
    ResolveResult,
)
from services.syncer.handlers import upsert_isolating
from shared import activity, conflicts
from shared.auth import Caller
from shared.db import for_org
from shared.mapping import CustomerRow, MappingError, map_customer
from shared.messages import LinesDone

log = logging.getLogger("woosync.api.actions")

SUMMARY = (
    "Resolve the job's conflicts (manual policy): one (woo_id) or all (all: true), "
    "taking the store's version (take: woo) or keeping MantisNXT's (take: mantis)."
)
NOTE = (
    "resolve-conflicts answers 200 with the job's status and how many conflicts it resolved; "
    "409 not_in_conflict when woo_id is not waiting as a conflict."
)
# Woo ids named in one activity row at most (the count is always there).
AUDIT_IDS = 1000
MAX_PAGE = 200
DEFAULT_PAGE = 50


async def answer(request: ResolveConflictsRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await resolve(request, caller, deps))


async def resolve(request: ResolveConflictsRequest, caller: Caller, deps: Deps) -> ResolveResult:
    """Take one version for the named conflict or for every conflict of the job."""
    org_id, job_id = caller.org_id, request.job_id
    async with for_org(deps.pool, org_id).transaction() as conn:
        job = await conn.fetchrow(q.LOCK_JOB, job_id, org_id)
        if job is None:
            raise job_not_found()
        lines = await conn.fetch(q.LOCK_CONFLICT_LINES, job_id, org_id, request.woo_id)
        if request.woo_id is not None and not lines:
            raise ApiError(
                409,
                "not_in_conflict",
                f"customer {request.woo_id} is not waiting as a conflict in this job",
            )
        woo_ids = [line["woo_id"] for line in lines]
        if lines:
            await conn.execute(conflicts.MARK_WOOSYNC_WRITER)
            connection_id = job["connection_id"]
            rows = [_row(line["woo_id"], line["payload"], org_id, connection_id) for line in lines]
            if request.take == "woo":
                _, refused, _ = await upsert_isolating(conn, rows)
                if refused:
                    row, error, _ = refused[0]
                    raise ApiError(422, "customer_refused", f"customer {row.woo_id}: {error}")
                note = "conflict resolved: took the store's version"
            else:
                await conn.execute(
                    conflicts.KEEP_MANTIS_VERSIONS,
                    org_id,
                    job["connection_id"],
                    *conflicts.keep_arguments(rows),
                )
                note = "conflict resolved: kept MantisNXT's version"
            await conn.execute(q.RESOLVE_CONFLICT_LINES, job_id, org_id, woo_ids, note)
            await conn.execute(q.RECOUNT_CONFLICTS, job_id, org_id)
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="conflicts.resolved",
            details={
                "take": request.take,
                "all": request.all,
                "resolved": len(woo_ids),
                "woo_ids": woo_ids[:AUDIT_IDS],
                **caller.actor(),
            },
        )
    if woo_ids:
        try:  # the tracker's sweep finds the job anyway; this only makes it quick
            await publish_all(
                deps,
                [LinesDone(job_id=job_id, org_id=org_id, woo_ids=woo_ids)],
                context="line.done after resolving conflicts",
            )
        except ApiError:
            log.warning("job %s: line.done after resolving conflicts not published", job_id)
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return ResolveResult(**status.model_dump(), take=request.take, resolved=len(woo_ids))


def _row(woo_id: int, payload: Any, org_id: UUID, connection_id: UUID) -> CustomerRow:
    try:
        return map_customer(payload, org_id=org_id, connection_id=connection_id)
    except MappingError as exc:  # it mapped when the syncer held it; a changed mapping
        raise ApiError(422, "customer_refused", f"customer {woo_id}: {exc.message}") from None


async def list_conflicts(
    deps: Deps, *, org_id: UUID, job_id: UUID, after: int, limit: int
) -> ConflictPage:
    """One page of the job's waiting conflicts, by woo_id after ``after``; 404 like status."""
    scope = for_org(deps.pool, org_id)
    async with scope.transaction() as conn:
        total = await conn.fetchval(q.COUNT_CONFLICT_LINES, job_id, org_id)
        if total is None:
            raise job_not_found()
        rows = await conn.fetch(q.SELECT_CONFLICT_LINES, job_id, org_id, after, limit + 1)
    page = [_conflict(row, org_id) for row in rows[:limit]]
    more = len(rows) > limit
    return ConflictPage(
        job_id=job_id,
        total=total,
        conflicts=page,
        next_after=page[-1].woo_id if more and page else None,
    )


def _conflict(row: Any, org_id: UUID) -> Conflict:
    mantis: dict[str, Any] = row["mantis_version"] or {}
    woo: dict[str, Any] = row["payload"] or {}
    try:
        mapped = map_customer(woo, org_id=org_id, connection_id=row["job_id"])
        fields = {name: getattr(mapped, name) for name in conflicts.COMPARED_FIELDS}
    except MappingError:
        fields = {}
    diff = [ConflictField(**d) for d in conflicts.field_diff(fields, mantis)]
    return Conflict(
        woo_id=row["woo_id"],
        detected_at=row["updated_at"],
        woo=woo,
        mantis=mantis,
        diff=diff,
    )
