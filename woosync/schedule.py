"""``woosync schedule set|show|clear|list``: store connections' schedules, from the operator's
shell.

An operator command over the schema owner's database URL like ``woosync key``: it works when the
api is down or no API key is at hand, and for any org (a connection id names its org). The
rules are the api's own (``shared.schedules``: validation, first fire, the ``schedule.set`` and
``schedule.cleared`` audit rows, here with actor ``cli``); an org's clients use the api's
``/connections/{id}/schedule`` routes. Output is JSON, for scripts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar
from uuid import UUID

import asyncpg
import click

from shared import db, schedules
from shared.auth import CLI_ACTOR
from shared.settings import Settings

T = TypeVar("T")


def _with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def run() -> T:
        pool = await db.create_pool(
            Settings().admin_database_url, min_size=1, max_size=1, operator=True
        )
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _echo(schedule: schedules.ScheduleOut, org_id: UUID) -> None:
    click.echo(json.dumps({"org_id": str(org_id), **schedule.model_dump(mode="json")}))


def _on_connection(
    connection_id: UUID, work: Callable[[asyncpg.Pool, UUID], Awaitable[T]]
) -> tuple[UUID, T]:
    """``work`` on the pool with the connection's org; exits 1 when there is no connection."""

    async def run(pool: asyncpg.Pool) -> tuple[UUID, T]:
        org_id: UUID | None = await pool.fetchval(schedules.ORG_OF_CONNECTION, connection_id)
        if org_id is None:
            raise schedules.UnknownConnection(connection_id)
        return org_id, await work(pool, org_id)

    try:
        return _with_pool(run)
    except schedules.UnknownConnection:
        _fail(f"no store connection {connection_id}")


@click.group()
def schedule() -> None:
    """Schedules of store connections: set, show, clear, list."""


@schedule.command("set")
@click.argument("connection_id", type=click.UUID)
@click.option("--every", "interval_s", type=int, help="Seconds between syncs.")
@click.option("--cron", help="A cron expression: minute hour day month weekday.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone of --cron.")
@click.option("--disabled", is_flag=True, help="Keep the schedule but fire nothing.")
def set_command(
    connection_id: UUID, interval_s: int | None, cron: str | None, timezone: str, disabled: bool
) -> None:
    """Give CONNECTION_ID a schedule (--every or --cron), replacing the one it had."""
    try:
        wanted = schedules.ScheduleIn(
            interval_s=interval_s, cron=cron, timezone=timezone, enabled=not disabled
        )
    except ValueError as exc:
        raise click.UsageError(str(exc).splitlines()[0]) from None

    async def work(pool: asyncpg.Pool, org_id: UUID) -> schedules.ScheduleOut:
        return await schedules.set_schedule(
            pool,
            org_id=org_id,
            connection_id=connection_id,
            schedule=wanted,
            min_interval_s=Settings().schedule_min_interval_s,
            actor=CLI_ACTOR,
        )

    try:
        org_id, stored = _on_connection(connection_id, work)
    except schedules.InvalidSchedule as exc:
        hint = {"interval_s": "--every", "cron": "--cron", "timezone": "--timezone"}[exc.field]
        raise click.BadParameter(str(exc).split(": ", 1)[1], param_hint=hint) from None
    _echo(stored, org_id)


@schedule.command("show")
@click.argument("connection_id", type=click.UUID)
def show_command(connection_id: UUID) -> None:
    """CONNECTION_ID's schedule, with its next and last fire and last job."""
    org_id, found = _on_connection(
        connection_id,
        lambda pool, org_id: schedules.get_schedule(
            pool, org_id=org_id, connection_id=connection_id
        ),
    )
    if found is None:
        _fail(f"store connection {connection_id} has no schedule")
    _echo(found, org_id)


@schedule.command("clear")
@click.argument("connection_id", type=click.UUID)
def clear_command(connection_id: UUID) -> None:
    """Remove CONNECTION_ID's schedule; prints what it was."""
    org_id, removed = _on_connection(
        connection_id,
        lambda pool, org_id: schedules.clear_schedule(
            pool, org_id=org_id, connection_id=connection_id, actor=CLI_ACTOR
        ),
    )
    if removed is None:
        _fail(f"store connection {connection_id} has no schedule")
    _echo(removed, org_id)


@schedule.command("list")
@click.option("--org", "org_id", type=click.UUID, help="Only this org's schedules.")
def list_command(org_id: UUID | None) -> None:
    """One JSON line per schedule."""
    rows = _with_pool(lambda pool: pool.fetch(schedules.SELECT_ALL_SCHEDULES, org_id))
    for row in rows:
        _echo(schedules.out(row), row["org_id"])
