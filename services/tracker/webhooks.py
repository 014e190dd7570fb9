"""The webhook check, run by one tracker among its replicas (the leader pattern of
``services.tracker.cleanup``, with a lock of its own).

Every ``webhook_check_interval_s`` the leader lists, for each connection with webhooks (of any
org, through migration 0019's ``woosync_webhook_connections``), the store's webhooks: one that
WooCommerce disabled after failed deliveries is set ``active`` again, one that is gone is
re-created, and either is written to the activity log (``webhooks.reenabled``), with the note
that the next full sync reconciles what was not delivered (``shared.webhooks.check``). A store
that cannot be reached is logged and tried again at the next interval; one store never stops the
check of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from uuid import UUID

import asyncpg

from shared import db, webhooks
from shared.crypto import SecretBox
from shared.outage import OutageLog
from shared.settings import Settings
from shared.woocommerce.client import WooClient
from shared.woocommerce.credentials import StoreConfig
from shared.woocommerce.errors import StoreError

log = logging.getLogger("woosync.tracker")

# Advisory lock keys of woosync: 7428101 migrations, 7428102 the test template, 7428112 cleanup.
WEBHOOK_LOCK = 7428119
TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
CONNECT_TIMEOUT_S = 10.0

ClientFactory = Callable[[StoreConfig], WooClient]


class WebhookWatcher:
    """Leader election and the webhook check of one tracker process (all its state here)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        name: str,
        client: ClientFactory | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._secrets = SecretBox.from_settings(settings)
        self._client = client or (lambda config: WooClient.from_settings(config, settings))
        self.name = name
        self._conn: asyncpg.Connection | None = None
        self.leading = False
        self._database = OutageLog(log, "the database")

    async def tick(self) -> dict[UUID, webhooks.CheckReport] | None:
        """Take the lock if no one holds it; as the leader, check. None when not leading."""
        if self._conn is None or self._conn.is_closed():
            self.leading = False
            self._conn = await asyncio.wait_for(
                db.connect(
                    self._settings.leader_database_url(),
                    statement_cache_size=self._settings.db_statement_cache_size,
                ),
                CONNECT_TIMEOUT_S,
            )
            await self._conn.execute("SET application_name = 'woosync-tracker-webhooks'")
        if not self.leading:
            self.leading = bool(await self._conn.fetchval(TRY_LOCK, WEBHOOK_LOCK))
            if not self.leading:
                return None
            log.info("%s leads the webhook check", self.name)
        reports: dict[UUID, webhooks.CheckReport] = {}
        for row in await self._pool.fetch(webhooks.WEBHOOK_CONNECTIONS):
            org_id, connection_id = row["org_id"], row["connection_id"]
            try:
                config = await webhooks.store_config(
                    self._pool, self._secrets, org_id, connection_id
                )
                async with self._client(config) as client:
                    reports[connection_id] = await webhooks.check(
                        self._pool,
                        client,
                        self._secrets,
                        org_id=org_id,
                        connection_id=connection_id,
                        public_base=self._settings.webhook_base(),
                        by=self.name,
                    )
            except (StoreError, webhooks.ConnectionNotFound, ValueError) as exc:
                log.warning("webhook check of connection %s failed: %s", connection_id, exc)
        return reports

    async def run(self) -> None:
        """Every ``webhook_check_interval_s`` until cancelled; a failure drops the session (and
        with it the lock, if held) and is retried at the next interval."""
        try:
            while True:
                try:
                    await self.tick()
                    self._database.succeeded()
                except Exception as exc:
                    self._database.failed(exc, "checking webhooks")
                    await self._drop()
                await asyncio.sleep(self._settings.webhook_check_interval_s)
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
