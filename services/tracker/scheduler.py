"""The schedules, fired by one tracker among its replicas.

Every replica runs a :class:`Scheduler`; the one holding :data:`SCHEDULER_LOCK` (a lock of its
own, so the cleanup and the schedules may lead from different replicas) looks for due schedules
every ``scheduler_interval_s`` and fires them (``shared.schedules.fire_due``). A leader that
stops releases the lock with its session and another replica takes over at its next look; a
schedule that fell due meanwhile fires once then. Should two replicas both believe they lead
for a moment (a session lost but not yet noticed), a slot still fires once: each fire locks its
schedule row and checks it is still due (migration 0018).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from faststream.rabbit import RabbitBroker

from services.tracker.leader import LeaderLoop
from shared.broker import publish
from shared.messages import Message
from shared.schedules import Fire, fire_due
from shared.settings import Settings
from shared.syncstart import Publish
from shared.topology import Topology

log = logging.getLogger("woosync.tracker")

SCHEDULER_LOCK = 7428113
PUBLISH_TIMEOUT_S = 10.0


async def publish_confirmed(
    broker: RabbitBroker, topology: Topology, messages: list[Message]
) -> None:
    """Publish with confirms, bounded in time (a broker that does not confirm is not there)."""
    async with asyncio.timeout(PUBLISH_TIMEOUT_S):
        for message in messages:
            await publish(broker, topology, message)


class Scheduler(LeaderLoop):
    """The schedules duty: the leader fires what is due, across every org."""

    lock_key = SCHEDULER_LOCK
    duty = "scheduler"

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        publish: Publish,
        settings: Settings,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(
            dsn,
            interval_s=settings.scheduler_interval_s,
            name=name,
            statement_cache_size=settings.db_statement_cache_size,
        )
        self._pool = pool
        self._publish = publish  # publish_confirmed with the tracker's broker
        self._settings = settings

    async def work(self, conn: asyncpg.Connection) -> list[Fire]:
        # The lock's connection only holds the lock; fires run as their org on the pool.
        return await fire_due(self._pool, self._publish, self._settings, by=self.name)
