"""History and visibility: the org's jobs, a job's lines by state, a job's activity log.

Reads only (nothing is written, not even to the activity log), each a keyset page: rows after
the cursor's key in a fixed order, so a page never repeats or skips a row when rows are added
meanwhile (new jobs go before the first page, new activity after the last). The cursor is
opaque to clients: URL-safe base64 of the kind of list and the last row's key, so a cursor of
one list is refused by another. Tenancy is the org filter plus row-level security: another
org's job is a 404 like a missing one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode
from uuid import UUID

from pydantic import BaseModel, ValidationError

from services.api import queries as q
from services.api.actions.common import job_not_found
from services.api.deps import Deps
from services.api.errors import ApiError, describe_validation_error
from services.api.schemas import (
    ActivityEntry,
    ActivityPage,
    ActivityQuery,
    JobsPage,
    JobsQuery,
    JobSummary,
    LinesPage,
    LinesQuery,
    LineSummary,
)
from services.api.urls import status_url
from shared import activity, paths
from shared.auth import Caller
from shared.db import for_org

CURSOR_VERSION = 1

M = TypeVar("M", bound=BaseModel)


def parse_query(model: type[M], items: Sequence[tuple[str, str]]) -> M:
    """The query string as ``model``; 422 naming a repeated, unknown or invalid parameter."""
    values: dict[str, str] = {}
    for name, value in items:
        if name in values:
            raise ApiError(422, "invalid_request", f"{name}: given more than once")
        values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation_error(exc)) from None


def encode_cursor(kind: str, key: Any) -> str:
    raw = json.dumps([CURSOR_VERSION, kind, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor() -> ApiError:
    return ApiError(
        422, "invalid_request", "cursor: invalid (pass the next_cursor of the previous page)"
    )


def decode_cursor(kind: str, cursor: str) -> Any:
    """The key in a cursor of this kind of list; 422 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, found, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise _bad_cursor() from None
    if version != CURSOR_VERSION or found != kind:
        raise _bad_cursor()
    return key


def jobs_key(cursor: str) -> tuple[datetime, UUID]:
    key = decode_cursor("jobs", cursor)
    try:
        created_at, job_id = key
        at, job = datetime.fromisoformat(created_at), UUID(job_id)
    except (TypeError, ValueError):
        raise _bad_cursor() from None
    if at.tzinfo is None:  # the cursors given out are UTC; a naive time would be guessed at
        raise _bad_cursor()
    return at, job


def int_key(kind: str, cursor: str) -> int:
    key = decode_cursor(kind, cursor)
    if type(key) is not int or not 0 <= key < 2**63:
        raise _bad_cursor()
    return key


def _next_link(deps: Deps, path: str, params: Mapping[str, Any], cursor: str | None) -> str | None:
    if cursor is None:
        return None
    query = {k: str(v) for k, v in params.items() if v is not None and k != "cursor"}
    return deps.settings.api_base() + path + "?" + urlencode({**query, "cursor": cursor})


async def list_jobs(query: JobsQuery, caller: Caller, deps: Deps) -> JobsPage:
    after = jobs_key(query.cursor) if query.cursor else (None, None)
    rows = await for_org(deps.pool, caller.org_id).fetch(
        q.SELECT_JOBS_PAGE,
        caller.org_id,
        query.state,
        query.connection_id,
        *after,
        query.limit + 1,
    )
    shown = rows[: query.limit]
    items = [
        JobSummary(
            job_id=r["id"],
            connection_id=r["connection_id"],
            store_url=r["store_url"],
            kind=r["kind"],
            parent_id=r["parent_id"],
            state=r["state"],
            total=r["total"],
            done=r["done_count"],
            failed=r["failed_count"],
            store_total=r["store_total"],
            fetch_complete=r["fetch_done_at"] is not None,
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            updated_at=r["updated_at"],
            last_error=r["last_error"],
            status_url=status_url(deps, r["id"]),
        )
        for r in shown
    ]
    last = shown[-1] if len(rows) > query.limit else None
    cursor = (
        encode_cursor("jobs", [last["created_at"].isoformat(), str(last["id"])]) if last else None
    )
    params = query.model_dump(mode="json")
    return JobsPage(
        items=items, next_cursor=cursor, next=_next_link(deps, paths.JOBS_PATH, params, cursor)
    )


async def list_lines(job_id: UUID, query: LinesQuery, caller: Caller, deps: Deps) -> LinesPage:
    after = int_key("lines", query.cursor) if query.cursor else None
    async with for_org(deps.pool, caller.org_id).transaction() as conn:
        if not await conn.fetchval(q.JOB_EXISTS, job_id, caller.org_id):
            raise job_not_found()
        rows = await conn.fetch(
            q.SELECT_LINES_PAGE, job_id, caller.org_id, query.state, after, query.limit + 1
        )
    shown = rows[: query.limit]
    items = [LineSummary(**dict(r)) for r in shown]
    cursor = encode_cursor("lines", shown[-1]["woo_id"]) if len(rows) > query.limit else None
    path = paths.JOB_LINES_PATH.format(job_id=job_id)
    params = query.model_dump(mode="json")
    return LinesPage(items=items, next_cursor=cursor, next=_next_link(deps, path, params, cursor))


async def list_activity(
    job_id: UUID, query: ActivityQuery, caller: Caller, deps: Deps
) -> ActivityPage:
    after = int_key("activity", query.cursor) if query.cursor else None
    async with for_org(deps.pool, caller.org_id).transaction() as conn:
        if not await conn.fetchval(q.JOB_EXISTS, job_id, caller.org_id):
            raise job_not_found()
        rows = await conn.fetch(
            q.SELECT_ACTIVITY_PAGE, job_id, caller.org_id, after, query.limit + 1
        )
    shown = rows[: query.limit]
    items = [ActivityEntry(**dict(r), by=activity.who(r["event"], r["details"])) for r in shown]
    cursor = encode_cursor("activity", shown[-1]["id"]) if len(rows) > query.limit else None
    path = paths.JOB_ACTIVITY_PATH.format(job_id=job_id)
    params = query.model_dump(mode="json")
    return ActivityPage(
        items=items, next_cursor=cursor, next=_next_link(deps, path, params, cursor)
    )
