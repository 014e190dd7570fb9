"""Removing finished jobs, their lines and their pages once they are older than the retention.

The rules live in one database function (migration 0012, ``woosync_cleanup_finished_jobs``):
which jobs count (a final state and a finishing time older than the retention), the minimum
retention, the batch bound, the locks, and the ``jobs.removed`` summary it writes to the audit
log in the same transaction. The services' role may execute it but deletes nothing else, and the
audit log stays append-only. Each call is one small transaction; :func:`clean_finished_jobs`
calls it until a call removes nothing. The final states come from :mod:`shared.lifecycle`, so a
final state added there is cleaned up too.

Who calls it: the tracker replica that holds the cleanup lock (``services.tracker.cleanup``), on
a schedule, and an operator with ``woosync cleanup``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from shared.lifecycle import FINAL_JOB_STATES

# One batch: ($1 final states, $2 retention, $3 batch size, $4 dry run, $5 who runs it).
CLEANUP_BATCH = """
SELECT jobs, lines, pages
FROM woosync_cleanup_finished_jobs($1::text[], $2::interval, $3::int, $4::boolean, $5::text)
"""

MIN_RETENTION = timedelta(hours=1)  # the function refuses less


@dataclass
class CleanupReport:
    """What a cleanup removed (or, for a dry run, would remove)."""

    jobs: int = 0
    lines: int = 0
    pages: int = 0
    batches: int = 0  # calls that removed something

    @property
    def removed_anything(self) -> bool:
        return bool(self.jobs or self.lines or self.pages)

    def describe(self, *, dry_run: bool = False) -> str:
        verb = "would remove" if dry_run else "removed"
        return f"{verb} {self.jobs} jobs, {self.lines} lines, {self.pages} pages"


def final_states() -> list[str]:
    return sorted(state.value for state in FINAL_JOB_STATES)


async def clean_batch(
    conn: asyncpg.Connection,
    *,
    retention: timedelta,
    batch_size: int,
    by: str,
    dry_run: bool = False,
) -> CleanupReport:
    """One call of the database function (its own transaction unless ``conn`` is in one)."""
    row = await conn.fetchrow(CLEANUP_BATCH, final_states(), retention, batch_size, dry_run, by)
    assert row is not None  # the function always returns one row
    report = CleanupReport(row["jobs"], row["lines"], row["pages"])
    report.batches = int(report.removed_anything)
    return report


async def clean_finished_jobs(
    conn: asyncpg.Connection,
    *,
    retention: timedelta,
    batch_size: int,
    by: str,
    dry_run: bool = False,
) -> CleanupReport:
    """Remove every finished job older than ``retention`` with its lines and pages, a batch of
    at most ``batch_size`` rows per transaction, until nothing is left; what was removed.

    ``dry_run`` counts what would be removed and changes nothing (the audit log included).
    ``by`` names the caller in the audit rows. Jobs other callers hold locked are left to them.
    """
    total = CleanupReport()
    if dry_run:
        return await clean_batch(
            conn, retention=retention, batch_size=batch_size, by=by, dry_run=True
        )
    while True:
        batch = await clean_batch(conn, retention=retention, batch_size=batch_size, by=by)
        if not batch.removed_anything:
            return total
        total.jobs += batch.jobs
        total.lines += batch.lines
        total.pages += batch.pages
        total.batches += 1
