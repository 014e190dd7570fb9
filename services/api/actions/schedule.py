"""A store connection's schedule: set, read, clear, and the org's list (``shared.schedules``).

The rules (validation, the first fire, the audit rows) are shared with ``woosync schedule``;
this module turns their answers into HTTP: a schedule that cannot be kept is 422 naming its
field, a connection the org does not have (another org's included) is 404, and so is clearing
a schedule that is not there.
"""

from __future__ import annotations

from uuid import UUID

from services.api.actions.common import Answer
from services.api.deps import Deps
from services.api.errors import ApiError
from shared import schedules
from shared.auth import Caller

SUMMARY_SET = "Set (or replace) a store connection's schedule: an interval or a cron expression."
SUMMARY_GET = "A store connection's schedule."
SUMMARY_CLEAR = "Remove a store connection's schedule (no more syncs start by themselves)."
SUMMARY_LIST = "Every schedule of the organisation."


def connection_not_found() -> ApiError:
    # The same answer for a missing connection and another org's: ids are not probeable.
    return ApiError(404, "connection_not_found", "no such store connection")


def schedule_not_found() -> ApiError:
    return ApiError(404, "schedule_not_found", "the store connection has no schedule")


async def set_schedule(
    connection_id: UUID, body: schedules.ScheduleIn, caller: Caller, deps: Deps
) -> Answer:
    try:
        stored = await schedules.set_schedule(
            deps.pool,
            org_id=caller.org_id,
            connection_id=connection_id,
            schedule=body,
            min_interval_s=deps.settings.schedule_min_interval_s,
            actor=caller.actor(),
        )
    except schedules.InvalidSchedule as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    except schedules.UnknownConnection:
        raise connection_not_found() from None
    return Answer(stored)


async def get_schedule(connection_id: UUID, caller: Caller, deps: Deps) -> Answer:
    try:
        found = await schedules.get_schedule(
            deps.pool, org_id=caller.org_id, connection_id=connection_id
        )
    except schedules.UnknownConnection:
        raise connection_not_found() from None
    if found is None:
        raise schedule_not_found()
    return Answer(found)


async def clear_schedule(connection_id: UUID, caller: Caller, deps: Deps) -> Answer:
    try:
        removed = await schedules.clear_schedule(
            deps.pool, org_id=caller.org_id, connection_id=connection_id, actor=caller.actor()
        )
    except schedules.UnknownConnection:
        raise connection_not_found() from None
    if removed is None:
        raise schedule_not_found()
    return Answer(removed)


async def list_schedules(caller: Caller, deps: Deps) -> Answer:
    found = await schedules.list_schedules(deps.pool, org_id=caller.org_id)
    return Answer(schedules.ScheduleList(schedules=found))
