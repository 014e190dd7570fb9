"""One leader among the tracker's replicas, by a PostgreSQL session advisory lock.

Every replica runs a :class:`LeaderLoop` per duty (the cleanup, the schedules); the one holding
the duty's lock is its leader and does the work every ``interval_s``, the others only try to take
the lock each interval. The lock lives on a connection of its own (not the pool's, which would
hand the session to other work), so it is held exactly as long as the leader's session: a leader
that stops, crashes or loses the database releases it, and another replica takes over at its
next try. The lock belongs to the database, so each database (each test's included) has its own
leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from abc import ABC, abstractmethod
from typing import Any

import asyncpg

from shared import db
from shared.outage import OutageLog

log = logging.getLogger("woosync.tracker")

TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
CONNECT_TIMEOUT_S = 10.0


def replica_name() -> str:
    """Who did it, in the audit rows and the logs: this host and process."""
    return f"tracker {socket.gethostname()} pid {os.getpid()}"


class LeaderLoop(ABC):
    """Leader election and the interval of one duty of one tracker process (all its state here).

    Subclasses give the lock key, a name for the session and the logs, and :meth:`work`.
    """

    lock_key: int
    duty: str  # "cleanup", "scheduler": the session's application_name and the logs

    def __init__(
        self,
        dsn: str,
        *,
        interval_s: float,
        name: str | None = None,
        statement_cache_size: int = db.STATEMENT_CACHE_SIZE,
    ) -> None:
        self._dsn = dsn
        self._statement_cache_size = statement_cache_size
        self._interval_s = interval_s
        self.name = name or replica_name()
        self._conn: asyncpg.Connection | None = None
        self.leading = False
        self._database = OutageLog(log, "the database")

    @abstractmethod
    async def work(self, conn: asyncpg.Connection) -> Any:
        """The duty, done by the leader on its lock's connection."""

    def _took_lead(self) -> None:
        log.info("%s leads the %s", self.name, self.duty)

    async def tick(self) -> Any:
        """Take the lock if no one holds it; as the leader, work. None when not leading."""
        if self._conn is None or self._conn.is_closed():
            self.leading = False
            self._conn = await asyncio.wait_for(
                db.connect(self._dsn, statement_cache_size=self._statement_cache_size),
                CONNECT_TIMEOUT_S,
            )
            await self._conn.execute(f"SET application_name = 'woosync-tracker-{self.duty}'")
        if not self.leading:
            self.leading = bool(await self._conn.fetchval(TRY_LOCK, self.lock_key))
            if not self.leading:
                return None
            self._took_lead()
        return await self.work(self._conn)

    async def run(self) -> None:
        """Every ``interval_s`` until cancelled; a failure drops the session (and with it the
        lock, if held) and is retried at the next interval."""
        try:
            while True:
                try:
                    await self.tick()
                    self._database.succeeded()
                except Exception as exc:
                    self._database.failed(exc, f"the {self.duty}")
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
