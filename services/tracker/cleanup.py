"""The scheduled cleanup, run by one tracker among its replicas.

Every replica runs a :class:`Cleaner`; the one holding the PostgreSQL session advisory lock
:data:`CLEANUP_LOCK` is the leader and cleans every ``cleanup_interval_s``, the others only try
to take the lock each interval (``services.tracker.leader``, shared with the scheduler). The
lock's session connects to ``WOOSYNC_SESSION_DATABASE_URL`` when set, past a PgBouncer in
transaction pooling mode (docs/operations.md, "Running several replicas").

What one cleanup does, and why concurrent callers are safe anyway (the operator's
``woosync cleanup`` takes no lock), is in :mod:`shared.cleanup` and migration 0012.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg

from services.tracker.leader import LeaderLoop, replica_name
from shared import db
from shared.cleanup import CleanupReport, clean_finished_jobs

log = logging.getLogger("woosync.tracker")

# Advisory lock keys of woosync: 7428101 migrations, 7428102 the test template, this one, and
# the scheduler's (services.tracker.scheduler).
CLEANUP_LOCK = 7428112

__all__ = ["CLEANUP_LOCK", "Cleaner", "replica_name"]


class Cleaner(LeaderLoop):
    """The cleanup duty: the leader removes finished jobs older than the retention."""

    lock_key = CLEANUP_LOCK
    duty = "cleanup"

    def __init__(
        self,
        dsn: str,
        *,
        retention: timedelta,
        interval_s: float,
        batch_size: int,
        name: str | None = None,
        statement_cache_size: int = db.STATEMENT_CACHE_SIZE,
    ) -> None:
        super().__init__(
            dsn, interval_s=interval_s, name=name, statement_cache_size=statement_cache_size
        )
        self._retention = retention
        self._batch_size = batch_size

    def _took_lead(self) -> None:
        log.info("%s leads the cleanup (retention %s)", self.name, self._retention)

    async def work(self, conn: asyncpg.Connection) -> CleanupReport:
        report = await clean_finished_jobs(
            conn, retention=self._retention, batch_size=self._batch_size, by=self.name
        )
        if report.removed_anything:
            log.info(
                "cleanup: %s finished before now - %s, in %d batches",
                report.describe(),
                self._retention,
                report.batches,
            )
        return report
