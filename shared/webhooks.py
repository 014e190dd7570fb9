"""A connection's WooCommerce webhooks: registering, removing and watching them (migration 0019).

woosync registers one webhook per topic of ``shared.woocommerce.webhooks.TOPICS`` on the store
through ``/wc/v3/webhooks``, each with a secret and a delivery URL token of its own; the api
receives the deliveries (``services.api.webhooks``). Used by the api's ``webhooks-enable`` /
``webhooks-disable`` actions and by the tracker's webhook check (``services.tracker.webhooks``).

WooCommerce never retries a failed delivery and disables a webhook after repeated failures
(the 7th in a row by default). :func:`check` notices: it lists the store's webhooks, sets
``status: active`` on ours that WooCommerce disabled, re-creates ours that are gone, and records
both in the activity log. Changes that were not delivered meanwhile are lost to the webhooks; the
next full sync reconciles them (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from shared import activity
from shared.crypto import SecretBox
from shared.db import for_org
from shared.paths import webhook_url
from shared.woocommerce.client import WooClient
from shared.woocommerce.credentials import StoreConfig
from shared.woocommerce.webhooks import TOPICS, hash_token, new_secret, new_token

log = logging.getLogger("woosync.webhooks")

SELECT_CONNECTION = """
SELECT id, store_url, auth_mode, verify_tls, consumer_key, consumer_secret_enc
FROM woo_connections
WHERE org_id = $1 AND id = $2
"""

SELECT_WEBHOOKS = """
SELECT id, topic, woo_webhook_id, woo_status, reenabled_count, checked_at,
       created_at < now() - make_interval(secs => $3) AS registration_abandoned
FROM woo_webhook
WHERE org_id = $1 AND connection_id = $2
ORDER BY topic
"""

# Committed before the store is asked: it pings the URL before it answers.
INSERT_WEBHOOK = """
INSERT INTO woo_webhook (id, org_id, connection_id, topic, token_hash, secret_enc)
VALUES ($1, $2, $3, $4, $5, $6)
"""

SET_WEBHOOK_ID = """
UPDATE woo_webhook SET woo_webhook_id = $3, woo_status = $4, checked_at = now(),
    updated_at = now()
WHERE org_id = $1 AND id = $2
"""

DELETE_WEBHOOK = "DELETE FROM woo_webhook WHERE org_id = $1 AND id = $2"

# $4: whether this check switched it back on.
MARK_CHECKED = """
UPDATE woo_webhook SET woo_status = $3, checked_at = now(), updated_at = now(),
    reenabled_count = reenabled_count + CASE WHEN $4 THEN 1 ELSE 0 END
WHERE org_id = $1 AND id = $2
"""

# A row without the store's id is being registered (the store pings before it answers); after
# this long its registration is taken as abandoned (a crash) and the check re-creates it.
REGISTRATION_GRACE_S = 300.0

# The tracker's sweep, across orgs (a security-definer function of migration 0019).
WEBHOOK_CONNECTIONS = "SELECT org_id, connection_id FROM woosync_webhook_connections()"


class ConnectionNotFound(LookupError):
    """The org has no such connection."""


@dataclass(frozen=True)
class WebhookState:
    topic: str
    woo_webhook_id: int | None
    status: str | None
    reenabled_count: int = 0


@dataclass
class CheckReport:
    """What one check of a connection's webhooks found and did."""

    reenabled: list[str] = field(default_factory=list)  # topics switched back on
    recreated: list[str] = field(default_factory=list)  # topics whose webhook was gone
    paused: list[str] = field(default_factory=list)  # left alone: an admin paused them


async def store_config(
    pool: asyncpg.Pool, secrets: SecretBox, org_id: UUID, connection_id: UUID
) -> StoreConfig:
    """The connection's store and key (decrypted); :class:`ConnectionNotFound` if not the org's."""
    row = await for_org(pool, org_id).fetchrow(SELECT_CONNECTION, org_id, connection_id)
    if row is None:
        raise ConnectionNotFound(f"no connection {connection_id}")
    return StoreConfig(
        url=row["store_url"],
        consumer_key=row["consumer_key"],
        consumer_secret=secrets.decrypt(row["consumer_secret_enc"]),
        auth=row["auth_mode"],
        verify_tls=row["verify_tls"],
    )


async def states(pool: asyncpg.Pool, org_id: UUID, connection_id: UUID) -> list[WebhookState]:
    rows = await for_org(pool, org_id).fetch(
        SELECT_WEBHOOKS, org_id, connection_id, REGISTRATION_GRACE_S
    )
    return [
        WebhookState(r["topic"], r["woo_webhook_id"], r["woo_status"], r["reenabled_count"])
        for r in rows
    ]


async def enable(
    pool: asyncpg.Pool,
    client: WooClient,
    secrets: SecretBox,
    *,
    org_id: UUID,
    connection_id: UUID,
    public_base: str,
    actor: Mapping[str, str],
) -> list[WebhookState]:
    """Make sure the store has our three webhooks, active; idempotent. Creates what is missing
    (in our table or in the store), re-activates what is not active."""
    existing = {r["topic"]: r for r in await _rows(pool, org_id, connection_id)}
    on_store = {h.get("id"): h for h in await client.list_webhooks()}
    created: list[str] = []
    for topic in TOPICS:
        row = existing.get(topic)
        hook = on_store.get(row["woo_webhook_id"]) if row is not None else None
        if row is not None and hook is not None:
            if hook.get("status") != "active":
                await client.update_webhook(int(row["woo_webhook_id"]), {"status": "active"})
            await for_org(pool, org_id).execute(MARK_CHECKED, org_id, row["id"], "active", False)
            continue
        if row is not None:
            await for_org(pool, org_id).execute(DELETE_WEBHOOK, org_id, row["id"])
        await _create(pool, client, secrets, org_id, connection_id, topic, public_base)
        created.append(topic)
    result = await states(pool, org_id, connection_id)
    await activity.record(
        for_org(pool, org_id),
        org_id=org_id,
        job_id=None,
        event="webhooks.enabled",
        details={
            "connection_id": str(connection_id),
            "created": created,
            "webhooks": {s.topic: s.woo_webhook_id for s in result},
            **actor,
        },
    )
    log.info("webhooks of connection %s enabled (%d created)", connection_id, len(created))
    return result


async def disable(
    pool: asyncpg.Pool,
    client: WooClient,
    *,
    org_id: UUID,
    connection_id: UUID,
    actor: Mapping[str, str],
) -> list[int]:
    """Delete our webhooks from the store and forget them; the store ids that were removed."""
    removed: list[int] = []
    for row in await _rows(pool, org_id, connection_id):
        if row["woo_webhook_id"] is not None and await client.delete_webhook(
            int(row["woo_webhook_id"])
        ):
            removed.append(int(row["woo_webhook_id"]))
        await for_org(pool, org_id).execute(DELETE_WEBHOOK, org_id, row["id"])
    await activity.record(
        for_org(pool, org_id),
        org_id=org_id,
        job_id=None,
        event="webhooks.disabled",
        details={"connection_id": str(connection_id), "removed": removed, **actor},
    )
    log.info("webhooks of connection %s disabled (%d removed)", connection_id, len(removed))
    return removed


async def check(
    pool: asyncpg.Pool,
    client: WooClient,
    secrets: SecretBox,
    *,
    org_id: UUID,
    connection_id: UUID,
    public_base: str,
    by: str,
) -> CheckReport:
    """Switch back on what WooCommerce disabled and re-create what is gone; record both."""
    report = CheckReport()
    on_store = {h.get("id"): h for h in await client.list_webhooks()}
    for row in await _rows(pool, org_id, connection_id):
        if row["woo_webhook_id"] is None and not row["registration_abandoned"]:
            continue  # webhooks-enable is registering it right now
        hook = on_store.get(row["woo_webhook_id"]) if row["woo_webhook_id"] else None
        if hook is None:
            await for_org(pool, org_id).execute(DELETE_WEBHOOK, org_id, row["id"])
            await _create(pool, client, secrets, org_id, connection_id, row["topic"], public_base)
            report.recreated.append(row["topic"])
            continue
        status = str(hook.get("status"))
        reenable = status == "disabled"
        if reenable:
            answer = await client.update_webhook(int(row["woo_webhook_id"]), {"status": "active"})
            status = str(answer.get("status", "active"))
            report.reenabled.append(row["topic"])
        elif status == "paused":
            report.paused.append(row["topic"])
        await for_org(pool, org_id).execute(MARK_CHECKED, org_id, row["id"], status, reenable)
    if report.reenabled or report.recreated:
        await activity.record(
            for_org(pool, org_id),
            org_id=org_id,
            job_id=None,
            event="webhooks.reenabled",
            level="warning",
            details={
                "connection_id": str(connection_id),
                "reenabled": report.reenabled,
                "recreated": report.recreated,
                # WooCommerce does not re-send what failed: a full sync brings those changes.
                "reconcile": "changes made while deliveries failed arrive with the next full sync",
                "by": by,
            },
        )
        log.warning(
            "webhooks of connection %s: re-enabled %s, re-created %s; the next full sync "
            "reconciles what they missed",
            connection_id,
            report.reenabled,
            report.recreated,
        )
    return report


async def _rows(pool: asyncpg.Pool, org_id: UUID, connection_id: UUID) -> list[Any]:
    scope = for_org(pool, org_id)
    return list(await scope.fetch(SELECT_WEBHOOKS, org_id, connection_id, REGISTRATION_GRACE_S))


async def _create(
    pool: asyncpg.Pool,
    client: WooClient,
    secrets: SecretBox,
    org_id: UUID,
    connection_id: UUID,
    topic: str,
    public_base: str,
) -> None:
    """One webhook: our row first (the store pings before it answers), then the store's."""
    row_id, token, secret = uuid4(), new_token(), new_secret()
    scope = for_org(pool, org_id)
    await scope.execute(
        INSERT_WEBHOOK,
        row_id,
        org_id,
        connection_id,
        topic,
        hash_token(token),
        secrets.encrypt(secret),
    )
    try:
        hook = await client.create_webhook(
            name=f"woosync {topic}",
            topic=topic,
            delivery_url=webhook_url(public_base, token),
            secret=secret,
        )
    except BaseException:
        await scope.execute(DELETE_WEBHOOK, org_id, row_id)
        raise
    await scope.execute(
        SET_WEBHOOK_ID, org_id, row_id, int(hook["id"]), str(hook.get("status", "active"))
    )
