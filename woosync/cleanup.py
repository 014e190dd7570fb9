"""``woosync cleanup``: what the tracker's leader does on its schedule, run by hand.

Runs as the schema's owner (``WOOSYNC_ADMIN_DATABASE_URL``, an operator session) through the
same database function as the tracker (``shared.cleanup``), so the same rules hold: only
finished jobs older than the retention go, a batch per transaction, each batch summarised in the
audit log. It takes no leader lock: the function skips the jobs a running tracker holds, so the
two may run at once. ``--dry-run`` counts and changes nothing.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import click

from shared import db
from shared.cleanup import CleanupReport, clean_finished_jobs
from shared.settings import Settings

OPERATOR = "woosync cleanup"


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    default=None,
    help="Remove jobs finished longer ago than this  [default: WOOSYNC_RETENTION_DAYS]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Rows per transaction  [default: WOOSYNC_CLEANUP_BATCH_SIZE]",
)
def cleanup(dry_run: bool, retention_days: int | None, batch_size: int | None) -> None:
    """Remove finished jobs, their lines and pages, older than the retention.

    Each batch writes a jobs.removed summary to the audit log of each org it touched; the
    audit log itself is never cleaned."""
    settings = Settings()
    days = retention_days or settings.retention_days
    retention = timedelta(days=days)

    async def run() -> CleanupReport:
        conn = await db.connect(settings.admin_database_url, operator=True)
        try:
            return await clean_finished_jobs(
                conn,
                retention=retention,
                batch_size=batch_size or settings.cleanup_batch_size,
                by=OPERATOR,
                dry_run=dry_run,
            )
        finally:
            await conn.close()

    report = asyncio.run(run())
    click.echo(f"{report.describe(dry_run=dry_run)} (finished more than {days} days ago)")
