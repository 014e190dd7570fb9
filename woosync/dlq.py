"""``woosync dlq``: read the parking (dead-letter) queues and replay them once the cause is fixed.

Settings come from the environment like every service (``WOOSYNC_AMQP_URL``,
``WOOSYNC_DATABASE_URL``, ``WOOSYNC_NAMESPACE``). The work is done by
:mod:`shared.parking` (reading the queues) and :mod:`shared.replay` (moving batches back),
which the api's ``replay`` action uses too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar, get_args
from uuid import UUID

import aio_pika.exceptions
import click

from shared import db
from shared.parked import ParkedMessage, QueueName
from shared.parking import DEFAULT_LIMIT, Listing, list_parked, open_connection
from shared.replay import ReplayReport, replay
from shared.settings import Settings
from shared.topology import Topology

_IDS_SHOWN = 20
T = TypeVar("T")


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; a broker that cannot be reached or a missing queue is a one-line error."""
    try:
        return asyncio.run(work)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def _topology(settings: Settings) -> Topology:
    return Topology(settings.namespace, tuple(settings.retry_delays_ms))


@click.group()
def dlq() -> None:
    """Parking (dead-letter) queues: list what is parked, replay it after fixing the cause."""


@dlq.command("list")
@click.option("--job", "job_id", type=click.UUID, help="Only this job's messages.")
@click.option(
    "--queue",
    type=click.Choice(get_args(QueueName)),
    default="syncer",
    show_default=True,
    help="Whose parking queue.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--limit", default=DEFAULT_LIMIT, show_default=True, help="Read at most this many.")
def list_command(job_id: UUID | None, queue: QueueName, as_json: bool, limit: int) -> None:
    """Show parked messages without consuming them (they are read and given back in order)."""
    settings = Settings()

    async def run() -> Listing:
        connection = await open_connection(settings.amqp_url)
        async with connection:
            return await list_parked(
                connection, _topology(settings), queue=queue, job_id=job_id, limit=limit
            )

    listing = _run(run())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "queue": listing.queue,
                    "more": listing.more,
                    "messages": [msg.as_json() for msg in listing.messages],
                }
            )
        )
        return
    click.echo(f"{listing.queue}: {len(listing.messages)} message(s)")
    for msg in listing.messages:
        click.echo(_line(msg))
    if listing.more:
        click.echo(f"(stopped after {limit} messages; more are parked)")


def _line(msg: ParkedMessage) -> str:
    if msg.kind == "malformed":
        return f"- {msg.message_id or '(no id)'}  malformed\n    {msg.detail}"
    shown = ", ".join(map(str, msg.woo_ids[:_IDS_SHOWN]))
    if len(msg.woo_ids) > _IDS_SHOWN:
        shown += f", … ({len(msg.woo_ids) - _IDS_SHOWN} more)"
    attempts = "" if msg.attempts is None else f"  attempts {msg.attempts}"
    text = (
        f"- {msg.message_id}  {msg.kind}  job {msg.job_id}  org {msg.org_id}{attempts}\n"
        f"    {msg.customers} customer(s): {shown or '-'}"
    )
    return text + (f"\n    error: {msg.error}" if msg.error else "")


@dlq.command("replay")
@click.option("--job", "job_id", type=click.UUID, help="Only this job's messages.")
@click.option("--limit", default=DEFAULT_LIMIT, show_default=True, help="Read at most this many.")
def replay_command(job_id: UUID | None, limit: int) -> None:
    """Move parked customer batches back to the syncer (malformed ones stay parked).

    Failed lines of those customers become pending and a job that failed because of them is
    re-opened, so it can finish as done. Running it twice changes nothing the second time.
    """
    settings = Settings()

    async def run() -> ReplayReport:
        pool = await db.create_pool(
            settings.admin_database_url, min_size=1, max_size=2, operator=True
        )
        try:
            connection = await open_connection(settings.amqp_url)
            async with connection:
                return await replay(
                    connection,
                    pool,
                    _topology(settings),
                    job_id=job_id,
                    actor={"by": "cli"},
                    limit=limit,
                )
        finally:
            await pool.close()

    report = _run(run())
    click.echo(
        f"replayed {report.replayed} message(s) ({report.customers} customer(s)) to "
        f"{report.work_queue}; {report.lines_reopened} failed line(s) re-opened; "
        f"{len(report.jobs_reopened)} job(s) re-opened"
    )
    if report.kept:
        click.echo(f"left parked: {report.kept} (malformed, or their job does not exist)")
    if report.more:
        click.echo(f"stopped after {limit} messages; run again for the rest")
