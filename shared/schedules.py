"""Schedules: a store connection's interval or cron expression, on which a sync starts by itself.

A schedule is one row of ``woo_sync_schedule`` (migration 0018) per connection. Setting it (the
api's ``PUT .../schedule`` or ``woosync schedule set``) validates it, computes its first fire
and writes ``schedule.set`` to the audit log; clearing it writes ``schedule.cleared``.

Firing (:func:`fire_due`) is the work of the one tracker holding the scheduler lock
(``services.tracker.scheduler``). For each due schedule, as that org, in one transaction under
the org's sync lock (the lock of ``start``): the schedule row is locked and checked due again,
its next fire is computed from *now* (:func:`next_after_due`: however many slots a leader that
was away has missed, the schedule fires once and then waits for its next future slot), and

* the connection has an open job: no second one (``schedule.skipped``, with that job);
* a cancelled job of the connection is still reading the store, or the org is at its cap of
  open syncs: ``schedule.skipped`` too;
* else a draft job is made exactly as ``start`` makes one (``shared.syncstart``) and
  ``schedule.fired`` names it, actor ``scheduler``; after the commit ``sync.requested`` is
  published. The job carries no key: the fetcher loads the connection's current one, so a key
  rotated between fires is what the next fire uses, and a key the store has revoked fails the
  job (``store refused the credentials``) like any sync.

A draft the scheduler finds on a due schedule (a publish that failed) is handed to the fetcher
again instead of being skipped forever.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field

from shared import activity, syncstart
from shared.db import for_org
from shared.lifecycle import JobState
from shared.settings import Settings

log = logging.getLogger("woosync.schedules")

# The gaps between a cron expression's fires that are checked against the minimum interval.
CRON_GAPS_CHECKED = 48
MAX_INTERVAL_S = 366 * 86_400  # a year; longer is a cron expression's job
DUE_BATCH = 100  # schedules read per look of the leader (the rest at its next look)


class InvalidSchedule(ValueError):
    """A schedule that cannot be kept: ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownConnection(LookupError):
    """The org has no such store connection (another org's looks the same)."""


class ScheduleIn(BaseModel):
    """A schedule as it is set: exactly one of ``interval_s`` and ``cron``."""

    model_config = ConfigDict(extra="forbid")

    interval_s: int | None = Field(
        None,
        ge=1,
        le=MAX_INTERVAL_S,
        description="Seconds between syncs (at least WOOSYNC_SCHEDULE_MIN_INTERVAL_S, at most "
        "a year).",
    )
    cron: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="A cron expression (minute hour day month weekday), read in timezone.",
    )
    timezone: str = Field(
        "UTC", min_length=1, max_length=64, description="IANA zone of cron, e.g. Europe/Berlin."
    )
    enabled: bool = True


class ScheduleOut(BaseModel):
    """A connection's schedule as stored."""

    connection_id: UUID
    interval_s: int | None
    cron: str | None
    timezone: str
    enabled: bool
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_job_id: UUID | None
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


@dataclass(frozen=True)
class Spec:
    """What decides the fires of a schedule."""

    interval_s: int | None
    cron: str | None
    timezone: str = "UTC"

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def validate(schedule: ScheduleIn, *, min_interval_s: int) -> Spec:
    """The schedule's spec, or :class:`InvalidSchedule` naming the field that is wrong."""
    if (schedule.interval_s is None) == (schedule.cron is None):
        raise InvalidSchedule("interval_s", "give exactly one of interval_s and cron")
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule("timezone", f"unknown time zone {schedule.timezone!r}") from None
    if schedule.interval_s is not None:
        if schedule.interval_s < min_interval_s:
            raise InvalidSchedule(
                "interval_s",
                f"must be at least {min_interval_s} seconds, not {schedule.interval_s}",
            )
        return Spec(schedule.interval_s, None, schedule.timezone)
    expression = " ".join((schedule.cron or "").split())
    try:
        fires = CronSim(expression, datetime.now(zone))
        times = [next(fires) for _ in range(CRON_GAPS_CHECKED + 1)]
    except (CronSimError, StopIteration) as exc:
        raise InvalidSchedule("cron", f"not a cron expression we can read ({exc})") from None
    shortest = min((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False))
    if shortest < min_interval_s:
        raise InvalidSchedule(
            "cron", f"fires {shortest:.0f} s apart; the minimum is {min_interval_s} seconds"
        )
    return Spec(None, expression, schedule.timezone)


def first_fire(spec: Spec, now: datetime) -> datetime:
    """When a schedule set at ``now`` fires first: one interval on, or the cron's next time."""
    if spec.interval_s is not None:
        return now + timedelta(seconds=spec.interval_s)
    return _cron_after(spec, now)


def next_after_due(spec: Spec, due: datetime, now: datetime) -> datetime:
    """The next fire of a schedule due at ``due`` that fires at ``now``: the first slot after
    ``now``, however many were missed (they are not caught up: one fire stands for them all).
    An interval keeps its phase (``due`` plus whole intervals)."""
    if spec.interval_s is not None:
        step = timedelta(seconds=spec.interval_s)
        if due > now:
            return due + step
        return due + step * (int((now - due) / step) + 1)
    return _cron_after(spec, max(due, now))


def missed_slots(spec: Spec, due: datetime, now: datetime) -> int:
    """How many slots from ``due`` up to ``now`` the fire at ``now`` stands for (at least 1)."""
    if spec.interval_s is not None:
        return int((now - due) / timedelta(seconds=spec.interval_s)) + 1 if now >= due else 1
    count, fires = 1, CronSim(spec.cron or "", due.astimezone(spec.zone()))
    for at in fires:
        if at > now or count >= 1000:
            break
        count += 1
    return count


def _cron_after(spec: Spec, moment: datetime) -> datetime:
    return next(CronSim(spec.cron or "", moment.astimezone(spec.zone()))).astimezone(UTC)


def spec_of(row: Mapping[str, Any]) -> Spec:
    return Spec(row["interval_s"], row["cron"], row["timezone"])


# -- SQL (all as one org: woo_sync_schedule has FORCE RLS, migration 0018) ----------------------

SCHEDULE_COLUMNS = """connection_id, interval_s, cron, timezone, enabled, next_fire_at,
       last_fired_at, last_job_id, created_at, updated_at"""

# No row back: the org has no such connection (another org's is invisible under its policy).
UPSERT_SCHEDULE = f"""
INSERT INTO woo_sync_schedule AS s
    (connection_id, org_id, interval_s, cron, timezone, enabled, next_fire_at)
SELECT c.id, c.org_id, $3, $4, $5, $6, $7
FROM woo_connections c
WHERE c.org_id = $1 AND c.id = $2
ON CONFLICT (connection_id) DO UPDATE
SET interval_s = EXCLUDED.interval_s, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
    enabled = EXCLUDED.enabled, next_fire_at = EXCLUDED.next_fire_at, updated_at = now()
RETURNING {SCHEDULE_COLUMNS}
"""

SELECT_SCHEDULE = f"""
SELECT {SCHEDULE_COLUMNS} FROM woo_sync_schedule WHERE org_id = $1 AND connection_id = $2
"""

SELECT_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM woo_sync_schedule
WHERE org_id = $1
ORDER BY created_at, connection_id
"""

DELETE_SCHEDULE = f"""
DELETE FROM woo_sync_schedule WHERE org_id = $1 AND connection_id = $2
RETURNING {SCHEDULE_COLUMNS}
"""

# Operator sessions only (``woosync schedule``, operator_access of 0008): across orgs.
ORG_OF_CONNECTION = "SELECT org_id FROM woo_connections WHERE id = $1"
SELECT_ALL_SCHEDULES = f"""
SELECT org_id, {SCHEDULE_COLUMNS} FROM woo_sync_schedule
WHERE $1::uuid IS NULL OR org_id = $1
ORDER BY org_id, created_at, connection_id
"""

CONNECTION_EXISTS = "SELECT EXISTS (SELECT 1 FROM woo_connections WHERE org_id = $1 AND id = $2)"

# The leader's look across orgs (migration 0018): ids and orgs of due schedules only.
DUE_SCHEDULES = "SELECT connection_id, org_id FROM woosync_due_schedules($1)"

# A due schedule of the org, locked for its fire; a row another fire holds is skipped.
LOCK_DUE_SCHEDULE = """
SELECT s.connection_id, s.interval_s, s.cron, s.timezone, s.next_fire_at, now() AS now,
       c.store_url, c.auth_mode, c.verify_tls
FROM woo_sync_schedule s
JOIN woo_connections c ON c.id = s.connection_id AND c.org_id = s.org_id
WHERE s.org_id = $1 AND s.connection_id = $2 AND s.enabled AND s.next_fire_at <= now()
FOR UPDATE OF s SKIP LOCKED
"""

MARK_FIRED = """
UPDATE woo_sync_schedule
SET next_fire_at = $3, last_fired_at = now(), last_job_id = coalesce($4, last_job_id),
    updated_at = now()
WHERE org_id = $1 AND connection_id = $2
"""


def out(row: Mapping[str, Any]) -> ScheduleOut:
    return ScheduleOut.model_validate(dict(row))


async def set_schedule(
    pool: asyncpg.Pool,
    *,
    org_id: UUID,
    connection_id: UUID,
    schedule: ScheduleIn,
    min_interval_s: int,
    actor: Mapping[str, Any],
) -> ScheduleOut:
    """Store the connection's schedule (replacing one it had).

    Raises :class:`InvalidSchedule` before anything is written, :class:`UnknownConnection` when
    the org has no such connection (another org's included).
    """
    spec = validate(schedule, min_interval_s=min_interval_s)
    async with for_org(pool, org_id).transaction() as conn:
        now: datetime = await conn.fetchval("SELECT now()")
        next_at = first_fire(spec, now) if schedule.enabled else None
        before = await conn.fetchrow(SELECT_SCHEDULE, org_id, connection_id)
        row = await conn.fetchrow(
            UPSERT_SCHEDULE,
            org_id,
            connection_id,
            spec.interval_s,
            spec.cron,
            spec.timezone,
            schedule.enabled,
            next_at,
        )
        if row is None:
            raise UnknownConnection(connection_id)
        await activity.record(
            conn,
            org_id=org_id,
            job_id=None,
            event="schedule.set",
            details={
                "connection_id": str(connection_id),
                "interval_s": spec.interval_s,
                "cron": spec.cron,
                "timezone": spec.timezone,
                "enabled": schedule.enabled,
                "next_fire_at": next_at.isoformat() if next_at else None,
                "replaced": _describe(before) if before is not None else None,
                **actor,
            },
        )
        return out(row)


async def get_schedule(
    pool: asyncpg.Pool, *, org_id: UUID, connection_id: UUID
) -> ScheduleOut | None:
    """The connection's schedule, None when it has none; :class:`UnknownConnection` when the org
    has no such connection."""
    async with for_org(pool, org_id).transaction() as conn:
        row = await conn.fetchrow(SELECT_SCHEDULE, org_id, connection_id)
        if row is None and not await conn.fetchval(CONNECTION_EXISTS, org_id, connection_id):
            raise UnknownConnection(connection_id)
        return out(row) if row is not None else None


async def list_schedules(pool: asyncpg.Pool, *, org_id: UUID) -> list[ScheduleOut]:
    return [out(row) for row in await for_org(pool, org_id).fetch(SELECT_SCHEDULES, org_id)]


async def clear_schedule(
    pool: asyncpg.Pool, *, org_id: UUID, connection_id: UUID, actor: Mapping[str, Any]
) -> ScheduleOut | None:
    """Remove the connection's schedule; the removed one, or None if it had none;
    :class:`UnknownConnection` when the org has no such connection."""
    async with for_org(pool, org_id).transaction() as conn:
        row = await conn.fetchrow(DELETE_SCHEDULE, org_id, connection_id)
        if row is None:
            if not await conn.fetchval(CONNECTION_EXISTS, org_id, connection_id):
                raise UnknownConnection(connection_id)
            return None
        await activity.record(
            conn,
            org_id=org_id,
            job_id=None,
            event="schedule.cleared",
            details={"connection_id": str(connection_id), "was": _describe(row), **actor},
        )
        return out(row)


def _describe(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "interval_s": row["interval_s"],
        "cron": row["cron"],
        "timezone": row["timezone"],
        "enabled": row["enabled"],
    }


# -- firing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fire:
    """What one due schedule came to."""

    org_id: UUID
    connection_id: UUID
    event: str  # schedule.fired or schedule.skipped
    job_id: UUID | None
    state: str | None = None  # the fired job's state after its hand-over


async def fire_due(
    pool: asyncpg.Pool,
    publish: syncstart.Publish,
    settings: Settings,
    *,
    by: str,
    limit: int = DUE_BATCH,
) -> list[Fire]:
    """Fire every due schedule (at most ``limit``); what each came to.

    A failure of one schedule (its publish, say) is logged and leaves the others to fire; the
    schedule has moved on to its next slot, and a job left a draft is handed over at that fire.
    """
    due = await pool.fetch(DUE_SCHEDULES, limit)
    fires: list[Fire] = []
    for row in due:
        try:
            fire = await fire_one(
                pool,
                publish,
                settings,
                org_id=row["org_id"],
                connection_id=row["connection_id"],
                by=by,
            )
        except Exception as exc:
            log.warning(
                "schedule of connection %s: fire failed (%s)",
                row["connection_id"],
                type(exc).__name__,
            )
            continue
        if fire is not None:
            fires.append(fire)
    return fires


async def fire_one(
    pool: asyncpg.Pool,
    publish: syncstart.Publish,
    settings: Settings,
    *,
    org_id: UUID,
    connection_id: UUID,
    by: str,
) -> Fire | None:
    """Fire one schedule if it is still due; None when it no longer is (another fire took it)."""
    actor = {"by": "scheduler", "replica": by}
    draft: UUID | None = None
    async with for_org(pool, org_id).transaction() as conn:
        await conn.execute(syncstart.LOCK_ORG_SYNCS, org_id)
        row = await conn.fetchrow(LOCK_DUE_SCHEDULE, org_id, connection_id)
        if row is None:
            return None
        spec, now, due = spec_of(row), row["now"], row["next_fire_at"]
        next_at = next_after_due(spec, due, now)
        slot = {
            "connection_id": str(connection_id),
            "due_at": due.isoformat(),
            "slots": missed_slots(spec, due, now),
            "next_fire_at": next_at.isoformat(),
        }
        running = await conn.fetchrow(
            syncstart.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id
        )
        limit = settings.max_concurrent_syncs_per_org
        reason = None
        if running is not None:
            reason = "the connection has an open job"
            if running["state"] == JobState.DRAFT and running["kind"] == "sync":
                draft = running["id"]
        elif stopping := await conn.fetchval(
            syncstart.SELECT_OTHER_FETCHING_JOB, org_id, connection_id, uuid4()
        ):
            reason = f"cancelled job {stopping} is still reading the store"
        elif await conn.fetchval(syncstart.COUNT_OPEN_JOBS, org_id) >= limit:
            reason = f"the organisation has {limit} syncs open (its limit)"
        if reason is not None:
            await conn.execute(MARK_FIRED, org_id, connection_id, next_at, None)
            await activity.record(
                conn,
                org_id=org_id,
                job_id=running["id"] if running is not None else None,
                event="schedule.skipped",
                details={
                    **slot,
                    "reason": reason,
                    "open_job_id": str(running["id"]) if running is not None else None,
                    "open_job_state": running["state"] if running is not None else None,
                    **actor,
                },
            )
            fire = Fire(org_id, connection_id, "schedule.skipped", running and running["id"])
        else:
            job_id = uuid4()
            await syncstart.insert_sync_job(
                conn,
                job_id=job_id,
                org_id=org_id,
                connection_id=connection_id,
                store_url=row["store_url"],
                auth=row["auth_mode"],
                verify_tls=row["verify_tls"],
                batch_size=settings.default_batch_size,
                concurrency=None,  # adapted to the store (shared.storelimit)
                store_total=None,
                idempotency_key=None,
                actor=actor,
            )
            await conn.execute(MARK_FIRED, org_id, connection_id, next_at, job_id)
            await activity.record(
                conn,
                org_id=org_id,
                job_id=job_id,
                event="schedule.fired",
                details={**slot, "job_id": str(job_id), **actor},
            )
            fire = Fire(org_id, connection_id, "schedule.fired", job_id)
            draft = job_id
    log.info("schedule of connection %s: %s (job %s)", connection_id, fire.event, fire.job_id)
    if draft is None:
        return fire
    # After the commit, as start does: the fetcher never sees a job that is not yet visible.
    state = await syncstart.hand_to_fetcher(
        pool, publish, job_id=draft, org_id=org_id, connection_id=connection_id, actor=actor
    )
    return Fire(fire.org_id, fire.connection_id, fire.event, fire.job_id, state)
