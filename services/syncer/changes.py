"""Applying a webhook's change (``customer.changed``): one customer, no job, no lines.

The same mapping and the same set-based upsert as a sync's batches (``handlers.upsert_isolating``,
which refuses a payload older than the stored version by ``date_modified_gmt``), so a webhook and
a sync store a customer identically. Deliveries come at least once and out of order; applying one
is idempotent and never lets an older version overwrite a newer one:

* created / updated: upserted unless the stored version is newer (``stale``) or the content is
  the same (``unchanged``); a row marked deleted stays deleted unless the payload is newer than
  the deletion (then it is live again).
* deleted: the row is marked deleted (``customer.deleted_at`` = when the delivery was received)
  unless its stored version is newer than that, or it is already deleted. A delete for a customer
  never stored changes nothing (a late created/updated may then store it; the scheduled full sync
  is what reconciles, see docs/operations.md).

A change the mapping refuses is logged and dropped (the full sync reports it on its line); a row
lock held too long or a lost database raises, so the edge requeues the delivery.
"""

from __future__ import annotations

import logging
from typing import Literal

import asyncpg

from services.syncer import queries as q
from services.syncer.handlers import LOCK_TIMEOUT_MS, upsert_isolating
from shared.db import for_org
from shared.mapping import MappingError, map_customer
from shared.messages import CustomerChanged

log = logging.getLogger("woosync.syncer")

Applied = Literal["stored", "stale", "deleted", "refused", "no_connection"]


class ChangeNotApplied(RuntimeError):
    """A change that could pass later (a row lock held too long): the delivery is requeued."""


async def handle_customer_changed(
    change: CustomerChanged, *, pool: asyncpg.Pool, lock_timeout_ms: int = LOCK_TIMEOUT_MS
) -> Applied:
    """Apply one change in one transaction; what happened, for the log and the tests."""
    org_id, connection_id, woo_id = change.org_id, change.connection_id, change.woo_id
    async with for_org(pool, org_id).transaction() as conn:
        if await conn.fetchval(q.SELECT_CONNECTION, connection_id, org_id) is None:
            log.warning("change for connection %s, which the org does not have", connection_id)
            return "no_connection"
        # woosync's own write: not a MantisNXT edit to migration 0017's trigger. (A webhook's
        # change is applied as woo_wins: the conflict policies decide full syncs only.)
        await conn.execute(q.WRITER_SETTINGS.format(lock_timeout_ms=int(lock_timeout_ms)))
        try:
            stored = await conn.fetchrow(q.LOCK_CUSTOMER, org_id, connection_id, woo_id)
        except asyncpg.LockNotAvailableError:
            raise ChangeNotApplied(f"customer {woo_id} is locked; retrying") from None
        if change.event == "deleted":
            done = await conn.fetchval(
                q.SOFT_DELETE_CUSTOMER, org_id, connection_id, woo_id, change.occurred_at
            )
            outcome: Applied = "deleted" if done is not None else "stale"
        else:
            outcome = await _upsert(conn, change, stored)
    log.info("webhook %s of customer %s: %s", change.event, woo_id, outcome)
    return outcome


async def _upsert(
    conn: asyncpg.Connection, change: CustomerChanged, stored: asyncpg.Record | None
) -> Applied:
    try:
        row = map_customer(
            change.customer or {}, org_id=change.org_id, connection_id=change.connection_id
        )
    except MappingError as exc:
        log.warning("webhook customer %s refused by the mapping: %s", change.woo_id, exc.message)
        return "refused"
    deleted_at = stored["deleted_at"] if stored is not None else None
    if deleted_at is not None and (
        row.woo_date_modified is None or row.woo_date_modified <= deleted_at
    ):
        return "stale"  # deleted after this version was made
    synced, refused, stale = await upsert_isolating(conn, [row])
    if refused:
        _, error, retryable = refused[0]
        if retryable:
            raise ChangeNotApplied(error)
        log.warning("webhook customer %s refused by the database: %s", row.woo_id, error)
        return "refused"
    if stale:
        return "stale"
    if deleted_at is not None and synced:
        await conn.execute(q.UNDELETE_CUSTOMER, row.org_id, row.connection_id, row.woo_id)
    return "stored"
