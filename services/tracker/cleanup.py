"""The scheduled cleanup, run by one tracker among its replicas.

Every replica runs a :class:`Cleaner`; the one holding a PostgreSQL session advisory lock
(:data:`CLEANUP_LOCK`) is the leader and cleans every ``cleanup_interval_s``, the others only
try to take the lock each interval. The lock lives on a connection of its own (not the pool's,
which would hand the session to other work), so it is held exactly as long as the leader's
session: a leader that stops, crashes or loses the database releases it, and another replica
takes over at its next try. The lock belongs to the database, so each database (each test's
included) has its own leader. Because it is a session lock, that connection must be a real
PostgreSQL session: ``WOOSYNC_SESSION_DATABASE_URL`` points it past a PgBouncer in transaction
pooling mode (a transaction pooler would hand the lock's server session to other clients, whose
pool resets run ``pg_advisory_unlock_all()``).

What one cleanup does, and why concurrent callers are safe anyway (the operator's
``woosync cleanup`` takes no lock), is in :mod:`shared.cleanup` and migration 0012.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import timedelta

import asyncpg

from shared import db
from shared.cleanup import CleanupReport, clean_finished_jobs
from shared.outage import OutageLog

log = logging.getLogger("woosync.tracker")

# Advisory lock keys of woosync: 7428101 migrations, 7428102 the test template, this one.
CLEANUP_LOCK = 7428112
TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
CONNECT_TIMEOUT_S = 10.0


def replica_name() -> str:
    """Who cleaned, in the audit rows and the logs: this host and process."""
    return f"tracker {socket.gethostname()} pid {os.getpid()}"


class Cleaner:
    """Leader election and the cleanup schedule of one tracker process (all its state here)."""

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
        self._dsn = dsn
        self._statement_cache_size = statement_cache_size
        self._retention = retention
        self._interval_s = interval_s
        self._batch_size = batch_size
        self.name = name or replica_name()
        self._conn: asyncpg.Connection | None = None
        self.leading = False
        self._database = OutageLog(log, "the database")

    async def tick(self) -> CleanupReport | None:
        """Take the lock if no one holds it; as the leader, clean. None when not leading."""
        if self._conn is None or self._conn.is_closed():
            self.leading = False
            self._conn = await asyncio.wait_for(
                db.connect(self._dsn, statement_cache_size=self._statement_cache_size),
                CONNECT_TIMEOUT_S,
            )
            await self._conn.execute("SET application_name = 'woosync-tracker-cleanup'")
        if not self.leading:
            self.leading = bool(await self._conn.fetchval(TRY_LOCK, CLEANUP_LOCK))
            if not self.leading:
                return None
            log.info("%s leads the cleanup (retention %s)", self.name, self._retention)
        report = await clean_finished_jobs(
            self._conn, retention=self._retention, batch_size=self._batch_size, by=self.name
        )
        if report.removed_anything:
            log.info(
                "cleanup: %s finished before now - %s, in %d batches",
                report.describe(),
                self._retention,
                report.batches,
            )
        return report

    async def run(self) -> None:
        """Every ``interval_s`` until cancelled; a failure drops the session (and with it the
        lock, if held) and is retried at the next interval."""
        try:
            while True:
                try:
                    await self.tick()
                    self._database.succeeded()
                except Exception as exc:
                    self._database.failed(exc, "cleaning up finished jobs")
                    await self._drop()
                await asyncio.sleep(self._interval_s)
        finally:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.leading = False
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
            if not conn.is_closed():
                conn.terminate()
